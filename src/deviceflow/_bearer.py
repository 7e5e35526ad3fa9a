"""The rules every HTTP-client integration follows when it adds a token to a request.

- Where the token goes (:class:`TokenScope`): by default to one origin only (scheme, host and
  port), that of the first request it is added to; with ``hosts``, to https requests for those
  host names; never over plain http, loopback addresses excepted (tests).
- When a rejection is worth one refresh (:func:`says_invalid_token`): a 401 whose
  ``WWW-Authenticate`` challenge says ``error="invalid_token"`` (RFC 6750 3.1). Any other 401
  (a missing permission, a wrong audience) is passed on: a new token would not help.

``deviceflow.aiohttp`` and ``deviceflow.httpx`` hold only their library's plumbing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from ._urls import is_loopback_host

__all__ = ["TokenScope", "says_invalid_token"]

# RFC 6750 3: WWW-Authenticate: Bearer realm="...", error="invalid_token", ...
# RFC 9449 7.1: a DPoP-bound token is challenged with the DPoP scheme, same error codes.
_SCHEME = re.compile(r"^\s*(bearer|dpop)\b", re.IGNORECASE)
_INVALID_TOKEN = re.compile(r"""\berror\s*=\s*"?invalid_token"?""", re.IGNORECASE)


def says_invalid_token(status: int, challenges: Iterable[str]) -> bool:
    """True when a response means "this token no longer works": a refresh may help."""
    return status == 401 and any(_SCHEME.match(c) and _INVALID_TOKEN.search(c) for c in challenges)


class TokenScope:
    """Decides which requests carry the token (see the module docstring)."""

    def __init__(self, hosts: Collection[str] | None = None) -> None:
        if isinstance(hosts, str):
            raise TypeError("hosts must be a collection of host names, not one string")
        self.hosts = frozenset(h.lower() for h in hosts) if hosts is not None else None
        self._origin: tuple[str, str, int | None] | None = None  # bound on first use

    def carries_token(self, scheme: str, host: str | None, port: int | None) -> bool:
        """True when a request to this origin may carry the token (binds the first origin)."""
        host = (host or "").lower()
        scheme = scheme.lower()
        if scheme != "https" and not is_loopback_host(host):
            return False  # never in cleartext
        if self.hosts is not None:
            return host in self.hosts
        origin = (scheme, host, port)
        if self._origin is None:
            self._origin = origin  # the first request binds the token to its origin
        return origin == self._origin
