"""Replicas waiting for another replica's device flow are woken when its token lands.

A "replica" here is a second client of the same store (for Redis, a second RedisStore on its own
connection) that holds the account's device-flow claim, as a replica running the flow does,
then stores the token and ends its claim. The polls are set to an hour unless a test is about
them, so a waiter that returns was woken.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

import deviceflow._waiting
from _redis import RedisProcess, open_redis_store, redis_factory
from deviceflow import AccessDeniedError, DeviceCode, DeviceFlowClient, Token
from deviceflow._claim import FlowClaim
from deviceflow.exceptions import StoreError
from deviceflow.stores import KeyWatch, Lease, MemoryStore, TokenStore, Versioned, generate_key
from deviceflow.stores._watch import LocalWatch
from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import eventually, issued_token, make_client, time_factor

__all__ = ["redis_factory"]

HOUR = 3600.0


@pytest.fixture(autouse=True)
def no_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deviceflow._waiting, "CLAIM_POLL", HOUR)
    monkeypatch.setattr(deviceflow._waiting, "SAFETY_POLL", HOUR)


class Counting:
    """A store that counts the calls made through it and passes them on (no watches: a store
    that cannot report changes, as the file store)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def get(self, key: str) -> Versioned | None:
        self.calls["get"] += 1
        result: Versioned | None = await self.inner.get(key)
        return result

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None, ttl: float | None = None
    ) -> int:
        self.calls["put"] += 1
        version: int = await self.inner.put(key, value, expected_version=expected_version, ttl=ttl)
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        self.calls["delete"] += 1
        done: bool = await self.inner.delete(key, expected_version=expected_version)
        return done

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]:
        self.calls["lock"] += 1
        lock: AbstractAsyncContextManager[Lease] = self.inner.lock(key, ttl=ttl, wait=wait)
        return lock

    async def aclose(self) -> None:
        await self.inner.aclose()


class Watching(Counting):
    """Counting, with the watches of the store it passes calls on to."""

    @asynccontextmanager
    async def watch(self, keys: Collection[str]) -> AsyncIterator[KeyWatch]:
        async with self.inner.watch(keys) as watch:
            self.calls["watch"] += 1
            yield watch


class Silent(Counting):
    """A store whose reports of changes are all lost, though it says they are coming."""

    @asynccontextmanager
    async def watch(self, keys: Collection[str]) -> AsyncIterator[KeyWatch]:
        self.calls["watch"] += 1
        yield _Deaf()


class _Deaf:
    live = True

    async def changed(self, timeout: float) -> frozenset[str]:
        await asyncio.sleep(timeout)
        return frozenset()


class Flaky(Watching):
    """Watching, with reads that fail while ``failing`` is above zero (one per read), as reads
    on a stale pooled connection fail after a Redis restart."""

    failing = 0

    async def get(self, key: str) -> Versioned | None:
        if self.failing:
            self.failing -= 1
            self.calls["failed get"] += 1
            raise StoreError("Redis failed (get): ConnectionError: Connection closed by server.")
        return await super().get(key)


class Replica:
    """Another process's side: it holds the account's claim, then stores the token."""

    def __init__(self, server: AuthorizationServer, store: TokenStore, clock: Any) -> None:
        self.server = server
        self.client = make_client(server, client_id="bot", store=store, clock=clock)
        self.store = store
        self.clock = clock
        self.claims: dict[str, FlowClaim] = {}

    async def claim(self, account: str) -> None:
        key = self.client.store_key(account) + "//device-flow"
        claim = self.claims[account] = FlowClaim(self.store, key, self.clock)
        assert None is await claim.take()

    async def land(self, account: str) -> Token:
        token = issued_token(self.server, "bot")
        await self.client.save_token(account, token)
        await self.claims.pop(account).end(None)
        return token


def waiter(server: AuthorizationServer, store: TokenStore, clock: Any) -> DeviceFlowClient:
    def on_code(code: DeviceCode, account: str) -> None:
        raise AssertionError("the waiting replica ran a device flow of its own")

    return make_client(server, client_id="bot", store=store, clock=clock, on_code=on_code)


