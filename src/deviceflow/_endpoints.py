"""The provider's endpoints as one client uses them: metadata, client registration, the refresh
grant and revocation, all sent through one transport with one retry rule.

A request that fails in a way a retry may cure (a dropped connection, a timeout, a 5xx or 429)
is sent again after 0.25 s, 0.5 s, ... (at most 5 s apart) until its time budget is spent; the
budget covers every attempt and every wait, so the caller knows when it ends.

Refreshes pass one gate per token endpoint, shared by every account of the client: at most
``limit`` of them are in flight at once (below the transport's connection limit, so that a
request's timeout measures the server rather than a queue for connections), and a 429 or 503
with Retry-After closes the gate for that long, for every account: a refresh that meets a closed
gate raises GateClosed, and the refresh transaction waits at the gate, outside the store's lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from ._clock import Clock
from ._dpop import DPoP, DPoPKey
from ._models import ProviderMetadata, RegisteredClient, Request, RequestKind, Response, Token
from ._parse import interpret_registration_response, interpret_token_response, retry_after
from ._provider import Provider, fetch_metadata
from ._telemetry import ClientTelemetry
from ._transport import Transport
from .exceptions import DeviceFlowError, ProtocolError, TransportError
from .stores._protocol import TokenStore

__all__ = ["Endpoints", "Gate", "GateClosed"]

log = logging.getLogger("deviceflow")

_T = TypeVar("_T")

#: Register the client again this long before its registration expires, so that no device flow
#: (device codes live some minutes) outlives the registration it started with. Refresh tokens are
#: bound to the registration: after a new one, the next get_token() starts a device flow.
REGISTRATION_SKEW = 900.0


#: At most this many refreshes in flight per client (the transport keeps 100 connections).
REFRESH_LIMIT = 64
#: Retry-After values above this are taken as this (a misbehaving server cannot park us for days).
MAX_RETRY_AFTER = 300.0


class GateClosed(TransportError):
    """The token endpoint asked to wait (429 or 503 with Retry-After): try again once the gate
    opens; the refresh token was not used."""


class Gate:
    """The token endpoint's gate: a cap on refreshes in flight, and a closing time."""

    def __init__(
        self, clock: Clock, limit: int = REFRESH_LIMIT, *, telemetry: ClientTelemetry | None = None
    ) -> None:
        self._clock = clock
        self._telemetry = telemetry
        self._slots = asyncio.Semaphore(limit)
        self._opens_at = -math.inf  # the client clock's monotonic time

    def close_for(self, seconds: float) -> None:
        """Keep the gate closed for ``seconds`` from now (never shortens a closure)."""
        opens_at = self._clock.monotonic() + min(seconds, MAX_RETRY_AFTER)
        if opens_at > self._opens_at:
            was_open = self._opens_at <= self._clock.monotonic()
            if was_open and self._telemetry is not None:
                self._telemetry.gate_closed()
            self._opens_at = opens_at

    def closed_for(self) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self._opens_at - self._clock.monotonic())

    async def wait_open(self) -> None:
        """Return once the gate is open."""
        while (wait := self.closed_for()) > 0:
            await self._clock.sleep(wait)

    def slot(self) -> asyncio.Semaphore:
        """The gate's places for refreshes: ``acquire()`` one (it waits while all are taken)
        and ``release()`` it. The semaphore itself: a storm parks thousands of refreshes here,
        and a context object of their own for each would only add to what the GC walks."""
        return self._slots


