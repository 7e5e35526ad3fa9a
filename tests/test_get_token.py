"""get_token() at scale, and the aiohttp BearerAuth middleware."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from yarl import URL

import deviceflow._clock as clock_module
from deviceflow import (
    AiohttpTransport,
    ClientAuth,
    DeviceFlowClient,
    ProtocolError,
    Provider,
    RequestKind,
    StoreError,
    SystemClock,
    Token,
)
from deviceflow.aiohttp import BearerAuth
from deviceflow.stores import Lease, MemoryStore, Versioned
from deviceflow.testing import AuthorizationServer, Fault, ScriptedTransport, VirtualClock
from helpers import make_client, seed, stored_token, time_factor

pytestmark = pytest.mark.authorization_server(access_token_lifetime=300)


async def revoke(server: AuthorizationServer, token: str, client_id: str = "svc") -> None:
    """Revoke one token through the server's RFC 7009 endpoint."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.revocation_endpoint, data={"token": token, "client_id": client_id}
        ) as response,
    ):
        assert 200 == response.status


async def test_10000_callers_over_1000_expired_accounts_make_1000_refreshes(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """10,000 concurrent get_token calls on 1,000 expired accounts: exactly 1,000 refreshes."""
    async with make_client(authorization_server) as client:
        accounts = [f"tenant-{i}" for i in range(1000)]
        for account in accounts:
            await seed(client, authorization_server, account)
        virtual_clock.advance(400)
        tokens = await asyncio.gather(*(client.get_token(a) for a in accounts * 10))
    assert 1000 == authorization_server.stats.refreshes
    assert 0 == authorization_server.stats.invalid_grants
    assert 1000 == len({t.access_token for t in tokens})
    assert all(authorization_server.is_valid_access_token(t.access_token) for t in tokens)


async def test_one_account_failing_leaves_the_others_alone(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """A revoked grant on one account fails that account only; errors reach all its waiters."""
    async with make_client(authorization_server) as client:
        good = await seed(client, authorization_server, "good")
        bad = await seed(client, authorization_server, "bad")
        del good
        await revoke(authorization_server, bad.refresh_token or "")
        virtual_clock.advance(400)
        results = await asyncio.gather(
            *(client.get_token(a) for a in ["good", "bad"] * 5), return_exceptions=True
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    tokens = [r for r in results if isinstance(r, Token)]
    assert 5 == len(errors)
    assert 5 == len(tokens)
    assert all(type(e).__name__ == "ReauthorizationRequiredError" for e in errors)


async def test_bearer_auth_adds_header_and_retries_once_on_invalid_token(
    authorization_server: AuthorizationServer,
) -> None:
    """BearerAuth sends the token; on 401 invalid_token it refreshes once and retries once."""
    async with make_client(authorization_server) as client:
        first = await seed(client, authorization_server, "api")
        auth = BearerAuth(client, "api", hosts={"127.0.0.1"})
        async with aiohttp.ClientSession(middlewares=(auth,)) as session:
            async with session.get(authorization_server.resource_url) as response:
                assert 200 == response.status
            await revoke(authorization_server, first.access_token)
            async with session.get(authorization_server.resource_url) as response:
                assert 200 == response.status
        assert 1 == authorization_server.stats.refreshes
        assert first.access_token != (await client.get_token("api")).access_token


async def test_bearer_auth_concurrent_rejections_share_one_refresh(
    authorization_server: AuthorizationServer,
) -> None:
    """Ten requests rejected with the same stale token cause one refresh, not ten."""
    async with make_client(authorization_server) as client:
        first = await seed(client, authorization_server, "api")
        await revoke(authorization_server, first.access_token)
        auth = BearerAuth(client, "api")
        async with aiohttp.ClientSession(middlewares=(auth,)) as session:

            async def call() -> int:
                async with session.get(authorization_server.resource_url) as response:
                    return response.status

            statuses = await asyncio.gather(*(call() for _ in range(10)))
    assert [200] * 10 == statuses
    assert 1 == authorization_server.stats.refreshes


async def test_bearer_auth_skips_other_hosts(
    authorization_server: AuthorizationServer,
) -> None:
    """With ``hosts``, requests to any other host never carry the token."""
    async with make_client(authorization_server) as client:
        await seed(client, authorization_server, "api")
        auth = BearerAuth(client, "api", hosts={"api.example.com"})
        async with (
            aiohttp.ClientSession(middlewares=(auth,)) as session,
            session.get(authorization_server.resource_url) as response,
        ):
            assert 401 == response.status
    assert "Authorization" not in authorization_server.requests[-1].headers


async def test_bearer_auth_does_not_retry_other_401s(
    authorization_server: AuthorizationServer,
) -> None:
    """A 401 without error="invalid_token" is returned as is, with no refresh."""
    async with make_client(authorization_server) as client:
        await seed(client, authorization_server, "api")
        authorization_server.faults.add(Fault(endpoint="resource", status=401, times=1))
        async with (
            aiohttp.ClientSession(middlewares=(BearerAuth(client, "api"),)) as session,
            session.get(authorization_server.resource_url) as response,
        ):
            assert 401 == response.status
    assert 0 == authorization_server.stats.refreshes


def hold_answers() -> ScriptedTransport:
    """A transport that sends for real, then holds token answers until released."""
    transport = ScriptedTransport(fallback=AiohttpTransport(auth=ClientAuth(client_id="svc")))
    transport.hold(RequestKind.TOKEN)
    return transport


async def refresh_on_the_wire(
    server: AuthorizationServer, clock: VirtualClock
) -> tuple[DeviceFlowClient, MemoryStore, ScriptedTransport, asyncio.Future[Token]]:
    """A client whose refresh of account "a" has reached the server; its answer is held."""
    store = MemoryStore()
    async with make_client(server, store=store) as seeding:
        await seed(seeding, server, "a")
    clock.advance(400)
    transport = hold_answers()
    client = make_client(server, store=store, transport=transport)
    waiter = asyncio.ensure_future(client.get_token("a"))
    # The server has rotated the refresh token by now.
    await transport.wait_held(timeout=10 * time_factor())
    return client, store, transport, waiter


async def test_refresh_cancelled_after_sending_still_stores_rotated_token(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """Closing the client mid-refresh lets the refresh finish and store the rotated token."""
    client, store, transport, waiter = await refresh_on_the_wire(
        authorization_server, virtual_clock
    )
    closing = asyncio.ensure_future(client.aclose())
    await asyncio.sleep(0.01 * time_factor())  # aclose() has begun and waits for the refresh
    transport.release()
    await closing
    refreshed = await waiter  # the refresh on the wire was not cut off
    assert authorization_server.is_valid_access_token(refreshed.access_token)
    assert refreshed == await stored_token(client, "a")  # stored before aclose() returned
    async with make_client(authorization_server, store=store) as again:
        virtual_clock.advance(400)
        token = await again.get_token("a")
    assert authorization_server.is_valid_access_token(token.access_token)
    assert 0 == authorization_server.stats.invalid_grants
    assert 2 == authorization_server.stats.refreshes


class FailingPuts(MemoryStore):
    """A MemoryStore whose next ``failures`` writes fail, as a full disk or a Redis blip would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None, ttl: float | None = None
    ) -> int:
        if self.failures:
            self.failures -= 1
            raise StoreError("simulated write failure")
        return await super().put(key, value, expected_version=expected_version, ttl=ttl)


async def test_refreshed_token_survives_a_failed_write(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """A store write failing after a refresh never makes the client reuse the old token."""
    store = FailingPuts()
    async with make_client(authorization_server, store=store) as client:
        await seed(client, authorization_server, "a")
        virtual_clock.advance(400)
        store.failures = 6  # the write and its five quick retries under the lock
        first = await client.get_token("a")  # the write failed: served from memory, unsaved
        assert authorization_server.is_valid_access_token(first.access_token)
        assert {"a"} == client.unsaved_accounts()
        assert first is await client.get_token("a")
        virtual_clock.advance(400)
        second = await client.get_token("a")  # stores the pending answer, then refreshes it
    assert authorization_server.is_valid_access_token(second.access_token)
    assert 0 == authorization_server.stats.invalid_grants
    assert 2 == authorization_server.stats.refreshes


async def test_forced_refresh_keeps_a_valid_token_without_refresh_token(
    authorization_server: AuthorizationServer,
) -> None:
    """refresh() on a valid token that has no refresh token keeps it (nothing is deleted)."""
    async with make_client(authorization_server) as client:
        token = Token(access_token="opaque")  # no expiry, no refresh token
        await client.save_token("a", token)
        assert token == await client.refresh("a")
        assert None is not await client.store.get(client.store_key("a"))


async def test_unusable_refresh_token_lifetime_is_ignored(
    authorization_server: AuthorizationServer,
) -> None:
    """A refresh_token_expires_in of Infinity or true never becomes a store ttl error."""
    async with make_client(authorization_server) as client:
        for odd in (float("inf"), True, "soon", -5):
            token = Token(
                access_token="x", refresh_token="y", extra={"refresh_token_expires_in": odd}
            )
            await client.save_token("a", token)
        assert token == await client.get_token("a")


async def test_bearer_auth_never_sends_the_token_in_cleartext(
    authorization_server: AuthorizationServer,
) -> None:
    """A plain-http request to a listed (non-loopback) host never carries the token."""
    async with make_client(authorization_server) as client:
        await seed(client, authorization_server, "api")
        seen: list[str | None] = []

        async def capture(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
            seen.append(request.headers.get("Authorization"))
            raise aiohttp.ClientConnectionError("not sent")

        auth = BearerAuth(client, "api", hosts={"api.example.com"})
        request = aiohttp.ClientRequest(
            "GET", URL("http://api.example.com/me"), loop=asyncio.get_running_loop()
        )
        with pytest.raises(aiohttp.ClientConnectionError):
            await auth(request, capture)
    assert [None] == seen


# --- the flight's edges (found in review; each failed before its fix) ------------------------


async def test_aclose_cancelled_mid_refresh_still_stores_rotated_token(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """aclose() cancelled by a shutdown timeout still lets the refresh on the wire be stored."""
    client, store, transport, waiter = await refresh_on_the_wire(
        authorization_server, virtual_clock
    )
    closing = asyncio.ensure_future(client.aclose())
    await asyncio.sleep(0.01 * time_factor())  # aclose() has begun and waits for the refresh
    closing.cancel()  # the shutdown's own timeout
    await asyncio.sleep(0.01 * time_factor())
    transport.release()
    with pytest.raises(asyncio.CancelledError):
        await closing  # cancelled, but only once the refresh was stored
    assert authorization_server.is_valid_access_token((await waiter).access_token)
    async with make_client(authorization_server, store=store) as again:
        assert authorization_server.is_valid_access_token((await again.get_token("a")).access_token)
    assert 0 == authorization_server.stats.invalid_grants


async def test_aclose_before_the_flight_starts_ends_its_callers(
    authorization_server: AuthorizationServer,
) -> None:
    """A flight cancelled before its first step still gives its callers an outcome."""
    client = make_client(authorization_server)
    caller = asyncio.ensure_future(client.get_token("a"))
    await asyncio.sleep(0)  # the caller has made the flight; the flight has not run yet
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(caller, 5 * time_factor())


class Abort(BaseException):
    """A callback's own control-flow exception (not an Exception)."""


async def test_a_callback_base_exception_reaches_callers_and_ends_the_flight(
    authorization_server: AuthorizationServer,
) -> None:
    """on_code raising a BaseException: its callers get it, and the next call does not hang."""
    shown: list[object] = []

    def on_code(code: object, account: str) -> None:
        shown.append(code)
        raise Abort("gave up")

    async with make_client(authorization_server, on_code=on_code) as client:
        for _ in range(2):
            with pytest.raises(Abort):
                await asyncio.wait_for(client.get_token("a"), 5 * time_factor())
    # Each call ran a flight of its own to the callback: the first one had ended.
    assert 2 == len(shown)
    assert 2 == authorization_server.stats.device_authorizations


def eager_task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
    """asyncio.eager_task_factory (3.12+), or on 3.11 the same: run until the first suspension."""
    factory = getattr(asyncio, "eager_task_factory", None)
    if factory is not None:
        return factory(loop, coro, **kwargs)
    try:
        first = coro.send(None)
    except StopIteration as stop:
        done = loop.create_future()
        done.set_result(stop.value)
        return done

    @types.coroutine
    def resume() -> Any:
        yielded, result = first, None
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:
                method, arg = coro.throw, exc
            else:
                method, arg = coro.send, sent
            try:
                yielded = method(arg)
            except StopIteration as stop:
                result = stop.value
                return result

    async def rest() -> Any:
        return await resume()

    return asyncio.Task(rest(), loop=loop, **kwargs)


async def test_callers_get_a_flight_that_ends_without_suspending() -> None:
    """Under an eager task factory a flight can end inside create_task: its caller still gets
    the token (the waiter is registered before the flight starts)."""
    asyncio.get_running_loop().set_task_factory(eager_task_factory)
    try:
        provider = Provider(issuer="https://idp.test", token_endpoint="https://idp.test/token")
        store = MemoryStore()
        token = Token(access_token="at", expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
        async with DeviceFlowClient(provider, client_id="svc", store=store) as one:
            await one.save_token("a", token)
        async with DeviceFlowClient(provider, client_id="svc", store=store) as two:
            assert token == await asyncio.wait_for(two.get_token("a"), 5 * time_factor())
    finally:
        asyncio.get_running_loop().set_task_factory(None)


def live_futures() -> int:
    """How many futures that are not tasks (a caller's waiter is one) are alive."""
    gc.collect()
    return sum(type(thing) is asyncio.Future for thing in gc.get_objects())


async def test_callers_that_time_out_leave_no_waiter_behind(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """Callers timing out during a long flight do not pile up in it."""
    transport = hold_answers()
    async with make_client(authorization_server, transport=transport) as client:
        await seed(client, authorization_server, "a")
        virtual_clock.advance(400)
        try:
            with pytest.raises(TimeoutError):  # the first caller starts the flight
                await client.get_token("a", timeout=0.001)
            before = live_futures()
            for _ in range(50):
                with pytest.raises(TimeoutError):
                    await client.get_token("a", timeout=0.001)
            # Each caller waits on a future of its own; were the flight to keep those of callers
            # that left, 50 more would be alive now.
            assert live_futures() - before < 50
        finally:
            transport.release()  # else aclose() would wait for ever on the held refresh
        token = await client.get_token("a")
        assert authorization_server.is_valid_access_token(token.access_token)


class LogoutLoginFirst(MemoryStore):
    """Another process logs out and signs in again just before the next lock is granted."""

    def __init__(self) -> None:
        super().__init__()
        self.race: Callable[[], Awaitable[None]] | None = None

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]:
        inner, race = super().lock(key, ttl=ttl, wait=wait), self.race
        self.race = None

        @contextlib.asynccontextmanager
        async def locked() -> AsyncIterator[Lease]:
            if race is not None:
                await race()
            async with inner as lease:
                yield lease

        return locked()


async def test_a_record_replaced_at_the_same_version_is_read_again(
    virtual_clock: VirtualClock,
) -> None:
    """Logout and a new sign-in elsewhere bring the record back to the version read before the
    lock: the client takes the new record, never its stale cached token."""
    provider = Provider(issuer="https://idp.test", token_endpoint="https://idp.test/token")
    store = LogoutLoginFirst()
    old = Token(access_token="OLD", expires_at=virtual_clock.wall() + timedelta(seconds=600))
    new = Token(
        access_token="NEW", refresh_token="RT", expires_at=virtual_clock.wall() + timedelta(hours=2)
    )

    async def logout_login() -> None:
        async with DeviceFlowClient(
            provider, client_id="svc", clock=virtual_clock, store=store
        ) as other:
            await other.logout("a")
            await other.save_token("a", new)

    async with DeviceFlowClient(
        provider, client_id="svc", clock=virtual_clock, store=store
    ) as client:
        await client.save_token("a", old)
        virtual_clock.advance(550)  # OLD is due (no refresh token), usable until 599 s
        store.race = logout_login
        assert "OLD" == (await client.get_token("a")).access_token  # still usable: returned
        await asyncio.sleep(
            0.01 * time_factor()
        )  # the background flight reads NEW at OLD's version
        virtual_clock.advance(60)  # OLD has expired
        assert "NEW" == (await client.get_token("a")).access_token
        current = await stored_token(client, "a")
        assert current is not None
        assert "NEW" == current.access_token


class BytearrayStore(MemoryStore):
    """A third-party store that hands back bytearrays."""

    async def get(self, key: str) -> Versioned | None:
        current = await super().get(key)
        if current is None:
            return None
        return Versioned(bytearray(current.value), current.version)  # type: ignore[arg-type]


async def test_a_store_returning_bytearrays_works(virtual_clock: VirtualClock) -> None:
    """Record values that are bytearrays, not bytes, are read like bytes."""
    provider = Provider(issuer="https://idp.test", token_endpoint="https://idp.test/token")
    token = Token(access_token="at", expires_at=virtual_clock.wall() + timedelta(hours=1))
    store = BytearrayStore()
    async with DeviceFlowClient(provider, client_id="svc", clock=virtual_clock, store=store) as a:
        await a.save_token("a", token)
    async with DeviceFlowClient(provider, client_id="svc", clock=virtual_clock, store=store) as b:
        assert token == await b.get_token("a")


@pytest.mark.skipif(
    clock_module._MONOTONIC_ID is None,
    reason="this platform's time.monotonic() already counts the time the machine sleeps",
)
@pytest.mark.authorization_server(clock=SystemClock(), access_token_lifetime=300)
async def test_a_machine_that_slept_past_the_expiry_is_not_handed_the_dead_token(
    authorization_server: AuthorizationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """time.monotonic() stops while a Linux or macOS machine sleeps, but tokens expire all the
    same: the real clock's monotonic time must count the sleep, or a laptop that slept through
    a token's expiry gets the dead token from the cache for as long again as it slept."""
    slept = 0.0
    real_gettime = time.clock_gettime

    def gettime(clock_id: int) -> float:
        return real_gettime(clock_id) + (slept if clock_id == clock_module._MONOTONIC_ID else 0.0)

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + timedelta(seconds=slept)

    monkeypatch.setattr(time, "clock_gettime", gettime)
    monkeypatch.setattr(clock_module, "datetime", Later)
    async with make_client(authorization_server, clock=SystemClock()) as client:
        first = await seed(client, authorization_server)
        assert first.access_token == (await client.get_token()).access_token  # cached
        slept = 3600.0  # time.monotonic() does not move: the machine was suspended
        after = await client.get_token()
    assert after.access_token != first.access_token
    assert after.expires_at is not None
    assert after.expires_at > datetime.now(timezone.utc) + timedelta(seconds=slept)
    assert authorization_server.is_valid_access_token(after.access_token)
    assert 1 == authorization_server.stats.refreshes


async def test_save_token_refuses_a_token_of_a_type_no_client_can_use(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 6749 7.1: a token of a type the client does not understand is not used, whoever hands
    it over; save_token says so and stores nothing."""
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    async with make_client(authorization_server) as client:
        with pytest.raises(ProtocolError, match=r"'imported'.*'N_A'.*not stored"):
            await client.save_token(
                "imported", Token(access_token="abc", token_type="N_A", expires_at=expires)
            )
        assert await stored_token(client, "imported") is None


async def test_save_token_refuses_a_token_its_store_could_not_hold(
    authorization_server: AuthorizationServer,
) -> None:
    """A MemoryStore keeps a record unrendered, but a token whose record cannot be written (an
    ``extra`` value JSON cannot hold) is refused at save_token, as by every other store: nothing
    stored, and the account can still be signed out."""
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    token = Token(access_token="abc", expires_at=expires, extra={"when": expires})
    async with make_client(authorization_server) as client:
        with pytest.raises(TypeError, match=r"'imported'.*cannot be stored"):
            await client.save_token("imported", token)
        assert await stored_token(client, "imported") is None
        assert not await client.logout("imported")
