"""Fault injection: answers the server gives instead of (or before) the real one."""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from typing import Literal, get_args

import attrs

__all__ = ["ENDPOINTS", "Endpoint", "Fault", "FaultList"]

#: Names of the server's endpoints, as used by :class:`Fault` and ``RecordedRequest.endpoint``.
Endpoint = Literal[
    "discovery",
    "registration",
    "device",
    "token",
    "revoke",
    "resource",
    "verification",
    "jwks",
    "unknown",
]
ENDPOINTS: frozenset[str] = frozenset(get_args(Endpoint))


def _check_endpoint(instance: object, attribute: object, value: str) -> None:
    if value != "*" and value not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {value!r}; use one of {sorted(ENDPOINTS)} or '*'")


def _check_times(instance: object, attribute: object, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError("times must be at least 1 (or None for every matching request)")


def _check_status(instance: object, attribute: object, value: int | None) -> None:
    if value is not None and not 100 <= value <= 599:
        raise ValueError(f"status must be an HTTP status code (100-599), not {value}")


def _frozen_headers(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class Fault:
    """A misbehaviour of the server for the next ``times`` requests to ``endpoint``.

    The server first waits ``delay`` seconds (real time, as aiohttp's client timeouts are real
    time), then either closes the connection without an answer (``drop=True``) or answers
    ``status`` with ``body`` (default: a short ``text/plain`` note), ``content_type``, a
    ``Retry-After`` header (``retry_after``: seconds or an HTTP date) and any other ``headers``.
    With ``status=None`` and no ``drop`` the request is then handled normally, so
    ``Fault(endpoint="token", status=None, delay=2.0)`` is a slow server.

    ``endpoint`` is one of ``"discovery"``, ``"registration"``, ``"device"``, ``"token"``,
    ``"revoke"``, ``"resource"``, ``"verification"``, ``"jwks"``, ``"unknown"`` (any other
    path) or ``"*"`` (all).
    ``times=None`` keeps the fault until it is removed with ``server.faults.clear()``.

    Examples::

        server.faults.add(Fault(endpoint="token", status=503, retry_after=7))
        server.faults.add(Fault(endpoint="token", drop=True, times=2))
        server.faults.add(Fault(endpoint="token", status=200, content_type="application/json",
                                body='{"error": "authorization_pending"}'))   # 200 with an error
        server.faults.add(Fault(endpoint="discovery", status=200, content_type="text/html",
                                body="<html>captive portal</html>"))          # not JSON at all
    """

    endpoint: str = attrs.field(default="*", validator=_check_endpoint)
    status: int | None = attrs.field(default=503, validator=_check_status)
    retry_after: int | str | None = None
    body: str | bytes | None = None
    content_type: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_headers)
    delay: float = 0.0
    drop: bool = False
    times: int | None = attrs.field(default=1, validator=_check_times)

    def matches(self, endpoint: str) -> bool:
        """True when this fault applies to a request to ``endpoint``."""
        return self.endpoint in ("*", endpoint)


@attrs.define
class _Armed:
    fault: Fault
    remaining: int | None


@attrs.define
class FaultList:
    """The faults armed on a server (``server.faults``), applied in the order they were added.

    Each matching request uses up one of a fault's ``times``; a used-up fault is removed.
    """

    _armed: list[_Armed] = attrs.Factory(list)

    def add(self, fault: Fault) -> None:
        """Arm ``fault`` for the next matching requests."""
        self._armed.append(_Armed(fault, fault.times))

    def clear(self) -> None:
        """Disarm every fault."""
        self._armed.clear()

    def take(self, endpoint: str) -> Fault | None:
        """The first armed fault matching ``endpoint``, using up one of its times (or None)."""
        for index, armed in enumerate(self._armed):
            if armed.fault.matches(endpoint):
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        del self._armed[index]
                return armed.fault
        return None

    def __len__(self) -> int:
        return len(self._armed)

    def __iter__(self) -> Iterator[Fault]:
        return iter([armed.fault for armed in self._armed])
