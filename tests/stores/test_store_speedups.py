"""What the stores' fast paths must keep: lock interplay with filelock, modes, timeouts, scripts."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import filelock
import pytest
from redis.asyncio import Redis

from _redis import RedisProcess, open_redis_store
from deviceflow._crypto import KeySet, Sealer
from deviceflow.exceptions import LockTimeoutError, StoreError
from deviceflow.stores import EncryptedFileStore, RedisStore, Versioned, generate_key
from deviceflow.stores._file import _HeldFile

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")

RedisFactory = Callable[..., RedisProcess]


def lock_file(store: EncryptedFileStore, suffix: str) -> Path:
    """The one lock file with ``suffix`` (``.wlock`` or ``.lock``) in ``store``."""
    (path,) = store.path.rglob(f"*{suffix}")
    return path


# --- record ids ---------------------------------------------------------------------------------


def test_record_ids_stay_right_past_the_remembered_ones() -> None:
    """Record ids are the same whether remembered, forgotten or computed by another Sealer."""
    keys = KeySet(generate_key()).resolve()
    busy, fresh = Sealer(keys, "ns"), Sealer(keys, "ns")
    names = [f"tenant-{i}" for i in range(10_000)]  # more than a Sealer remembers
    first = [busy.record_id(name) for name in names]
    again = [busy.record_id(name) for name in reversed(names)]
    assert first == [fresh.record_id(name) for name in names]
    assert first == list(reversed(again))


# --- file store: the locks are filelock's ----------------------------------------------------


async def test_write_lock_held_by_filelock_blocks_a_put(tmp_path: Path) -> None:
    """A .wlock held through filelock.FileLock (as earlier versions take it) holds off a put."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key(), lock_timeout=0.3)
    await store.put("k", b"v1", expected_version=None)
    other = filelock.FileLock(lock_file(store, ".wlock"), thread_local=False)
    with other, pytest.raises(LockTimeoutError, match="write lock"):
        await store.put("k", b"v2", expected_version=1)
    assert 2 == await store.put("k", b"v2", expected_version=1)


async def test_put_waits_for_a_write_lock_let_go_in_time(tmp_path: Path) -> None:
    """A put that finds the .wlock held waits for it, then writes."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key(), lock_timeout=10)
    await store.put("k", b"v1", expected_version=None)
    other = filelock.FileLock(lock_file(store, ".wlock"), thread_local=False)
    other.acquire()
    threading.Timer(0.2, other.release).start()
    assert 2 == await store.put("k", b"v2", expected_version=1)
    assert Versioned(b"v2", 2) == await store.get("k")


async def test_lease_lock_and_filelock_exclude_each_other(tmp_path: Path) -> None:
    """store.lock() and filelock.FileLock on the key's .lock file never hold it together."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    async with store.lock("k", ttl=5, wait=0):
        other = filelock.FileLock(lock_file(store, ".lock"), thread_local=False)
        with pytest.raises(filelock.Timeout):
            other.acquire(blocking=False)
    with other, pytest.raises(LockTimeoutError):
        async with store.lock("k", ttl=5, wait=0.1):
            pass
    async with store.lock("k", ttl=5, wait=0):
        pass


def test_a_lease_given_up_before_its_attempt_lets_go_at_once(tmp_path: Path) -> None:
    """An attempt that wins the lock after release() (its waiter gave up) lets it go at once."""
    path = tmp_path / "k.lock"
    held = _HeldFile(lambda: str(path))
    held.release()
    assert not held.try_acquire()
    with filelock.FileLock(path, thread_local=False).acquire(blocking=False):
        pass


@posix_only
@pytest.mark.parametrize("umask", [0o000, 0o277])
async def test_lock_files_are_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Lock files the store creates are 0600 (readable and writable by their owner) always."""
    old_umask = os.umask(umask)
    try:
        store = EncryptedFileStore(tmp_path / "s", key=generate_key())
        await store.put("k", b"v", expected_version=None)
        async with store.lock("k", ttl=5, wait=0):
            pass
    finally:
        os.umask(old_umask)
    for suffix in (".wlock", ".lock"):
        assert 0o600 == stat.S_IMODE(lock_file(store, suffix).stat().st_mode)


async def test_records_written_in_one_piece(tmp_path: Path) -> None:
    """A value far larger than a token is written and read back whole."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    value = os.urandom(3 * 65536 + 7)
    await store.put("k", value, expected_version=None)
    assert Versioned(value, 1) == await store.get("k")


