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
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import anyio

from ._claim import Claim, FlowClaim
from ._clock import Clock
from ._endpoints import Endpoints
from ._ledger import TokenLedger
from ._machine import DeviceFlowMachine, Done, Fail, Send
from ._models import DeviceCode, FlowEvent, FlowState, Token
from ._waiting import wait_for_flow
from .exceptions import DeviceFlowError, ProtocolError, ReauthorizationRequiredError

__all__ = ["DeviceFlowDriver", "OnCode", "complete_despite_cancellation"]

log = logging.getLogger("deviceflow")

_T = TypeVar("_T")

OnCode = Callable[[DeviceCode, str], Awaitable[None] | None]


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
    ) -> None:
        self.endpoints = endpoints
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
                    self.endpoints.metadata = machine.metadata
                if store:
                    # The device code is redeemed: keep the grant even if we are cancelled now.
                    await complete_despite_cancellation(
                        self.ledger.save(account, action.token, keep_on_failure=True)
                    )
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
                response = await self.endpoints.send(action.request)
            except DeviceFlowError as exc:
                log.debug("device flow %s request failed: %s", action.request.kind.value, exc)
                action = machine.receive_failure(exc, now=clock.monotonic(), wall=clock.wall())
            else:
                action = machine.receive_response(
                    response, now=clock.monotonic(), wall=clock.wall()
                )

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

    async def _elsewhere(
        self,
        account: str,
        key: str,
        claim: FlowClaim,
        other: Claim,
        not_before: datetime | None,
    ) -> Token | None:
        """Wait on another process's device flow: its token, its error, or None once its claim
        has lapsed or gone without a token (then this process tries to claim the flow)."""
        log.info("account %r: another process is running a device flow; waiting for it", account)
        return await wait_for_flow(
            claim, other, key, lambda: self._stored(account, key, not_before), self.clock
        )

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

        shown = False
        events = self.events(account, store=True, before_wait=before_wait)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
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
