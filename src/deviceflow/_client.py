"""DeviceFlowClient: drives the machine, keeps tokens fresh, and shares work between callers.

get_token() in three tiers:

1. Hot path: a token cached in memory that is not yet due for refresh is returned at once, with
   no I/O and no lock. Inside the refresh-ahead window it is still returned at once, and one
   background refresh starts.
2. Flight: otherwise one task per account (single-flight) does the work and every caller of that
   account awaits it. A caller that is cancelled or times out leaves the flight running for the
   others.
3. In the flight: read the store; if another process already stored a fresh token, use it.
   Otherwise take the store's lock, read again, refresh (HTTP timeout below the lock's ttl),
   write with the version read (compare-and-set), then return. The lock saves IdP calls; the
   version check catches a writer that did not hold the lock. Endpoints (discovery, client
   registration) are settled before the lock is taken, so the lock only covers the refresh.
   A refresh whose request has left always reaches memory, and the store as soon as it can:
   even if the caller is cancelled, and even if the first write fails.
4. No usable token at all: a device flow, one per account across the processes sharing the store
   (see _claim.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import re
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import anyio
import attrs

from ._claim import Claim, FlowClaim
from ._clock import Clock, SystemClock
from ._machine import (
    MAX_TOKEN_LIFETIME,
    DeviceFlowMachine,
    Done,
    Fail,
    Request,
    RequestKind,
    Response,
    Send,
    interpret_registration_response,
    interpret_token_response,
    parse_seconds,
)
from ._models import (
    AuthMethod,
    DeviceCode,
    FlowEvent,
    FlowState,
    ProviderMetadata,
    RegisteredClient,
    Token,
    json_str,
)
from ._provider import Provider, fetch_metadata
from ._transport import AiohttpTransport, ClientAuth, Transport
from .exceptions import (
    ConflictError,
    DecryptionError,
    DeviceFlowError,
    InvalidGrantError,
    ProtocolError,
    ReauthorizationRequiredError,
    StoreError,
    TransportError,
)
from .stores._protocol import TokenStore, Versioned

__all__ = ["DeviceFlowClient", "OnCode"]

log = logging.getLogger("deviceflow")

_T = TypeVar("_T")
_Record = tuple[Token, datetime | None]  # a decoded store record: token, when obtained

OnCode = Callable[[DeviceCode, str], Awaitable[None] | None]

_RECORD_VERSION = 1
#: Register the client again this long before its registration expires, so that no device flow
#: (device codes live some minutes) outlives the registration it started with. Refresh tokens are
#: bound to the registration: after a new one, the next get_token() starts a device flow.
_REGISTRATION_SKEW = 900.0
#: How often a process waiting on another process's device flow looks for its token.
_CLAIM_POLL = 2.0


@attrs.define(kw_only=True)
class _Flight:
    """One account's work in progress, and the futures of the callers waiting for it."""

    background: bool  # started by refresh-ahead: a failure reschedules, callers keep the token
    task: asyncio.Task[None] | None = None
    waiters: set[asyncio.Future[Token]] = attrs.Factory(set)
    settled: bool = False


@attrs.define(kw_only=True)
class _Cached:
    """A token in memory with its deadlines on the monotonic clock."""

    token: Token
    refresh_at: float  # from here on, refresh ahead in the background
    usable_until: float  # from here on, callers wait for a new token
    obtained: datetime | None = None
    # The store record this token was read from or written as (see _stamp): when the store
    # still holds that record, a flight need not decode it again.
    stamp: int | None = None


