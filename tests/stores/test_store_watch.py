"""Watches of keys (WatchableStore): MemoryStore in-process, RedisStore through pub/sub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from redis.asyncio import Redis

import deviceflow.stores._redis_watch
from _redis import RedisClusterProcess, RedisProcess, open_redis_store
from deviceflow.stores import (
    EncryptedFileStore,
    KeyWatch,
    MemoryStore,
    RedisStore,
    TokenStore,
    WatchableStore,
    generate_key,
)
from helpers import eventually, time_factor

RedisFactory = Callable[..., RedisProcess]

#: A wait for a report that should come at once (real seconds): generous for a loaded machine.
SOON = 10.0


def live(watch: KeyWatch) -> bool:
    """``watch.live``, read afresh (it changes while a test waits)."""
    return watch.live


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
    ]
)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[TokenStore, TokenStore]]:
    """Two clients of one store: the watcher and a writer (another replica, for Redis)."""
    if request.param == "memory":
        store = MemoryStore()
        yield store, store
        return
    server: RedisProcess | RedisClusterProcess = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    key = generate_key()
    async with (
        open_redis_store(server, key=key, prefix="watch:") as watcher,
        open_redis_store(server, key=key, prefix="watch:") as writer,
    ):
        yield watcher, writer


async def test_puts_and_deletes_are_reported(pair: tuple[TokenStore, TokenStore]) -> None:
    """A put and a delete by another client wake the watch with the key; others stay quiet."""
    watcher, writer = pair
    assert isinstance(watcher, WatchableStore)
    async with watcher.watch(["a", "b"]) as watch:
        assert watch.live
        assert frozenset() == await watch.changed(0)
        await writer.put("a", b"1", expected_version=None)
        assert {"a"} == await watch.changed(SOON * time_factor())
        await writer.put("unwatched", b"1", expected_version=None)
        await writer.delete("a")
        assert {"a"} == await watch.changed(SOON * time_factor())
        await writer.put("b", b"1", expected_version=None)
        await writer.put("a", b"2", expected_version=None)
        seen: set[str] = set()
        with anyio.move_on_after(SOON * time_factor()):
            while seen != {"a", "b"}:
                seen |= await watch.changed(SOON * time_factor())
        assert {"a", "b"} == seen
    async with watcher.watch(["b"]) as watch:
        await writer.put("b", b"2", expected_version=1)
        assert {"b"} == await watch.changed(SOON * time_factor())


async def test_two_watches_of_one_key_are_both_told(pair: tuple[TokenStore, TokenStore]) -> None:
    """Two waiters of one key in one process both hear of its change; one leaving keeps the
    other's subscription."""
    watcher, writer = pair
    assert isinstance(watcher, WatchableStore)
    async with (
        watcher.watch(["k"]) as first,
        watcher.watch(["k"]) as second,
    ):
        await writer.put("k", b"1", expected_version=None)
        assert {"k"} == await first.changed(SOON * time_factor())
        assert {"k"} == await second.changed(SOON * time_factor())
        await writer.put("k", b"2", expected_version=1)
        assert {"k"} == await first.changed(SOON * time_factor())


async def test_a_burst_of_watches_is_subscribed(pair: tuple[TokenStore, TokenStore]) -> None:
    """Many watches entered at once (more than one SUBSCRIBE's worth) all hear their key."""
    watcher, writer = pair
    assert isinstance(watcher, WatchableStore)
    keys = [f"k{n}" for n in range(2500)]
    heard: dict[str, frozenset[str]] = {}
    parked = asyncio.Event()
    entered = 0

    async def wait(key: str) -> None:
        nonlocal entered
        async with watcher.watch([key]) as watch:
            entered += 1
            if entered == len(keys):
                parked.set()
            heard[key] = await watch.changed(60 * time_factor())

    tasks = [asyncio.ensure_future(wait(key)) for key in keys]
    await asyncio.wait_for(parked.wait(), 60 * time_factor())
    for key in keys:
        await writer.put(key, b"1", expected_version=None)
    await asyncio.gather(*tasks)
    assert {key: frozenset([key]) for key in keys} == heard


async def test_a_cancelled_wait_leaves_the_watch_as_it_was() -> None:
    """changed() cancelled while it waits: the watch still reports, to the next call."""
    store = MemoryStore()
    async with store.watch(["k"]) as watch:
        waiting = asyncio.ensure_future(watch.changed(SOON * time_factor()))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await store.put("k", b"1", expected_version=None)
        assert {"k"} == await watch.changed(SOON * time_factor())


async def test_a_watch_has_one_waiter() -> None:
    """A second changed() while one waits is refused (it would miss the reports), and the first
    still hears the next one."""
    store = MemoryStore()
    async with store.watch(["k"]) as watch:
        waiting = asyncio.ensure_future(watch.changed(SOON * time_factor()))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already"):
            await watch.changed(0)
        await store.put("k", b"1", expected_version=None)
        assert {"k"} == await waiting


@pytest.mark.redis
async def test_a_watch_cancelled_while_subscribing_leaves_nothing_behind(
    redis_factory: RedisFactory,
) -> None:
    """A watch whose entry is cancelled before Redis confirms its channel (Redis frozen) is
    forgotten: once Redis answers, its channel is unsubscribed, and the key can be watched
    again."""
    server = redis_factory()
    raw = Redis.from_url(server.url)
    try:
        async with open_redis_store(server, prefix="c:", timeout=SOON * time_factor()) as store:
            async with store.watch(["other"]):  # the subscription is up
                server.pause()
                try:
                    entering = asyncio.ensure_future(store.watch(["k"]).__aenter__())
                    await asyncio.sleep(0.2)
                    assert not entering.done()
                    entering.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await entering
                finally:
                    server.resume()
                async with store.watch(["k"]) as watch:
                    await eventually(lambda: live(watch))
                    await store.put("k", b"1", expected_version=None)
                    seen: set[str] = set()
                    while not seen:
                        seen |= await watch.changed(SOON * time_factor())
                    assert {"k"} == seen
            await eventually(lambda: _count(raw, "c:*", 1))  # the store's own channel
    finally:
        await raw.aclose()