@asynccontextmanager
async def redis_pair(server: RedisProcess) -> AsyncIterator[tuple[TokenStore, TokenStore]]:
    key = generate_key()
    async with (
        open_redis_store(server, key=key, prefix="wake:") as ours,
        open_redis_store(server, key=key, prefix="wake:") as theirs,
    ):
        yield ours, theirs


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def stores(request: pytest.FixtureRequest) -> Iterator[Any]:
    """(waiter's store, replica's store): one MemoryStore, or two clients of one Redis."""
    if request.param == "memory":

        @asynccontextmanager
        async def memory() -> AsyncIterator[tuple[TokenStore, TokenStore]]:
            store = MemoryStore()
            yield store, store

        yield memory
    else:
        server = request.getfixturevalue("redis_server")
        yield lambda: redis_pair(server)


async def test_a_waiter_is_woken_when_the_token_lands(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock, stores: Any
) -> None:
    """The replica stores the token: the waiting client returns it, without any poll."""
    async with stores() as (ours, theirs):
        replica = Replica(authorization_server, theirs, virtual_clock)
        await replica.claim("ops")
        counting = Watching(ours)
        client = waiter(authorization_server, counting, virtual_clock)
        waiting = asyncio.ensure_future(client.get_token("ops"))
        await eventually(lambda: counting.calls["watch"])
        token = await replica.land("ops")
        assert token == await asyncio.wait_for(waiting, 10 * time_factor())
        await client.aclose()
        await replica.client.aclose()