class DeviceFlowClient:
    """Obtain and keep OAuth 2.0 tokens through the device authorization grant (RFC 8628).

    ::

        async with DeviceFlowClient(
            provider,
            client_id="dvls",
            scope="openid offline_access",
            on_code=show_code,
        ) as client:
            token = await client.get_token("tenant-42")

    ``on_code(code, account)`` (sync or async) is called when a person must approve a new device
    code; without it, get_token() raises ReauthorizationRequiredError instead of waiting.
    ``store`` defaults to a MemoryStore (one process). ``refresh_skew`` seconds before expiry
    (at most half the token's lifetime) a token is refreshed in the background while callers keep
    using it. ``clock`` is the time seam (tests pass ``deviceflow.testing.VirtualClock``).
    """

    def __init__(
        self,
        provider: Provider,
        *,
        client_id: str,
        client_secret: str | None = None,
        client_auth: AuthMethod | None = None,
        scope: str | None = None,
        store: TokenStore | None = None,
        on_code: OnCode | None = None,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        refresh_skew: float = 60.0,
        http_timeout: float = 20.0,
        lock_ttl: float = 30.0,
        lock_wait: float = 60.0,
        poll_margin: float = 0.1,
    ) -> None:
        if not client_id:
            raise ValueError("client_id is required")
        if provider.requires_client_secret and client_secret is None:
            raise ValueError(f"the {provider.name} provider needs a client_secret")
        if provider.registration is not None and (
            client_secret is not None or client_auth not in (None, "none")
        ):
            raise ValueError(
                f"the {provider.name} provider registers its own client and authenticates with "
                "the credentials it gets; do not pass client_secret or client_auth"
            )
        if refresh_skew < 0:
            raise ValueError("refresh_skew must be zero or more seconds")
        if http_timeout >= lock_ttl:
            raise ValueError("http_timeout must be shorter than lock_ttl (see get_token docs)")
        if store is None:
            from .stores._memory import MemoryStore

            store = MemoryStore()
        self.provider = provider
        # Store keys are namespaced by issuer, client id and account (all quoted).
        self._key_prefix = "/".join(
            urllib.parse.quote(part, safe="") for part in (provider.identity, client_id)
        )
        self._unsaved: dict[str, tuple[int, Token]] = {}  # refreshed, not yet stored
        self._record_head = (
            f'{{"v":{_RECORD_VERSION},"issuer":{json_str(provider.identity)},'
            f'"client_id":{json_str(client_id)},'
        )
        self.client_id = client_id
        self.scope = scope if scope is not None else provider.default_scope
        self.store = store
        self.on_code = on_code
        self._clock = clock or SystemClock()
        self._transport: Transport = transport or AiohttpTransport(
            auth=ClientAuth.choose(
                client_id,
                client_secret,
                client_auth or (provider.client_auth if client_secret is not None else None),
            ),
            dialect=provider.dialect,
            session=session,
            timeout=http_timeout,
        )
        self._metadata = provider.metadata
        self._metadata_lock = asyncio.Lock()
        self._registered: RegisteredClient | None = None
        self._registration_lock = asyncio.Lock()
        self._refresh_skew = refresh_skew
        self._http_timeout = http_timeout
        self._lock_ttl = lock_ttl
        self._lock_wait = lock_wait
        self._poll_margin = poll_margin
        self._cache: dict[str, _Cached] = {}
        self._flights: dict[str, _Flight] = {}
        self._finishing: set[str] = set()  # accounts whose flight has a refresh on the wire
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> DeviceFlowClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel background work and close what the client owns (not a session passed in).

        A refresh whose request has already left is not cut off: aclose() waits for it to be
        answered (its HTTP exchange ends within ``http_timeout``) and stored, so that a rotated
        refresh token is not lost, even if aclose() itself is cancelled meanwhile.
        """
        self._closed = True
        # To its end even if aclose() itself is cancelled (an anyio timeout around
        # `async with client`): a refresh on the wire must still store its answer.
        await _complete_despite_cancellation(self._shut_down())

    async def _shut_down(self) -> None:
        flights = list(self._flights.items())
        for account, flight in flights:
            if flight.task is not None and account not in self._finishing:
                flight.task.cancel()  # a refresh on the wire finishes instead
        await asyncio.gather(*(f.task for _, f in flights if f.task), return_exceptions=True)
        for account, flight in flights:
            # A flight cancelled before its first step never ran a line of _fly to settle.
            self._settle(account, flight, _closed_error())
        await self._transport.aclose()

    # --- public API ---------------------------------------------------------------------------

    async def get_token(
        self,
        account: str = "default",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Token:
        """A valid access token for ``account``: cached, refreshed, or from a new device flow.

        Concurrent callers for one account share one refresh, within this process and, through
        the store's lock, across processes; they share one device flow too, across processes
        through a claim in the store (one code shown, not one per replica). Raises
        ReauthorizationRequiredError when a person must approve a new code and no ``on_code``
        is set; TimeoutError after ``timeout`` seconds (the shared work goes on for others).
        """
        cached = self._cache.get(account)
        if cached is not None:
            now = self._clock.monotonic()
            if now < cached.refresh_at:
                return cached.token
            if now < cached.usable_until:
                self._refresh_ahead(account)
                return cached.token
        if timeout is None:
            return await self._join(account, None)
        with anyio.fail_after(timeout):
            return await self._join(account, None)

    async def refresh(self, account: str = "default", *, stale: Token | None = None) -> Token:
        """Force a refresh of ``account``'s token and return the new one.

        With ``stale`` (the token a resource server just rejected), nothing is refreshed when
        another caller has already replaced that token: the newer one is returned.
        """
        stale_access = stale.access_token if stale is not None else _ANY
        return await self._join(account, stale_access)

    async def save_token(self, account: str, token: Token) -> None:
        """Store a token obtained elsewhere (a migration, a test) as ``account``'s token."""
        key = self._key(account)
        async with self.store.lock(key, ttl=self._lock_ttl, wait=self._lock_wait):
            current = await self.store.get(key)
            expected = current.version if current else None
            written = await self._write(key, account, token, expected)
        self._unsaved.pop(account, None)
        self._remember(account, token, self._clock.wall(), _stamp(written))

    async def logout(self, account: str = "default", *, force: bool = False) -> bool:
        """Revoke ``account``'s grant where the provider allows it (RFC 7009) and delete it.

        Returns True when the server confirmed the revocation. The local copy is deleted even
        when revocation fails (the failure is logged). A record that cannot be decrypted raises
        DecryptionError and stays, unless ``force`` is true: then it is deleted unrevoked.
        """
        key = self._key(account)
        self._cache.pop(account, None)
        self._unsaved.pop(account, None)
        try:
            exists = await self.store.get(key) is not None
        except DecryptionError:
            exists = False  # handled under the lock
        if exists:
            with contextlib.suppress(DeviceFlowError):  # endpoints settled before the lock
                await self._ensure_metadata()
        async with self.store.lock(key, ttl=self._lock_ttl, wait=self._lock_wait):
            try:
                current = await self.store.get(key)
            except DecryptionError:
                if not force:
                    raise
                log.warning("deleting account %r's undecryptable record unrevoked", account)
                await self.store.delete(key)
                return False
            if current is None:
                return False
            try:
                token: Token | None = self._decode(current.value)
            except StoreError:  # unreadable (not undecryptable): nothing to revoke, still delete
                token = None
            revoked = await self._revoke(token) if token is not None else False
            await self.store.delete(key, expected_version=current.version)
        return revoked

    async def authorize(
        self, account: str = "default", *, store: bool = True
    ) -> AsyncIterator[FlowEvent]:
        """Run one device flow for ``account`` and yield a FlowEvent at every change of state.

        The PENDING event carries the DeviceCode to show the person; the last event is GRANTED
        (with the token, already saved to the store when ``store`` is true), EXPIRED, DENIED or
        FAILED (with the typed error in ``event.error``). ``on_code`` is not called here: show
        the code from the events.

        >>> async for event in client.authorize("bot"):  # doctest: +SKIP
        ...     if event.state is FlowState.PENDING and event.code:
        ...         print(event.code.user_code, event.code.verification_uri)
        """
        async with contextlib.aclosing(self._authorize(account, store=store)) as events:
            async for event in events:
                yield event

    async def _authorize(
        self,
        account: str,
        *,
        store: bool,
        before_wait: Callable[[float], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[FlowEvent, None]:
        """authorize(), calling ``before_wait(seconds)`` before each wait and request it makes
        (``seconds`` until the request; 0 or less when it is due)."""
        registration = self.provider.registration
        machine = DeviceFlowMachine(
            client_id=self.client_id,
            # A provider that takes the scopes at registration takes none here (AWS).
            scope=None if registration is not None and registration.scope_param else self.scope,
            metadata=self._metadata,
            issuer=self.provider.issuer,
            expected_issuer=self.provider.expected_issuer,
            check_issuer=self.provider.check_issuer,
            dialect=self.provider.dialect,
            device_params=self.provider.device_params,
            poll_margin=self._poll_margin,
        )
        clock = self._clock
        last: tuple[FlowState, float] | None = None

        def event() -> FlowEvent:
            return FlowEvent(
                state=machine.state,
                account=account,
                code=machine.code,
                token=machine.token,
                error=machine.error,
                interval=machine.interval if machine.code else None,
            )

        action = machine.start(now=clock.monotonic(), wall=clock.wall())
        while True:
            if (machine.state, machine.interval) != last and not machine.state.is_terminal:
                last = (machine.state, machine.interval)
                yield event()
            if isinstance(action, Done):
                if machine.metadata is not None:
                    self._metadata = machine.metadata
                if store:
                    # The device code is redeemed: keep the grant even if we are cancelled now.
                    await _complete_despite_cancellation(self.save_token(account, action.token))
                yield event()
                return
            if isinstance(action, Fail):
                yield event()
                return
            assert isinstance(action, Send)
            delay = action.at - clock.monotonic()
            if before_wait is not None:
                await before_wait(delay)
            if delay > 0:
                await clock.sleep(delay)
            try:
                response = await self._send(action.request)
            except DeviceFlowError as exc:
                log.debug("device flow %s request failed: %s", action.request.kind.value, exc)
                action = machine.receive_failure(exc, now=clock.monotonic(), wall=clock.wall())
            else:
                action = machine.receive_response(
                    response, now=clock.monotonic(), wall=clock.wall()
                )

    # --- single-flight ------------------------------------------------------------------------

    async def _join(self, account: str, stale: str | None) -> Token:
        # Each caller waits on a future of its own: one that is cancelled or times out drops
        # its future and leaves the flight running for the others.
        waiter: asyncio.Future[Token] = asyncio.get_running_loop().create_future()
        flight = self._flight(account, stale, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            flight.waiters.discard(waiter)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # settled just before the cancellation: retrieved, not logged
            raise

    def _flight(
        self, account: str, stale: str | None, waiter: asyncio.Future[Token] | None = None
    ) -> _Flight:
        """The running flight of ``account`` (a new one if there is none), with ``waiter`` added
        before the flight can start (an eager task may finish inside create_task)."""
        if self._closed:
            raise RuntimeError("this DeviceFlowClient is closed")
        flight = self._flights.get(account)
        if flight is None:
            flight = self._flights[account] = _Flight(background=waiter is None)
            if waiter is not None:
                flight.waiters.add(waiter)
            flight.task = asyncio.get_running_loop().create_task(self._fly(account, stale, flight))
        elif waiter is not None:
            flight.waiters.add(waiter)
        return flight

    async def _fly(self, account: str, stale: str | None, flight: _Flight) -> None:
        """Run one flight and hand its outcome to every waiter, as soon as it is known."""
        try:
            token = await self._obtain(account, stale)
        except asyncio.CancelledError:
            self._settle(account, flight, _closed_error())
            raise
        except Exception as exc:  # every waiter gets it
            self._settle(account, flight, exc)
            if flight.background and not self._closed:
                self._after_background(account, exc)
        except (KeyboardInterrupt, SystemExit) as exc:  # they stop the loop; waiters must not hang
            self._settle(account, flight, RuntimeError(f"get_token() was interrupted: {exc!r}"))
            raise
        except BaseException as exc:  # an on_code callback's own: its callers get it
            self._settle(account, flight, exc)
        else:
            self._settle(account, flight, token)

    def _settle(self, account: str, flight: _Flight, outcome: Token | BaseException) -> None:
        """End the flight: every waiter still waiting gets ``outcome`` (first call only)."""
        if flight.settled:
            return
        flight.settled = True
        if self._flights.get(account) is flight:
            del self._flights[account]
        for waiter in flight.waiters:
            if waiter.done():
                continue
            if isinstance(outcome, Token):
                waiter.set_result(outcome)
            else:
                waiter.set_exception(outcome)
        flight.waiters.clear()

    def _refresh_ahead(self, account: str) -> None:
        """Start one background refresh of a still-usable token (no task per caller)."""
        if account not in self._flights and not self._closed:
            self._flight(account, None)

    def _after_background(self, account: str, exc: Exception) -> None:
        # The cached token is still usable; callers see errors only once it is not.
        # Try again halfway to the end of its usable life, not on every call.
        log.warning("background refresh of account %r failed: %s", account, exc)
        cached = self._cache.get(account)
        if cached is not None:
            now = self._clock.monotonic()
            later = now + max(1.0, (cached.usable_until - now) / 2)
            cached.refresh_at = min(later, cached.usable_until)

    # --- the work of one flight ---------------------------------------------------------------

    async def _obtain(self, account: str, stale: str | None) -> Token:
        key = self._key(account)
        force = stale is not None
        seen: tuple[Versioned, _Record] | None = None  # what was read before taking the lock
        if not force:
            current = await self.store.get(key)
            if current is not None:
                seen = (current, self._read_record(account, current))
                token = self._usable_fresh(account, seen[1], current)
                if token is not None:
                    return token
        if force or (seen is not None and seen[1][0].refresh_token):
            # A refresh is coming: settle discovery and client registration before the lock,
            # so that the lock's ttl only has to cover the refresh (http_timeout < lock_ttl).
            await self._ensure_metadata()
            if self.provider.registration is not None:
                await self._registered_client()
        async with self.store.lock(key, ttl=self._lock_ttl, wait=self._lock_wait):
            current = await self.store.get(key)
            unsaved = self._unsaved.get(account)
            if current is None:
                self._unsaved.pop(account, None)  # deleted meanwhile: a logout is never undone
            else:
                if unsaved is not None and unsaved[0] == current.version:
                    # A refresh whose write failed earlier: store its answer first, and never
                    # refresh with the refresh token it replaced (kept until it is written).
                    self._finishing.add(account)
                    try:
                        current = await self._write(key, account, unsaved[1], current.version)
                    finally:
                        self._finishing.discard(account)
                    self._unsaved.pop(account, None)
                    record: _Record = (unsaved[1], None)
                    unchanged = False
                else:
                    self._unsaved.pop(account, None)  # another process wrote after it
                    # The same record as before the lock? Versions repeat after a delete: the
                    # stamp (version and bytes) tells.
                    unchanged = seen is not None and _stamp(seen[0]) == _stamp(current)
                    record = seen[1] if seen and unchanged else self._read_record(account, current)
                version = current.version
                stored = record[0]
                named = force and stale is not _ANY
                if (not force and not unchanged) or (named and stored.access_token != stale):
                    # Someone wrote while we waited: that token may be fresh.
                    token = self._usable_fresh(account, record, current)
                    if token is not None:
                        return token
                if stored.refresh_token:
                    # Once the request is out, the server may already have rotated the refresh
                    # token: the answer must reach memory and the store, or every holder of the
                    # old token loses the grant. So aclose() waits for a flight in this step
                    # instead of cancelling it (callers cannot cancel a flight: see _join).
                    self._finishing.add(account)
                    try:
                        return await self._refresh_and_write(key, account, stored, version)
                    except InvalidGrantError:
                        log.info(
                            "refresh token of account %r was rejected; need a new grant", account
                        )
                        await self._forget(key, account, version)
                    finally:
                        self._finishing.discard(account)
                elif not self._expired(stored) and not (named and stored.access_token == stale):
                    # Nothing to refresh with, but still valid (and not the token a server
                    # just rejected): keep using it.
                    return self._remember(account, stored, record[1], _stamp(current))
                else:
                    await self._forget(key, account, version)
        return await self._device_flow(account)

    async def _refresh_and_write(
        self, key: str, account: str, stored: Token, version: int
    ) -> Token:
        new = await self._refresh_grant(stored)
        return await self._store_refreshed(key, account, new, version)

    async def _store_refreshed(self, key: str, account: str, new: Token, version: int) -> Token:
        # In memory first: if the write fails, the next flight stores this answer instead of
        # reusing the refresh token it replaced.
        entry = self._cache[account] = self._entry(new, self._clock.wall())
        self._unsaved[account] = (version, new)
        written = await self._write(key, account, new, version)
        self._unsaved.pop(account, None)
        entry.stamp = _stamp(written)
        return new

    def _read_record(self, account: str, current: Versioned) -> _Record:
        """Decode ``current``, unless it is the record the cached token came from."""
        cached = self._cache.get(account)
        if cached is not None and cached.stamp is not None and cached.stamp == _stamp(current):
            return cached.token, cached.obtained
        return self._decode_record(current.value)

    def _usable_fresh(self, account: str, record: _Record, current: Versioned) -> Token | None:
        """Cache and return the stored token if it is not due for refresh, else None."""
        token, obtained = record
        cached = self._cache.get(account)
        if cached is None or cached.token is not token:  # not the record already in memory
            cached = self._entry(token, obtained, _stamp(current))
        if self._clock.monotonic() >= cached.refresh_at:
            return None
        self._cache[account] = cached
        return token

    def _expired(self, token: Token) -> bool:
        return token.expires_within(0, now=self._clock.wall())

    async def _forget(self, key: str, account: str, version: int) -> None:
        self._cache.pop(account, None)
        with contextlib.suppress(ConflictError):
            await self.store.delete(key, expected_version=version)

    async def _device_flow(self, account: str) -> Token:
        """A new grant through a device flow, one per account across every process sharing the
        store (see _claim.py): this process runs it, or waits for the one that does."""
        if self._closed:  # a refresh that aclose() let finish was refused: stop there
            raise RuntimeError("this DeviceFlowClient is closed")
        if self.on_code is None:
            raise ReauthorizationRequiredError(
                f"account {account!r} has no usable token and no on_code callback is set to "
                "show a device code; run client.authorize() or `deviceflow login` first"
            )
        key = self._key(account)
        claim = FlowClaim(self.store, key + "//device-flow", self._clock)
        outcome: BaseException | None = None
        try:
            while (other := await claim.take()) is not None:
                token = await self._flow_elsewhere(account, key, claim, other)
                if token is not None:
                    return token
            # A flow elsewhere may have stored its token just before this claim was taken.
            token = await self._stored_usable(account, key)
            if token is None:
                token = await self._show_and_poll(account, key, claim)
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            await claim.end(outcome)  # a no-op unless this process wrote a claim
        return token

    async def _flow_elsewhere(
        self, account: str, key: str, claim: FlowClaim, other: Claim
    ) -> Token | None:
        """Wait on another process's device flow: its token, its error, or None once its claim
        has lapsed or gone without a token (then this process tries to claim the flow)."""
        log.info("account %r: another process is running a device flow; waiting for it", account)
        while True:
            # Real time, not the client's clock: another process's flow runs on real time, and
            # a virtual clock in tests would otherwise race ahead while this one waits.
            await asyncio.sleep(_CLAIM_POLL)
            now = await claim.read()  # the claim first: it is ended after the token is stored
            token = await self._stored_usable(account, key)
            if token is not None:
                return token
            if now is None or now.flow != other.flow or now.until <= self._clock.wall().timestamp():
                return None
            if now.error is not None:
                raise now.failure()

    async def _stored_usable(self, account: str, key: str) -> Token | None:
        current = await self.store.get(key)
        if current is None:
            return None
        token, obtained = self._read_record(account, current)
        if self._expired(token):
            return None
        return self._remember(account, token, obtained, _stamp(current))

    async def _show_and_poll(self, account: str, key: str, claim: FlowClaim) -> Token:
        on_code = self.on_code
        assert on_code is not None

        async def before_wait(delay: float) -> None:
            # The claim outlasts this wait and the request after it, however long a backoff or
            # Retry-After makes the wait; and a token stored meanwhile by other means (a login
            # elsewhere) ends this flow.
            await claim.renew(max(0.0, delay) + self._http_timeout)
            token = await self._stored_usable(account, key)
            if token is not None:
                raise _SignedInElsewhere(token)

        shown = False
        try:
            async for event in self._authorize(account, store=True, before_wait=before_wait):
                if event.state is FlowState.PENDING and event.code is not None and not shown:
                    shown = True
                    result = on_code(event.code, account)
                    if inspect.isawaitable(result):
                        await result
                if event.error is not None:
                    raise event.error
                if event.token is not None and event.state is FlowState.GRANTED:
                    return event.token
        except _SignedInElsewhere as found:
            log.info("account %r was signed in elsewhere; its device flow stops", account)
            return found.token
        raise ProtocolError("the device flow ended without a token")  # pragma: no cover

    async def _refresh_grant(self, token: Token) -> Token:
        """RFC 6749 6: trade the refresh token for a new access token, retrying transient errors."""
        assert token.refresh_token is not None
        metadata = await self._ensure_metadata()
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
        # The whole refresh, retries included, ends within http_timeout, which is below the
        # lock's ttl: the lock cannot expire while a refresh token is in flight.
        deadline = self._clock.monotonic() + self._http_timeout
        delay = 0.25
        while True:
            try:
                remaining = deadline - self._clock.monotonic()
                response = await self._send(request, timeout=remaining)
                return interpret_token_response(
                    response, self.provider.dialect, self._clock.wall(), previous=token
                )
            except TransportError as exc:
                if not exc.retryable or self._clock.monotonic() + delay >= deadline:
                    raise
                log.debug("refresh failed (%s); retrying in %.2fs", exc, delay)
                await self._clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _revoke(self, token: Token) -> bool:
        try:
            metadata = await self._ensure_metadata()
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
        try:
            response = await self._send(
                Request(
                    kind=RequestKind.REVOCATION,
                    method="POST",
                    url=metadata.revocation_endpoint,
                    params=params,
                )
            )
        except DeviceFlowError as exc:
            log.warning("token revocation failed: %s", exc)
            return False
        if response.status != 200:
            log.warning("token revocation answered HTTP %d", response.status)
        return response.status == 200

    async def _send(
        self,
        request: Request,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Response:
        """Send through the transport, as the registered client when the provider needs one."""
        if self.provider.registration is not None and request.kind is not RequestKind.DISCOVERY:
            client = await self._registered_client()
            params = {**request.params, "client_id": client.client_id}
            if client.client_secret is not None:
                params["client_secret"] = client.client_secret  # RFC 6749 2.3.1, in the body
            request = attrs.evolve(request, params=params)
        if timeout is None:
            return await self._transport.send(request)
        return await self._transport.send(request, timeout=timeout)

    async def _registered_client(self) -> RegisteredClient:
        """This client's registration with the provider (AWS RegisterClient).

        Registered once and kept in the store, under the store's lock, so that every process
        sharing the store uses one registration (refresh tokens are bound to it); registered
        again when it is about to expire.
        """
        spec = self.provider.registration
        assert spec is not None
        client = self._registered
        if client is not None and not client.expires_within(
            _REGISTRATION_SKEW, now=self._clock.wall()
        ):
            return client
        async with self._registration_lock:
            client = self._registered
            if client is not None and not client.expires_within(
                _REGISTRATION_SKEW, now=self._clock.wall()
            ):
                return client
            key = self._key_prefix + "//registration"
            async with self.store.lock(key, ttl=self._lock_ttl, wait=self._lock_wait):
                current = await self.store.get(key)
                client = None
                if current is not None:
                    try:
                        client = RegisteredClient.from_json(current.value)
                    except ProtocolError:
                        log.warning("the stored client registration is unreadable; registering")
                if client is None or client.expires_within(
                    _REGISTRATION_SKEW, now=self._clock.wall()
                ):
                    client = await self._register()
                    ttl = None
                    if client.expires_at is not None:
                        ttl = (client.expires_at - self._clock.wall()).total_seconds()
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
        deadline = self._clock.monotonic() + self._http_timeout
        delay = 0.25
        while True:
            try:
                remaining = deadline - self._clock.monotonic()
                response = await self._transport.send(request, timeout=remaining)
                return interpret_registration_response(
                    response, self.provider.dialect, self._clock.wall()
                )
            except TransportError as exc:
                if not exc.retryable or self._clock.monotonic() + delay >= deadline:
                    raise
                await self._clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _ensure_metadata(self) -> ProviderMetadata:
        if self._metadata is None:
            async with self._metadata_lock:
                if self._metadata is None:
                    self._metadata = await fetch_metadata(
                        self._transport, self.provider, clock=self._clock
                    )
        return self._metadata

    # --- store records ------------------------------------------------------------------------

    def _key(self, account: str) -> str:
        if _PLAIN_ACCOUNT.fullmatch(account) is None:
            account = urllib.parse.quote(account, safe="")
        return f"{self._key_prefix}/{account}"

    async def _write(
        self,
        key: str,
        account: str,
        token: Token,
        expected: int | None,
    ) -> Versioned:
        """Compare-and-set the record; returns what was written and its version.

        A conflict on a freshly issued token is overwritten (the new token is valid, and losing
        it would lose a rotated refresh token), unless the record was deleted meanwhile: a
        logout is never undone.
        """
        record = self._encode(account, token)
        ttl = self._record_ttl(token)
        for attempt in range(4):
            try:
                version = await self.store.put(key, record, expected_version=expected, ttl=ttl)
                return Versioned(record, version)
            except ConflictError:
                current = await self.store.get(key)
                if attempt == 3 or (current is None and expected is not None):
                    raise
                log.warning("account %r was written concurrently; keeping the new token", account)
                expected = current.version if current else None
        raise AssertionError("unreachable")  # pragma: no cover

    def _record_ttl(self, token: Token) -> float | None:
        if token.refresh_token:
            # GitHub sends the refresh token's lifetime; whatever the server sends, parse it.
            rt_lifetime = parse_seconds(token.extra.get("refresh_token_expires_in"))
            if rt_lifetime:
                return min(rt_lifetime, MAX_TOKEN_LIFETIME)
            return None
        if token.expires_at is None:
            return None
        return max(1.0, (token.expires_at - self._clock.wall()).total_seconds() + 60.0)

    def _encode(self, account: str, token: Token) -> bytes:
        """The store record: compact JSON, ``{"v", "issuer", "client_id", "account",
        "obtained_at", "token"}`` (see Token.to_dict)."""
        return (
            f'{self._record_head}"account":{json_str(account)},'
            f'"obtained_at":{self._clock.wall().timestamp()!r},"token":{token.json_text()}}}'
        ).encode()

    def _decode_record(self, value: bytes) -> _Record:
        try:
            record = json.loads(value)
        except (ValueError, RecursionError):
            raise StoreError("a stored token record is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("token"), dict):
            raise StoreError("a stored token record has an unknown format")
        try:
            token = Token.from_dict(record["token"])
        except ProtocolError as exc:
            raise StoreError(str(exc)) from None
        obtained = record.get("obtained_at")
        when = None
        if isinstance(obtained, (int, float)) and math.isfinite(obtained):
            with contextlib.suppress(OverflowError, OSError, ValueError):  # out of datetime's range
                when = datetime.fromtimestamp(obtained, timezone.utc)
        return token, when

    def _decode(self, value: bytes) -> Token:
        return self._decode_record(value)[0]

    def _entry(self, token: Token, obtained: datetime | None, stamp: int | None = None) -> _Cached:
        if token.expires_at is None:
            return _Cached(
                token=token,
                refresh_at=math.inf,
                usable_until=math.inf,
                obtained=obtained,
                stamp=stamp,
            )
        now_mono = self._clock.monotonic()
        wall = self._clock.wall()
        remaining = (token.expires_at - wall).total_seconds()
        lifetime = (token.expires_at - obtained).total_seconds() if obtained else remaining
        # Refresh ahead by the skew, but never in the first half of a token's life: a 4 s token
        # with a 60 s skew would otherwise be refreshed on every call.
        ahead = min(self._refresh_skew, max(0.0, lifetime) / 2)
        usable_until = now_mono + remaining - min(1.0, ahead)
        return _Cached(
            token=token,
            refresh_at=now_mono + remaining - ahead,
            usable_until=usable_until,
            obtained=obtained,
            stamp=stamp,
        )

    def _remember(
        self, account: str, token: Token, obtained: datetime | None, stamp: int | None = None
    ) -> Token:
        self._cache[account] = self._entry(token, obtained, stamp)
        return token


def _stamp(record: Versioned) -> int:
    """Tells store records apart: their version and a hash of their bytes (versions alone can
    repeat after a delete). bytes() is free for bytes and copies a store's bytearray."""
    return hash((record.version, bytes(record.value)))


_ANY = "\x00any"  # refresh(): no particular stale token named


class _SignedInElsewhere(Exception):
    """Not an error: a token was stored by other means, which ends a running device flow."""

    def __init__(self, token: Token) -> None:
        super().__init__("a token was stored while this device flow ran")
        self.token = token


def _closed_error() -> RuntimeError:
    return RuntimeError("the DeviceFlowClient was closed during this call")


_PLAIN_ACCOUNT = re.compile(r"[A-Za-z0-9_.~-]+")  # what quote() leaves as it is


async def _complete_despite_cancellation(work: Coroutine[Any, Any, _T]) -> _T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile, then give in.

    For the few steps that must not stop halfway: a refresh whose answer carries a rotated
    refresh token, and the write of a newly granted token. ``work`` has its own time limit.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    # The shielded scope keeps anyio cancel scopes (fail_after, task groups) from re-delivering
    # their cancellation at every await; the loop absorbs a plain task.cancel().
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved, even though the caller gets CancelledError
        raise asyncio.CancelledError
    return task.result()