async def test_the_file_store_does_not_watch(tmp_path: object) -> None:
    """EncryptedFileStore reports nothing: its waiters poll."""
    assert not isinstance(EncryptedFileStore(str(tmp_path), key=generate_key()), WatchableStore)


@pytest.mark.redis
async def test_a_redis_restart_is_survived(redis_factory: RedisFactory) -> None:
    """Redis killed: the watch is not live (its waiter polls); back: live again, the keys are
    reported (a write may have been missed meanwhile), and later writes are heard."""
    server = redis_factory()
    key = generate_key()
    async with (
        open_redis_store(server, key=key, prefix="r:", timeout=1.0) as watcher,
        open_redis_store(server, key=key, prefix="r:", timeout=1.0) as writer,
        watcher.watch(["k"]) as watch,
    ):
        assert live(watch)
        server.kill()
        while live(watch):
            await watch.changed(SOON * time_factor())
        server.start()
        seen: frozenset[str] = frozenset()
        while not (live(watch) and seen):
            seen = await watch.changed(SOON * time_factor())
        assert {"k"} == seen
        await writer.put("k", b"1", expected_version=None)
        assert {"k"} == await watch.changed(SOON * time_factor())


@pytest.mark.redis
async def test_a_write_while_the_subscription_is_cut_is_reported(
    redis_server: RedisProcess,
) -> None:
    """The subscription's connection killed (CLIENT KILL) and a write at once: the key is still
    reported, by the message or by the subscription made again."""
    key = generate_key()
    raw = Redis.from_url(redis_server.url)
    try:
        async with (
            open_redis_store(redis_server, key=key, prefix="cut:") as watcher,
            open_redis_store(redis_server, key=key, prefix="cut:") as writer,
        ):
            assert isinstance(watcher, RedisStore)
            async with watcher.watch(["k"]) as watch:
                await raw.client_kill_filter(_type="pubsub")
                await writer.put("k", b"1", expected_version=None)
                seen: set[str] = set()
                while not seen:
                    seen |= await watch.changed(SOON * time_factor())
                assert {"k"} == seen
    finally:
        await raw.aclose()


@pytest.mark.redis
async def test_a_frozen_redis_is_noticed_by_the_keepalive(
    redis_factory: RedisFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription that stops answering (Redis frozen) is dropped after an unanswered PING
    and made again once Redis answers."""
    monkeypatch.setattr(deviceflow.stores._redis_watch, "KEEPALIVE", 0.1)
    server = redis_factory()
    async with (
        open_redis_store(server, prefix="f:", timeout=0.5 * time_factor()) as store,
        store.watch(["k"]) as watch,
    ):
        assert live(watch)
        server.pause()
        try:
            while live(watch):
                await watch.changed(SOON * time_factor())
        finally:
            server.resume()
        while not live(watch):
            await watch.changed(SOON * time_factor())
        await store.put("k", b"1", expected_version=None)
        seen: set[str] = set()
        while not seen:
            seen |= await watch.changed(SOON * time_factor())
        assert {"k"} == seen


@pytest.mark.redis
async def test_watches_leave_no_subscription_behind(redis_server: RedisProcess) -> None:
    """Once every watch has ended, the store's channels are unsubscribed; aclose() ends the
    subscription itself."""
    raw = Redis.from_url(redis_server.url)
    try:
        async with open_redis_store(redis_server, prefix="gone:") as store:
            async with store.watch(["a", "b"]):
                assert 3 == len(await raw.pubsub_channels("gone:*"))  # and the store's own
            await eventually(lambda: _count(raw, "gone:*", 1))
        await eventually(lambda: _count(raw, "gone:*", 0))
    finally:
        await raw.aclose()


async def _count(raw: Redis, pattern: str, expected: int) -> bool:
    return expected == len(await raw.pubsub_channels(pattern))


async def test_memory_store_watch_ends_cleanly() -> None:
    """A MemoryStore watch that ends stops hearing; the store forgets it."""
    store = MemoryStore()
    async with store.watch(["k"]) as watch:
        pass
    await store.put("k", b"1", expected_version=None)
    assert frozenset() == await watch.changed(0)


@pytest.mark.redis
async def test_a_user_without_channels_writes_and_its_waiters_poll(
    redis_factory: RedisFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis user with no rights on channels (the Redis 7 default for new users) still writes;
    its watches are never live (waiters poll), and the store says why, once."""
    server = redis_factory()
    admin = Redis.from_url(server.url)
    await admin.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"])
    await admin.aclose()
    client = Redis.from_url(f"redis://app:pw@127.0.0.1:{server.port}/0")
    store = RedisStore(client, key=generate_key(), timeout=0.5 * time_factor())
    try:
        with caplog.at_level(logging.WARNING, logger="deviceflow"):
            await store.put("k", b"v", expected_version=None)
            async with store.watch(["k"]) as watch:
                assert not watch.live
                await store.put("k", b"w", expected_version=1)
                assert frozenset() == await watch.changed(0.2)
    finally:
        await store.aclose()
        await client.aclose()
    assert 1 == sum("may not subscribe" in r.getMessage() for r in caplog.records)