async def test_waiting_costs_no_reads(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
    stores: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parked on a store that reports changes, a waiter reads nothing until something changes
    (a poll, were it polling, would read every 10 ms here); then it reads what changed: the
    token, and the claim if it hears of that too."""
    monkeypatch.setattr(deviceflow._waiting, "CLAIM_POLL", 0.01)
    async with stores() as (ours, theirs):
        replica = Replica(authorization_server, theirs, virtual_clock)
        await replica.claim("ops")
        counting = Watching(ours)
        client = waiter(authorization_server, counting, virtual_clock)
        waiting = asyncio.ensure_future(client.get_token("ops"))
        await eventually(lambda: counting.calls["watch"])
        await asyncio.sleep(0.1)  # its reads right after entering the watch
        parked = counting.calls["get"]
        await asyncio.sleep(0.5)
        assert parked == counting.calls["get"]
        token = await replica.land("ops")
        assert token == await asyncio.wait_for(waiting, 10 * time_factor())
        assert counting.calls["get"] - parked in (1, 2)
        await client.aclose()
        await replica.client.aclose()


#: Waiters parked at once to count their objects: enough that what a client or a store makes
#: once (a connection, a subscription) rounds to nothing per waiter.
PARKED = 300
#: Objects the garbage collector tracks, per parked get_token() with its caller's task: two
#: tasks, six coroutines, two futures, a timer, a watch, the claims read (35 to 40 on CPython
#: 3.11, with what happens to be in flight when it is counted: callbacks, the Redis client's
#: buffers; 61 and 77 when every watch had an asyncio.Event, a cancel scope and four
#: generators). The bound leaves room for that noise, not for a regression.
OBJECTS_PER_WAITER = 48


def _census() -> Counter[str]:
    """The objects the garbage collector tracks, by type (frames aside: before Python 3.11
    each coroutine had its frame as an object of its own)."""
    gc.collect()
    return Counter(
        name for name in (type(o).__qualname__ for o in gc.get_objects()) if name != "frame"
    )


def _parked(task: asyncio.Task[Any]) -> bool:
    """True when ``task`` waits in a watch's changed(), found through ``cr_await`` (which,
    unlike ``task.get_stack()``, makes no frame objects)."""
    awaited: Any = task.get_coro()
    while inspect.iscoroutine(awaited):
        if awaited.cr_code is LocalWatch.changed.__code__:
            return awaited.cr_await is not None
        awaited = awaited.cr_await
    return False


async def test_a_parked_waiter_costs_a_few_objects(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock, stores: Any
) -> None:
    """A parked get_token() holds a few dozen objects, none of them a generator, an
    asyncio.Event (its deque of waiters), a cancel scope or a set per key; all still wake."""
    async with stores() as (ours, theirs):
        replica = Replica(authorization_server, theirs, virtual_clock)
        client = waiter(authorization_server, ours, virtual_clock)
        accounts = [f"tenant-{n}" for n in range(2 * PARKED)]
        for account in accounts:
            await replica.claim(account)

        def parked() -> int:
            return sum(_parked(task) for task in asyncio.all_tasks())

        # As many parked first: what the client and the store make once (a connection pool
        # grown by the burst, the subscription) is in the baseline.
        tasks = [asyncio.ensure_future(client.get_token(a)) for a in accounts[:PARKED]]
        await eventually(lambda: PARKED == parked(), within=60)
        before = _census()
        tasks += [asyncio.ensure_future(client.get_token(a)) for a in accounts[PARKED:]]
        await eventually(lambda: 2 * PARKED == parked(), within=60)
        after = _census()
        grown = {name: (after[name] - before[name]) / PARKED for name in after}
        heavy = ("async_generator", "generator", "Event", "deque", "CancelScope")
        # None per waiter (a few made once, by the store's connections, round to nothing).
        assert dict.fromkeys(heavy, 0) == {name: int(grown.get(name, 0)) for name in heavy}
        assert 6 >= int(grown["coroutine"])  # a fraction is what was in flight
        assert OBJECTS_PER_WAITER >= sum(grown.values())
        landed = {account: await replica.land(account) for account in accounts}
        tokens = await asyncio.wait_for(asyncio.gather(*tasks), 30 * time_factor())
        assert list(landed.values()) == tokens
        await client.aclose()
        await replica.client.aclose()


async def test_a_failed_flow_wakes_its_waiters_with_its_error(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock, stores: Any
) -> None:
    """The replica's flow fails: the waiter is woken and raises the same error."""
    async with stores() as (ours, theirs):
        replica = Replica(authorization_server, theirs, virtual_clock)
        await replica.claim("ops")
        counting = Watching(ours)
        client = waiter(authorization_server, counting, virtual_clock)
        waiting = asyncio.ensure_future(client.get_token("ops"))
        await eventually(lambda: counting.calls["watch"])
        await replica.claims.pop("ops").end(AccessDeniedError("access_denied", "no"))
        with pytest.raises(AccessDeniedError):
            await asyncio.wait_for(waiting, 10 * time_factor())
        await client.aclose()
        await replica.client.aclose()


async def test_a_claim_renewed_keeps_its_waiter_waiting(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock, stores: Any
) -> None:
    """The replica renews its claim: the waiter reads the claim once and waits on."""
    async with stores() as (ours, theirs):
        replica = Replica(authorization_server, theirs, virtual_clock)
        await replica.claim("ops")
        counting = Watching(ours)
        client = waiter(authorization_server, counting, virtual_clock)
        waiting = asyncio.ensure_future(client.get_token("ops"))
        await eventually(lambda: counting.calls["watch"])
        await asyncio.sleep(0.1)
        parked = counting.calls["get"]
        await replica.claims["ops"].renew(HOUR)
        await eventually(lambda: counting.calls["get"] == parked + 1)
        assert not waiting.done()
        token = await replica.land("ops")
        assert token == await asyncio.wait_for(waiting, 10 * time_factor())
        await client.aclose()
        await replica.client.aclose()


