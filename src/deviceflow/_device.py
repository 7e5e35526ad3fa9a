"""The device-flow driver: runs the sans-IO machine over the transport, and makes sure one
device flow runs per account across every process sharing the store (see _claim.py).

- :meth:`DeviceFlowDriver.events` is the loop behind ``authorize()``: it feeds the machine's
  requests to the transport and its answers back, waits on the client's clock, and yields a
  FlowEvent at every change of state.
- :meth:`DeviceFlowDriver.obtain` is what ``get_token()`` does when no token can be had
  without a person: claim the flow for this process (and call ``on_code``), or wait for the
  process that holds the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import anyio
import attrs

from ._claim import Claim, FlowClaim
from ._clock import Clock
from ._dpop import DPoPKey, check_token_type, new_key
from ._endpoints import Endpoints
from ._ledger import TokenLedger
from ._machine import DeviceFlowMachine, Done, Fail, Send
from ._models import DeviceCode, FlowEvent, FlowState, Request, RequestKind, Token
from ._waiting import wait_for_flow
from .exceptions import DeviceFlowError, ProtocolError, ReauthorizationRequiredError

__all__ = ["DeviceFlowDriver", "OnCode", "complete_despite_cancellation"]

log = logging.getLogger("deviceflow")

_T = TypeVar("_T")

OnCode = Callable[[DeviceCode, str], Awaitable[None] | None]


#: The requests of a device flow that DPoP changes: the device authorization request names the
#: key (dpop_jkt) and the token requests prove it.
_DPOP_REQUESTS = frozenset({RequestKind.DEVICE_AUTHORIZATION, RequestKind.TOKEN})


def _bind_device_code(request: Request, key: DPoPKey, machine: DeviceFlowMachine) -> Request:
    """RFC 9449 10: ``dpop_jkt`` binds the device code to the key, so that a stolen device
    code is of no use without it; sent only to servers that list DPoP algorithms (they know the
    parameter), and only with the device authorization request."""
    metadata = machine.metadata
    if request.kind is not RequestKind.DEVICE_AUTHORIZATION or metadata is None:
        return request
    if "dpop_signing_alg_values_supported" not in metadata.extra:
        return request
    return attrs.evolve(request, params={**request.params, "dpop_jkt": key.jkt})


class _SignedInElsewhere(Exception):
    """Not an error: a token was stored by other means, which ends a running device flow."""

    def __init__(self, token: Token) -> None:
        super().__init__("a token was stored while this device flow ran")
        self.token = token


class DeviceFlowDriver:
    """Device flows for one client."""

    def __init__(
        self,
        *,
        endpoints: Endpoints,
        ledger: TokenLedger,
        clock: Clock,
        scope: str | None,
        poll_margin: float,
        http_timeout: float,
        admit: Callable[[str, Token], Awaitable[Token]] | None = None,
    ) -> None:
        self.endpoints = endpoints
        #: Judges a new grant's token before it is stored (the id_token, verify_identity).
        self.admit = admit
        self.ledger = ledger
        self.clock = clock
        self.scope = scope
        self.poll_margin = poll_margin
        self.http_timeout = http_timeout

    def _machine(self) -> DeviceFlowMachine:
        provider = self.endpoints.provider
        registration = provider.registration
        return DeviceFlowMachine(
            client_id=self.endpoints.client_id,
            # A provider that takes the scopes at registration takes none here (AWS).
            scope=None if registration is not None and registration.scope_param else self.scope,
            metadata=self.endpoints.metadata,
            issuer=provider.issuer,
            expected_issuer=provider.expected_issuer,
            check_issuer=provider.check_issuer,
            dialect=provider.dialect,
            device_params=provider.device_params,
            poll_margin=self.poll_margin,
            endpoints=provider.endpoints,  # given by hand: they win over discovered ones
        )

    def events(
        self,
        account: str,
        *,
        store: bool,
        before_wait: Callable[[float], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[FlowEvent, None]:
        """One device flow's events (see ``DeviceFlowClient.authorize``), calling
        ``before_wait(seconds)`` before each wait and request it makes (``seconds`` until the
        request; 0 or less when it is due)."""
        flow = self._events(account, store=store, before_wait=before_wait)
        return self.endpoints.telemetry.device_flow(flow)

    async def _events(
        self,
        account: str,
        *,
        store: bool,
        before_wait: Callable[[float], Awaitable[None]] | None,
    ) -> AsyncGenerator[FlowEvent, None]:
        machine = self._machine()
        clock = self.clock
        last: tuple[FlowState, float] | None = None
        announced = False  # whether an event has carried the code yet
        key: DPoPKey | None = None  # with dpop=True: the key the token requests prove
        granted: Token | None = None  # the machine's token, bound to that key

        def event(error: DeviceFlowError | None = None) -> FlowEvent:
            nonlocal announced
            issued = machine.code is not None and not announced
            announced = announced or issued
            return FlowEvent(
                state=FlowState.FAILED if error is not None else machine.state,
                account=account,
                code=machine.code,
                token=granted,
                error=error or machine.error,
                interval=machine.interval if machine.code else None,
                code_issued=issued,
            )

        action = machine.start(now=clock.monotonic(), wall=clock.wall())
        while True:
            if (machine.state, machine.interval) != last and not machine.state.is_terminal:
                last = (machine.state, machine.interval)
                yield event()
            if isinstance(action, Done):
                if machine.metadata is not None:
                    self.endpoints.metadata = machine.metadata
                try:
                    # RFC 9449 5: a DPoP token when a proof was sent, a Bearer one otherwise.
                    token = check_token_type(action.token, key, account)
                except ProtocolError as exc:
                    # The device code is redeemed: the grant lives at the server though it is
                    # not used. Revoke it (one request within the HTTP timeout), even if
                    # cancelled meanwhile, as a refused identity's grant is.
                    await complete_despite_cancellation(self._revoke_unused(account, action.token))
                    yield event(exc)
                    return
                try:
                    if self.admit is not None:  # verify_identity: refused, nothing is stored
                        token = await self.admit(account, token)
                except DeviceFlowError as exc:
                    yield event(exc)
                    return
                granted = token
                if store:
                    # The device code is redeemed: keep the grant even if we are cancelled now.
                    await complete_despite_cancellation(
                        self.ledger.save(account, granted, keep_on_failure=True)
                    )
                yield attrs.evolve(event(), token=granted)
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
            request = action.request
            if self.endpoints.dpop_grants and request.kind in _DPOP_REQUESTS:
                if key is None:
                    try:
                        key = self._dpop_key(account, machine)
                    except ProtocolError as exc:  # no algorithm in common with the server
                        yield event(exc)
                        return
                request = _bind_device_code(request, key, machine)
            try:
                response = await self.endpoints.send(
                    request, dpop_key=key if request.kind is RequestKind.TOKEN else None
                )
            except DeviceFlowError as exc:
                log.debug("device flow %s request failed: %s", action.request.kind.value, exc)
                action = machine.receive_failure(exc, now=clock.monotonic(), wall=clock.wall())
            else:
                action = machine.receive_response(
                    response, now=clock.monotonic(), wall=clock.wall()
                )

    async def _revoke_unused(self, account: str, token: Token) -> None:
        if await self.endpoints.revoke(token):
            log.info("account %r: the grant of the wrong token type was revoked", account)
        else:
            log.warning(
                "account %r: the grant of the wrong token type could not be revoked", account
            )

    def _dpop_key(self, account: str, machine: DeviceFlowMachine) -> DPoPKey:
        """The account's DPoP key: the one its tokens had, else a new one (RFC 9449 5.1: of an
        algorithm the server lists)."""
        held = self.ledger.held(account)
        if held is not None and held.record.token.dpop_key is not None:
            return held.record.token.dpop_key
        metadata = machine.metadata or self.endpoints.metadata
        return new_key(metadata.extra if metadata is not None else None)

    async def obtain(
        self, account: str, on_code: OnCode | None, not_before: datetime | None
    ) -> Token:
        """A new grant through a device flow, one per account across every process sharing
        the store: this process runs it, or waits for the one that does. Stored tokens obtained
        at or before ``not_before`` (a refused grant's) are not taken."""
        if on_code is None:
            raise ReauthorizationRequiredError(
                f"account {account!r} has no usable token and no on_code callback is set to "
                "show a device code; run client.authorize() or `deviceflow login` first"
            )
        key = self.ledger.codec.key(account)
        claim = FlowClaim(self.ledger.store, key + "//device-flow", self.clock)
        outcome: BaseException | None = None
        try:
            while (other := await claim.take()) is not None:
                token = await self._elsewhere(account, key, claim, other, not_before)
                if token is not None:
                    return token
            # A flow elsewhere may have stored its token just before this claim was taken.
            token = await self._stored(account, key, not_before)
            if token is None:
                token = await self._show_and_poll(account, key, claim, on_code, not_before)
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            await claim.end(outcome)  # a no-op unless this process wrote a claim
        return token

    async def _stored(self, account: str, key: str, not_before: datetime | None) -> Token | None:
        return self.ledger.usable(account, await self.ledger.read(account, key), not_before)

    def _elsewhere(
        self,
        account: str,
        key: str,
        claim: FlowClaim,
        other: Claim,
        not_before: datetime | None,
    ) -> Coroutine[Any, Any, Token | None]:
        """Wait on another process's device flow: its token, its error, or None once its claim
        has lapsed or gone without a token (then this process tries to claim the flow).

        wait_for_flow's own coroutine, not one around it: a frame fewer per parked caller.
        """
        log.info("account %r: another process is running a device flow; waiting for it", account)
        read = functools.partial(self._stored, account, key, not_before)
        return wait_for_flow(claim, other, key, read, self.clock)

    async def _show_and_poll(
        self,
        account: str,
        key: str,
        claim: FlowClaim,
        on_code: OnCode,
        not_before: datetime | None,
    ) -> Token:
        async def before_wait(delay: float) -> None:
            # The claim outlasts this wait and the request after it, however long a backoff or
            # Retry-After makes the wait; and a token stored meanwhile by other means (a login
            # elsewhere) ends this flow.
            await claim.renew(max(0.0, delay) + self.http_timeout)
            token = await self._stored(account, key, not_before)
            if token is not None:
                raise _SignedInElsewhere(token)

        events = self.events(account, store=True, before_wait=before_wait)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.code_issued and event.code is not None:
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


async def complete_despite_cancellation(work: Coroutine[Any, Any, _T]) -> _T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile, then give in.

    For the few steps that must not stop halfway: the write of a newly granted token, and
    aclose() letting a refresh on the wire be stored. ``work`` has its own time limit.
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
