"""DeviceFlowClient: the public face of the package; it wires the parts together.

get_token() in tiers:

1. Hot path: a token cached in memory that is not yet due for refresh is returned at once, with
   no I/O and no lock. Inside the refresh-ahead window it is still returned at once, and one
   background refresh starts.
2. Flight: otherwise one task per account (single-flight, _flights.py) does the work and every
   caller of that account awaits it. A caller that is cancelled or times out leaves the flight
   running for the others.
3. In the flight: the refresh transaction (_refresh.py) reads the store, refreshes under the
   store's lock and writes with compare-and-set; a rotated refresh token is never lost or
   replayed, whatever the store does.
4. No usable token at all: a device flow (_device.py), one per account across the processes
   sharing the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from ._cache import TokenCache
from ._checks import check_client_args
from ._clock import Clock, SystemClock
from ._device import DeviceFlowDriver, OnCode, complete_despite_cancellation
from ._dpop import DPoP, check_saved_token
from ._endpoints import Endpoints
from ._flights import Flights
from ._identity import Identities, Identity, VerifyIdentity
from ._ledger import TokenLedger
from ._models import AuthMethod, FlowEvent, Token
from ._provider import Provider
from ._records import RecordCodec
from ._refresh import Forced, NeedsGrant, RefreshTransaction, Stale
from ._transport import AiohttpTransport, ClientAuth, Transport
from .exceptions import IdentityError, ProtocolError
from .stores._protocol import TokenStore

if TYPE_CHECKING:
    import aiohttp

__all__ = ["DeviceFlowClient", "OnCode"]

log = logging.getLogger("deviceflow")


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

    ``http_timeout`` bounds each request, and a refresh with all its retries. A refresh runs
    under the store's lock, which a crashed holder keeps for at most ``lock_ttl`` seconds: the
    half of ``lock_ttl - http_timeout`` is kept for the store calls on each side of the request
    (see the durability guarantees in the security docs), so give the lock more time when the
    store is slow. ``lock_wait`` bounds the wait for another holder.

    ``verify_identity(identity, account)`` (sync or async) is called after every device flow,
    before anything is stored, with the verified :class:`Identity` of who approved the code;
    unless it returns True, the grant is revoked where the provider offers revocation, nothing
    is stored, and get_token() (or authorize()'s last event) gives an IdentityError. Bind an
    account to a person or a directory this way (see :meth:`identity`).
    ``dpop=True`` asks for sender-constrained tokens (DPoP, RFC 9449): each account gets a key
    pair on its first device flow, kept in its token record (encrypted by the persistent
    stores), and every token request carries a proof of it; resource requests need one too, so
    take their headers from :meth:`request_headers` (``BearerAuth`` does).
    """

    def __init__(
        self,
        provider: Provider,
        *,
        client_id: str,
        client_secret: str | None = None,
        client_auth: AuthMethod | None = None,
        scope: str | Iterable[str] | None = None,
        store: TokenStore | None = None,
        on_code: OnCode | None = None,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        refresh_skew: float = 60.0,
        http_timeout: float = 20.0,
        lock_ttl: float = 36.0,
        lock_wait: float = 60.0,
        poll_margin: float = 0.1,
        verify_identity: VerifyIdentity | None = None,
        dpop: bool = False,
    ) -> None:
        scope = check_client_args(
            client_id=client_id,
            client_secret=client_secret,
            client_auth=client_auth,
            scope=scope,
            on_code=on_code,
            refresh_skew=refresh_skew,
            http_timeout=http_timeout,
            lock_ttl=lock_ttl,
            lock_wait=lock_wait,
            poll_margin=poll_margin,
        )
        if not isinstance(dpop, bool):
            raise TypeError("dpop must be True or False")
        if provider.requires_client_secret and client_secret is None:
            raise ValueError(f"the {provider.name} provider needs a client_secret")
        if provider.registration is not None and (
            client_secret is not None or client_auth not in (None, "none")
        ):
            raise ValueError(
                f"the {provider.name} provider registers its own client and authenticates with "
                "the credentials it gets; do not pass client_secret or client_auth"
            )
        if verify_identity is not None and not callable(verify_identity):
            raise TypeError("verify_identity must be a callable (identity, account) -> bool")
        if store is None:
            from .stores._memory import MemoryStore

            store = MemoryStore()
        self.provider = provider
        self.client_id = client_id
        self.scope = scope if scope is not None else provider.default_scope
        self.store = store
        self.on_code = on_code
        clock = clock or SystemClock()
        self._clock = clock
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
        codec = RecordCodec(provider.identity, client_id)
        self._dpop = DPoP(clock.wall)
        self._unbound_warned: set[str] = set()  # accounts warned of a Bearer grant (dpop=True)
        self._cache = TokenCache(clock, refresh_skew)
        self._flights: Flights[Token] = Flights(self._after_background)
        self._endpoints = Endpoints(
            provider=provider,
            client_id=client_id,
            scope=self.scope,
            transport=self._transport,
            clock=clock,
            store=store,
            registration_key=codec.registration_key,
            http_timeout=http_timeout,
            lock_ttl=lock_ttl,
            lock_wait=lock_wait,
            metadata=provider.metadata,
            dpop=self._dpop,
            dpop_grants=dpop,
        )
        self._endpoints.telemetry.watch(self._cache)  # deviceflow.accounts.cached
        self._ledger = TokenLedger(
            store=store,
            codec=codec,
            cache=self._cache,
            endpoints=self._endpoints,
            clock=clock,
            lock_ttl=lock_ttl,
            lock_wait=lock_wait,
        )
        self._refresh = RefreshTransaction(
            ledger=self._ledger,
            endpoints=self._endpoints,
            finishing=self._flights.finishing,
            http_timeout=http_timeout,
        )
        self._identities = Identities(endpoints=self._endpoints, clock=clock, check=verify_identity)
        self._flows = DeviceFlowDriver(
            endpoints=self._endpoints,
            ledger=self._ledger,
            clock=clock,
            scope=self.scope,
            poll_margin=poll_margin,
            http_timeout=http_timeout,
            admit=self._identities.admit,
        )

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
        refresh token is not lost, even if aclose() itself is cancelled meanwhile; its write is
        bounded by the store lock's ``lock_ttl``. A token the store could not take yet gets
        further attempts for at most 10 s (see :meth:`flush`); if they fail, one ERROR line
        names the account.
        """
        self._flights.closed = True  # at once: no flight starts a device flow from here on
        self._endpoints.telemetry.unwatch()
        # To its end even if aclose() itself is cancelled (an anyio timeout around
        # `async with client`): a refresh on the wire must still store its answer.
        await complete_despite_cancellation(self._shut_down())

    async def _shut_down(self) -> None:
        await self._flights.aclose()
        await self._refresh.aclose()
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
        cached = self._cache.entries.get(account)
        if cached is not None:
            now = self._clock.monotonic()
            if now < cached.refresh_at:
                return cached.token
            if now < cached.usable_until:
                self._flights.start(account, self._obtain, account, None)
                return cached.token
        if timeout is not None:
            with anyio.fail_after(timeout):
                return await self._flights.join(account, self._obtain, account, None)
        # join() without its coroutine: a storm parks thousands of callers here.
        waiter = self._flights.waiter(account, self._obtain, account, None)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._flights.abandon(account, waiter)
            raise

    async def refresh(self, account: str = "default", *, stale: Token | None = None) -> Token:
        """Force a refresh of ``account``'s token and return the new one.

        With ``stale`` (the token a resource server just rejected), nothing is refreshed when
        another caller has already replaced that token: the newer one is returned.
        """
        named: Stale = stale.access_token if stale is not None else Forced.ANY
        token = await self._flights.join(account, self._obtain, account, named)
        if stale is not None and token.access_token == stale.access_token:
            # That was a flight some other caller had started (it did not refresh): again.
            token = await self._flights.join(account, self._obtain, account, named)
        return token

    async def request_headers(
        self,
        method: str,
        url: str,
        account: str = "default",
        *,
        dpop_nonce: str | None = None,
    ) -> dict[str, str]:
        """The headers that authorize ``method url`` with ``account``'s token (from
        :meth:`get_token`): ``{"Authorization": "Bearer <token>"}``, or for a DPoP token
        ``{"Authorization": "DPoP <token>", "DPoP": "<proof>"}`` with a proof for this one
        request (RFC 9449 7). Make new headers for every request, a retry included.

        When the resource server answers 401 with ``WWW-Authenticate: DPoP
        error="use_dpop_nonce"``, pass its ``DPoP-Nonce`` header as ``dpop_nonce`` and retry
        once with the headers returned; the nonce is kept for that server's later requests.

        >>> headers = await client.request_headers("GET", "https://api.example.com/me")  # doctest: +SKIP
        """  # noqa: E501
        return (await self._authorize_request(method, url, account, dpop_nonce))[1]

    async def _authorize_request(
        self, method: str, url: str, account: str, dpop_nonce: str | None = None
    ) -> tuple[Token, dict[str, str]]:
        """The token and the headers of :meth:`request_headers` (BearerAuth needs both)."""
        token = await self.get_token(account)
        return token, self._resource_headers(token, method, url, account, dpop_nonce)

    def _resource_headers(
        self, token: Token, method: str, url: str, account: str, dpop_nonce: str | None = None
    ) -> dict[str, str]:
        self._remember_dpop_nonce(url, dpop_nonce)
        if token.dpop_key is None and token.token_type.lower() == "dpop":
            raise ProtocolError(
                f"account {account!r}: its DPoP token came without its key (a record written "
                "by another program?); it cannot be used; sign in again"
            )
        return self._dpop.resource_headers(token, method, url)

    def _remember_dpop_nonce(self, url: str, nonce: str | None) -> None:
        self._dpop.remember(url, nonce)

    async def save_token(self, account: str, token: Token) -> None:
        """Store a token obtained elsewhere (a migration, a test) as ``account``'s token.

        Its id_token, if any, is checked as one received from the provider is (signature,
        ``iss``, ``aud``, ``azp``, ``exp`` and ``iat``; OpenID Connect Core 3.1.3.7). One that
        fails, or that cannot be checked (the provider's keys are out of reach), is dropped with
        a warning naming the account: the rest of the token is stored all the same, and
        :meth:`identity` then says the account has no id_token.

        A token the client could not use is refused with ProtocolError and nothing is stored:
        a DPoP token without its key (``Token.dpop_key``), and with ``dpop=True`` a token of
        any other type than DPoP, a Bearer token included (its requests would carry no proof,
        and nothing would say so).
        """
        check_saved_token(token, account, dpop=self._endpoints.dpop_grants)
        if token.id_token is not None and self.provider.issues_id_tokens:
            token = await self._identities.admitted_id_token(account, token)
        await self._ledger.save(account, token)

    async def logout(self, account: str = "default", *, force: bool = False) -> bool:
        """Revoke ``account``'s grant where the provider allows it (RFC 7009) and sign it out.

        Returns True when the server confirmed the revocation. The stored token is replaced by a
        tombstone even when revocation fails (the failure is logged), so that no process writes
        its copy back. A record that cannot be decrypted raises DecryptionError and stays,
        unless ``force`` is true: then it is discarded unrevoked.
        """
        return await self._ledger.logout(account, force=force)

    async def flush(self) -> bool:
        """Try once more to store every token that a failed store write left in memory only.

        get_token() keeps serving such a token and retries the write in the background with
        back-off; aclose() makes a last attempt. Returns True when no token is left unsaved.
        """
        return await self._refresh.flush()

    def unsaved_accounts(self) -> frozenset[str]:
        """The accounts whose newest token is in memory only (a store write failed): a process
        holding one should not be stopped before :meth:`flush` returns True."""
        return frozenset(self._ledger.unsaved)

    async def identity(self, account: str = "default") -> Identity:
        """Who signed in to ``account``: the verified identity of its id_token.

        The id_token's signature is checked against the provider's keys (its JWKS, cached and
        fetched again for a key it lacks), and its ``iss``, ``aud`` and ``azp`` (OpenID Connect
        Core 3.1.3.7) every time. ``exp`` and ``iat`` were checked when the id_token was
        received: an id_token is short-lived, but the identity of a grant that is still valid
        stays what it was. Nothing is refreshed and no device flow starts. Raises
        IdentityError when the account has no id_token (not signed in, no ``openid`` scope, or
        a provider such as GitHub that issues none) or it does not verify; TransportError when
        the provider's keys cannot be fetched.

        >>> who = await client.identity("tenant-42")  # doctest: +SKIP
        >>> who.subject, who.email, who.claims.get("tid")  # doctest: +SKIP
        """
        self._identities.require_provider(account)
        held = self._ledger.held(account)
        if held is not None:
            token: Token | None = held.record.token
        else:
            stored = await self._ledger.read(account, self._ledger.codec.key(account))
            record = self._ledger.trusted(account, stored.record)
            token = record.token if record is not None else None
        if token is None:
            raise IdentityError(f"account {account!r} is not signed in, so it has no identity")
        if token.id_token is None:
            raise IdentityError(
                f"account {account!r} has no id_token: sign in with the 'openid' scope for "
                "the provider to tell who signed in"
            )
        return await self._identities.verify(token.id_token, account=account, at=None)

    def store_key(self, account: str = "default") -> str:
        """The key under which ``account``'s token record is kept in the store (issuer, client
        id and account, each percent-quoted where needed), for operators and tests."""
        return self._ledger.codec.key(account)

    async def authorize(
        self, account: str = "default", *, store: bool = True
    ) -> AsyncIterator[FlowEvent]:
        """Run one device flow for ``account`` and yield a FlowEvent at every change of state.

        The first PENDING event carries the DeviceCode to show the person, with
        ``event.code_issued`` true (later PENDING events, after a ``slow_down`` or a change of
        interval, carry the same code with ``code_issued`` false); the last event is GRANTED
        (with the token, already saved to the store when ``store`` is true), EXPIRED, DENIED or
        FAILED (with the typed error in ``event.error``). ``on_code`` is not called here: show
        the code from the events.

        >>> async for event in client.authorize("bot"):  # doctest: +SKIP
        ...     if event.code_issued:
        ...         print(event.code.user_code, event.code.verification_uri)
        """
        async with contextlib.aclosing(self._flows.events(account, store=store)) as events:
            async for event in events:
                yield event

    # --- the work of one flight ---------------------------------------------------------------

    async def _obtain(self, account: str, stale: Stale | None) -> Token:
        outcome = await self._refresh.obtain(account, stale)
        if isinstance(outcome, NeedsGrant):
            if self._flights.closed:  # a refresh that aclose() let finish was refused: stop
                raise RuntimeError("this DeviceFlowClient is closed")
            outcome = await self._flows.obtain(account, self.on_code, outcome.not_before)
        if self._endpoints.dpop_grants and outcome.dpop_key is None:
            self._warn_unbound(account)
        return outcome

    def _warn_unbound(self, account: str) -> None:
        # A Bearer grant already in the store (from before dpop=True, or a replica without it)
        # is used and refreshed as it is: forcing a new sign-in would stop running services.
        # Said once per account, so that nobody believes the tokens are sender-constrained.
        if account in self._unbound_warned:
            return
        self._unbound_warned.add(account)
        log.warning(
            "account %r: dpop=True, but its stored grant is a Bearer one (signed in before DPoP "
            "was on, or by a client without it); it is used as it is, and its tokens are not "
            "sender-constrained until the account's next sign-in",
            account,
        )

    def _after_background(self, account: str, exc: Exception) -> None:
        # The cached token is still usable; callers see errors only once it is not.
        log.warning("background refresh of account %r failed: %s", account, exc)
        self._cache.postpone(account)