async def test_a_failed_read_is_retried_without_waiting_for_a_poll(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """The read that a report causes fails (Redis restarted under it): the waiter reads again
    soon, though it polls only hourly, and returns the token whose report that read used up."""
    store = MemoryStore()
    replica = Replica(authorization_server, store, virtual_clock)
    await replica.claim("ops")
    flaky = Flaky(store)
    client = waiter(authorization_server, flaky, virtual_clock)
    waiting = asyncio.ensure_future(client.get_token("ops"))
    await eventually(lambda: flaky.calls["watch"])
    await asyncio.sleep(0.1)  # its reads right after entering the watch
    flaky.failing = 1
    token = await replica.land("ops")
    assert token == await asyncio.wait_for(waiting, 10 * time_factor())
    assert 1 == flaky.calls["failed get"]
    await client.aclose()
    await replica.client.aclose()


async def test_a_claim_gone_without_a_token_is_taken_over(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """The replica drops its claim without a token (it was stopped): the waiter is woken and
    runs the flow itself."""
    store = MemoryStore()
    replica = Replica(authorization_server, store, virtual_clock)
    await replica.claim("ops")
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        authorization_server.approve(code.user_code)

    counting = Watching(store)
    client = make_client(
        authorization_server, client_id="bot", store=counting, clock=virtual_clock, on_code=on_code
    )
    waiting = asyncio.ensure_future(client.get_token("ops"))
    await eventually(lambda: counting.calls["watch"])
    await replica.claims.pop("ops").end(RuntimeError("stopped"))
    token = await asyncio.wait_for(waiting, 10 * time_factor())
    assert authorization_server.is_valid_access_token(token.access_token)
    assert 1 == len(shown)
    await client.aclose()
    await replica.client.aclose()


async def test_a_lost_report_is_picked_up_by_the_safety_poll(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every report lost (the store says it reports, and never does): the waiter still finds the
    token at its next safety poll."""
    monkeypatch.setattr(deviceflow._waiting, "SAFETY_POLL", 0.2)
    store = MemoryStore()
    replica = Replica(authorization_server, store, virtual_clock)
    await replica.claim("ops")
    silent = Silent(store)
    client = waiter(authorization_server, silent, virtual_clock)
    waiting = asyncio.ensure_future(client.get_token("ops"))
    await eventually(lambda: silent.calls["watch"])
    token = await replica.land("ops")
    assert token == await asyncio.wait_for(waiting, 10 * time_factor())
    await client.aclose()
    await replica.client.aclose()


async def test_a_store_that_cannot_report_is_polled(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store without watches (the file store's way) is read every CLAIM_POLL seconds."""
    monkeypatch.setattr(deviceflow._waiting, "CLAIM_POLL", 0.02)

    store = MemoryStore()
    replica = Replica(authorization_server, store, virtual_clock)
    await replica.claim("ops")
    plain = Counting(store)
    client = waiter(authorization_server, plain, virtual_clock)
    waiting = asyncio.ensure_future(client.get_token("ops"))
    await eventually(lambda: plain.calls["get"] > 10)  # polling
    token = await replica.land("ops")
    assert token == await asyncio.wait_for(waiting, 10 * time_factor())
    await client.aclose()
    await replica.client.aclose()


@pytest.mark.redis
async def test_waiters_hear_again_after_a_redis_restart(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
    redis_factory: Any,
) -> None:
    """Redis killed and restarted (its data kept on disk) while a replica waits: the waiter's
    subscription comes back by itself and the token's landing wakes it."""
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    raw = Redis.from_url(server.url)
    try:
        async with redis_pair(server) as (ours, theirs):
            replica = Replica(authorization_server, theirs, virtual_clock)
            await replica.claim("ops")
            counting = Watching(ours)
            client = waiter(authorization_server, counting, virtual_clock)
            waiting = asyncio.ensure_future(client.get_token("ops"))
            await eventually(lambda: counting.calls["watch"])
            server.kill()
            server.start()
            await eventually(lambda: _subscribed(raw, 3), within=30)  # two keys and the store's
            token = await replica.land("ops")
            # A pooled connection that Redis closed fails once; the write is then retried in
            # the background (durability rule 3), with back-off: give it the same 30 s.
            assert token == await asyncio.wait_for(waiting, 30 * time_factor())
            await client.aclose()
            await replica.client.aclose()
    finally:
        await raw.aclose()


async def _subscribed(raw: Redis, channels: int) -> bool:
    try:
        return channels == len(await raw.pubsub_channels("wake:*"))
    except RedisError:
        return False