# --- Redis: the deadline and the scripts ------------------------------------------------------


@pytest.mark.redis
async def test_own_deadline_without_socket_timeouts(redis_factory: RedisFactory) -> None:
    """A client with no socket timeout still gives StoreError within the store's timeout."""
    server = redis_factory()
    client = Redis.from_url(server.url)  # no socket_timeout: only the store's deadline
    store = RedisStore(client, key=generate_key(), timeout=0.3)
    try:
        await store.put("k", b"v", expected_version=None)
        server.pause()
        try:
            for attempt in (store.get("k"), store.put("k", b"w", expected_version=1)):
                with anyio.fail_after(5), pytest.raises(StoreError, match="did not answer"):
                    await attempt
        finally:
            server.resume()
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_set_up_and_pipelines_fail_as_store_errors(redis_factory: RedisFactory) -> None:
    """Set-up and get_many against a frozen Redis, and get_many against a dead one: StoreError."""
    server = redis_factory()
    client = Redis.from_url(server.url)
    store = RedisStore(client, key=generate_key(), timeout=0.3)
    try:
        server.pause()
        try:
            with anyio.fail_after(5), pytest.raises(StoreError, match="did not answer"):
                await store.get("k")  # the set-up's CONFIG GET
        finally:
            server.resume()
        await store.put("k", b"v", expected_version=None)
        server.pause()
        try:
            with anyio.fail_after(5), pytest.raises(StoreError, match="did not answer"):
                await store.get_many(["k", "l"])
        finally:
            server.resume()
        server.kill()
        with anyio.fail_after(5), pytest.raises(StoreError, match="Redis failed"):
            await store.get_many(["k", "l"])
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_unlock_on_a_frozen_redis_gives_up_after_the_timeout(
    redis_factory: RedisFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving a lock while Redis is frozen ends within the timeout (the lock keeps its ttl)."""
    server = redis_factory()
    client = Redis.from_url(server.url)
    store = RedisStore(client, key=generate_key(), timeout=0.3)
    try:
        with anyio.fail_after(5):
            async with store.lock("k", ttl=30, wait=0):
                server.pause()
        assert any("could not release" in r.getMessage() for r in caplog.records)
    finally:
        server.resume()
        await client.aclose()


@pytest.mark.redis
async def test_outer_cancellation_stays_a_cancellation(redis_factory: RedisFactory) -> None:
    """A call cancelled from outside is cancelled, not turned into a StoreError."""
    server = redis_factory()
    client = Redis.from_url(server.url)
    store = RedisStore(client, key=generate_key(), timeout=30)
    try:
        await store.put("k", b"v", expected_version=None)
        server.pause()
        try:
            task = asyncio.ensure_future(store.get("k"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with anyio.move_on_after(0.1) as scope:
                await store.get("k")
            assert scope.cancelled_caught
        finally:
            server.resume()
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_scripts_survive_a_script_flush(redis_server: RedisProcess) -> None:
    """After SCRIPT FLUSH (as after a restart) put, delete and unlock load their scripts again."""
    async with open_redis_store(redis_server) as store:
        await store.put("k", b"v", expected_version=None)
        admin = Redis.from_url(redis_server.url)
        try:
            await admin.script_flush()
            assert 2 == await store.put("k", b"w", expected_version=1)
            await admin.script_flush()
            async with store.lock("k", ttl=5, wait=0):
                await admin.script_flush()
            async with store.lock("k", ttl=5, wait=0):  # the unlock above let go
                pass
            await admin.script_flush()
            assert await store.delete("k", expected_version=2)
        finally:
            await admin.aclose()
        assert None is await store.get("k")