@attrs.define(kw_only=True)
class Endpoints:
    """Requests to ``provider`` on behalf of one client."""

    provider: Provider
    client_id: str
    scope: str | None
    transport: Transport
    clock: Clock
    store: TokenStore
    registration_key: str
    http_timeout: float
    lock_ttl: float
    lock_wait: float
    metadata: ProviderMetadata | None = None
    dpop: DPoP | None = None  # DPoP proofs and the nonces servers gave (RFC 9449)
    dpop_grants: bool = False  # new grants are DPoP grants: DeviceFlowClient(dpop=True)
    gate: Gate = attrs.field(init=False)
    telemetry: ClientTelemetry = attrs.field(init=False)  # spans and metrics (the otel extra)
    _metadata_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _registered: RegisteredClient | None = attrs.field(default=None, init=False)
    _registration_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        self.telemetry = ClientTelemetry(self.provider, self.client_id)
        self.gate = Gate(self.clock, telemetry=self.telemetry)

    @property
    def settled(self) -> bool:
        """Whether :meth:`settle` has nothing left to do for sure (endpoints known, and no
        client registration to check)."""
        return self.metadata is not None and self.provider.registration is None

    async def settle(self) -> None:
        """Discover the endpoints and register the client now, if still needed (before a store
        lock is taken, so that the lock only has to cover the refresh itself)."""
        await self.ensure_metadata()
        if self.provider.registration is not None:
            await self.registered_client()

    async def ensure_metadata(self) -> ProviderMetadata:
        """The provider's metadata, discovered once."""
        if self.metadata is None:
            async with self._metadata_lock:
                if self.metadata is None:
                    self.metadata = await fetch_metadata(
                        self.transport, self.provider, clock=self.clock
                    )
        return self.metadata

    async def send(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        dpop_key: DPoPKey | None = None,
    ) -> Response:
        """Send through the transport, as the registered client when the provider needs one;
        with a DPoP proof made with ``dpop_key`` when given (a token request, RFC 9449 5)."""
        if self.provider.registration is not None and request.kind not in (
            RequestKind.DISCOVERY,
            RequestKind.REGISTRATION,
        ):
            client = await self.registered_client()
            params = {**request.params, "client_id": client.client_id}
            if client.client_secret is not None:
                params["client_secret"] = client.client_secret  # RFC 6749 2.3.1, in the body
            request = attrs.evolve(request, params=params)
        if dpop_key is not None:
            if self.dpop is None:
                self.dpop = DPoP(self.clock.wall)
            response = await self.dpop.exchange(
                request, dpop_key, lambda signed: self._transport_send(signed, timeout)
            )
        elif timeout is None:
            response = await self.transport.send(request)
        else:
            response = await self.transport.send(request, timeout=timeout)
        if response.status == 429 or response.status >= 500:
            self.telemetry.server_busy(request.kind.value, response.status)
        return response

    async def _transport_send(self, request: Request, timeout: float | None) -> Response:
        if timeout is None:
            return await self.transport.send(request)
        return await self.transport.send(request, timeout=timeout)

    async def _retrying(
        self,
        request: Request,
        interpret: Callable[..., _T],
        *args: Any,
        budget: float,
        until: float | None = None,
        dpop_key: DPoPKey | None = None,
    ) -> _T:
        """Send ``request`` until ``interpret(response, *args)`` accepts an answer or ``budget``
        seconds (on the client's clock) are spent; ``until`` (time.monotonic()) bounds it in
        real time too."""
        clock = self.clock
        deadline = clock.monotonic() + budget
        delay = 0.25
        while True:
            remaining = deadline - clock.monotonic()
            if until is not None:
                remaining = min(remaining, until - time.monotonic())
            try:
                response = await self.send(request, timeout=remaining, dpop_key=dpop_key)
                return interpret(response, *args)
            except GateClosed:
                raise
            except TransportError as exc:
                late = clock.monotonic() + delay >= deadline or (
                    until is not None and time.monotonic() + delay >= until
                )
                if late or not exc.retryable:
                    raise
                log.debug("%s failed (%s); retrying in %.2fs", request.kind.value, exc, delay)
                await clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def refresh(
        self, token: Token, *, until: float | None = None, account: str = "default"
    ) -> Token:
        """RFC 6749 6: trade ``token``'s refresh token for a new access token of ``account``.

        Every attempt ends within ``http_timeout`` and, when given, before ``until`` (real
        monotonic seconds: the end of the store lease the refresh runs under). A DPoP token's
        refresh carries a proof of its key. The answer is returned as the server gave it, of
        whatever type: the caller checks it with :func:`check_token_type`.
        """
        assert token.refresh_token is not None
        metadata = self.metadata if self.metadata is not None else await self.ensure_metadata()
        request = Request(
            kind=RequestKind.TOKEN,
            method="POST",
            url=metadata.token_endpoint,
            params={
                "grant_type": "refresh_token",
                "refresh_token": token.refresh_token,
                "client_id": self.client_id,
            },
        )
        if self.gate.closed_for() > 0:
            raise GateClosed("the token endpoint asked to wait; not sent")
        return await self._retrying(
            request,
            self._refreshed,
            token,
            account,
            budget=self.http_timeout,
            until=until,
            dpop_key=token.dpop_key,
        )

    def _refreshed(self, response: Response, token: Token, account: str) -> Token:
        """The answer to a refresh of ``token``: the new token as the server gave it."""
        wall = self.clock.wall()
        try:
            new = interpret_token_response(response, self.provider.dialect, wall, previous=token)
        except ProtocolError as exc:
            raise ProtocolError(f"account {account!r}: {exc}") from None
        except TransportError as exc:
            wait = retry_after(response, wall) if response.status in (429, 503) else None
            if wait is None or wait <= 0:
                raise
            self.gate.close_for(wait)
            raise GateClosed(f"{exc}; asked to wait {wait:.0f} s") from None
        # Not check_token_type: a token of the wrong type still carries the rotated refresh
        # token, which the refresh transaction must keep (_refresh.py).
        return new

    async def revoke(self, token: Token) -> bool:
        """RFC 7009: revoke ``token``'s grant (its refresh token, else its access token); True
        when the server confirmed it. Failures are logged, never raised."""
        try:
            metadata = await self.ensure_metadata()
        except DeviceFlowError as exc:
            log.warning("cannot revoke: the provider's endpoints are unknown (%s)", exc)
            return False
        if metadata.revocation_endpoint is None:
            return False
        if token.refresh_token:
            params = {"token": token.refresh_token, "token_type_hint": "refresh_token"}
        else:
            params = {"token": token.access_token, "token_type_hint": "access_token"}
        params["client_id"] = self.client_id
        request = Request(
            kind=RequestKind.REVOCATION,
            method="POST",
            url=metadata.revocation_endpoint,
            params=params,
        )
        try:
            response = await self.send(request)
        except DeviceFlowError as exc:
            log.warning("token revocation failed: %s", exc)
            return False
        if response.status != 200:
            log.warning("token revocation answered HTTP %d", response.status)
        return response.status == 200

    async def registered_client(self) -> RegisteredClient:
        """This client's registration with the provider (AWS RegisterClient).

        Registered once and kept in the store, under the store's lock, so that every process
        sharing the store uses one registration (refresh tokens are bound to it); registered
        again when it is about to expire.
        """
        client = self._registered
        if client is not None and not client.expires_within(
            REGISTRATION_SKEW, now=self.clock.wall()
        ):
            return client
        async with self._registration_lock:
            client = self._registered
            if client is not None and not client.expires_within(
                REGISTRATION_SKEW, now=self.clock.wall()
            ):
                return client
            key = self.registration_key
            async with self.store.lock(key, ttl=self.lock_ttl, wait=self.lock_wait):
                current = await self.store.get(key)
                client = None
                if current is not None:
                    try:
                        client = RegisteredClient.from_json(current.value)
                    except ProtocolError:
                        log.warning("the stored client registration is unreadable; registering")
                if client is None or client.expires_within(
                    REGISTRATION_SKEW, now=self.clock.wall()
                ):
                    client = await self._register()
                    ttl = None
                    if client.expires_at is not None:
                        ttl = (client.expires_at - self.clock.wall()).total_seconds()
                    await self.store.put(
                        key,
                        client.to_json(),
                        expected_version=current.version if current else None,
                        ttl=max(1.0, ttl) if ttl is not None else None,
                    )
            self._registered = client
            return client

    async def _register(self) -> RegisteredClient:
        spec = self.provider.registration
        assert spec is not None
        params = {**spec.params, spec.name_param: self.client_id}
        if spec.scope_param and self.scope:
            params[spec.scope_param] = self.scope
        request = Request(
            kind=RequestKind.REGISTRATION, method="POST", url=spec.endpoint, params=params
        )
        log.info("registering client %r with the %s provider", self.client_id, self.provider.name)
        dialect = self.provider.dialect

        def interpret(response: Response) -> RegisteredClient:
            return interpret_registration_response(response, dialect, self.clock.wall())

        return await self._retrying(request, interpret, budget=self.http_timeout)
