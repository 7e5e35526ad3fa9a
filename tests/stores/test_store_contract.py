"""The TokenStore contract, run unchanged against every backend (see conftest.BACKENDS)."""

from __future__ import annotations

import asyncio
import os

import anyio
import pytest

from deviceflow.exceptions import ConflictError, LockTimeoutError
from deviceflow.stores import TokenStore, Versioned
from helpers import time_factor

TOKEN = os.urandom(2048)


async def test_is_a_token_store(store: TokenStore) -> None:
    """Every backend satisfies the TokenStore protocol."""
    assert isinstance(store, TokenStore)


async def test_get_missing_key_is_none(store: TokenStore) -> None:
    """A key never written reads as None."""
    assert None is await store.get("nobody")


async def test_round_trip(store: TokenStore) -> None:
    """put returns version 1 and get returns the exact bytes with that version."""
    assert 1 == await store.put("tenant-1", TOKEN, expected_version=None)
    assert Versioned(TOKEN, 1) == await store.get("tenant-1")


@pytest.mark.parametrize(
    "key", ["", "ä/ß:é", "with{braces}and}", "x" * 1000, "issuer|client|account"]
)
async def test_any_key_string_works(store: TokenStore, key: str) -> None:
    """Empty, non-ASCII, brace-laden and long keys all round-trip."""
    await store.put(key, b"v", expected_version=None)
    assert Versioned(b"v", 1) == await store.get(key)


async def test_empty_value_round_trips(store: TokenStore) -> None:
    """An empty value is a value, not an absence."""
    await store.put("k", b"", expected_version=None)
    assert Versioned(b"", 1) == await store.get("k")


async def test_versions_grow_by_one(store: TokenStore) -> None:
    """Each successful put returns the previous version plus one."""
    versions = [await store.put("k", b"0", expected_version=None)]
    for i in range(1, 5):
        versions.append(await store.put("k", b"%d" % i, expected_version=versions[-1]))
    assert [1, 2, 3, 4, 5] == versions
    assert Versioned(b"4", 5) == await store.get("k")


async def test_create_conflicts_when_key_exists(store: TokenStore) -> None:
    """put(expected_version=None) on an existing key raises ConflictError and writes nothing."""
    await store.put("k", b"first", expected_version=None)
    with pytest.raises(ConflictError):
        await store.put("k", b"second", expected_version=None)
    assert Versioned(b"first", 1) == await store.get("k")


async def test_stale_version_conflicts(store: TokenStore) -> None:
    """put with an old expected_version raises ConflictError and keeps the newer value."""
    await store.put("k", b"a", expected_version=None)
    await store.put("k", b"b", expected_version=1)
    with pytest.raises(ConflictError, match="version 2"):
        await store.put("k", b"stale", expected_version=1)
    assert Versioned(b"b", 2) == await store.get("k")


async def test_expected_version_on_missing_key_conflicts(store: TokenStore) -> None:
    """put with a version for a key that does not exist raises ConflictError."""
    with pytest.raises(ConflictError):
        await store.put("k", b"a", expected_version=3)
    assert None is await store.get("k")


async def test_concurrent_compare_and_set_has_one_winner(store: TokenStore) -> None:
    """Of 20 tasks writing at the same version, exactly one wins; the others conflict."""
    await store.put("k", b"start", expected_version=None)

    async def attempt(i: int) -> bool:
        try:
            await store.put("k", b"%d" % i, expected_version=1)
        except ConflictError:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert 1 == sum(results)
    stored = await store.get("k")
    assert stored is not None
    assert (b"%d" % results.index(True), 2) == (stored.value, stored.version)


async def test_delete(store: TokenStore) -> None:
    """delete removes the key and says whether it was there."""
    await store.put("k", b"a", expected_version=None)
    assert True is await store.delete("k")
    assert None is await store.get("k")
    assert False is await store.delete("k")


async def test_delete_at_expected_version(store: TokenStore) -> None:
    """delete with a stale expected_version raises ConflictError; with the right one it deletes."""
    await store.put("k", b"a", expected_version=None)
    await store.put("k", b"b", expected_version=1)
    with pytest.raises(ConflictError):
        await store.delete("k", expected_version=1)
    assert Versioned(b"b", 2) == await store.get("k")
    assert True is await store.delete("k", expected_version=2)
    assert None is await store.get("k")


async def test_delete_missing_at_version_is_false(store: TokenStore) -> None:
    """delete with expected_version of a key that is not there returns False."""
    assert False is await store.delete("k", expected_version=1)


async def test_versions_restart_after_delete(store: TokenStore) -> None:
    """After a delete the key is new again: created with expected_version=None at version 1."""
    await store.put("k", b"a", expected_version=None)
    await store.put("k", b"b", expected_version=1)
    await store.delete("k")
    assert 1 == await store.put("k", b"c", expected_version=None)


async def test_many_keys_are_independent(store: TokenStore) -> None:
    """200 keys written concurrently each read back their own value."""
    keys = [f"tenant-{i}" for i in range(200)]
    await asyncio.gather(*(store.put(k, k.encode(), expected_version=None) for k in keys))
    got = await asyncio.gather(*(store.get(k) for k in keys))
    assert [Versioned(k.encode(), 1) for k in keys] == got


async def test_ttl_expires_value(store: TokenStore) -> None:
    """A value put with a ttl reads as absent once the ttl has passed, and can be created again."""
    ttl = 0.3 * time_factor()  # long enough for the next two calls
    await store.put("short", b"a", expected_version=None, ttl=ttl)
    await store.put("long", b"b", expected_version=None, ttl=60)
    assert Versioned(b"a", 1) == await store.get("short")
    await anyio.sleep(ttl + 0.2)
    assert None is await store.get("short")
    assert Versioned(b"b", 1) == await store.get("long")
    assert 1 == await store.put("short", b"again", expected_version=None)


async def test_put_without_ttl_keeps_value(store: TokenStore) -> None:
    """A later put without ttl removes the earlier expiry."""
    ttl = 0.3 * time_factor()  # long enough for the next call
    await store.put("k", b"a", expected_version=None, ttl=ttl)
    await store.put("k", b"b", expected_version=1)
    await anyio.sleep(ttl + 0.2)
    assert Versioned(b"b", 2) == await store.get("k")


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan"), float("inf")])
async def test_bad_ttl_is_rejected(store: TokenStore, ttl: float) -> None:
    """A ttl that is not a positive finite number raises ValueError and writes nothing."""
    with pytest.raises(ValueError, match="ttl"):
        await store.put("k", b"a", expected_version=None, ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        store.lock("k", ttl=ttl, wait=1)
    assert None is await store.get("k")


async def test_lock_gives_a_lease(store: TokenStore) -> None:
    """lock yields a Lease naming the key and ttl, with a new token for every acquisition."""
    async with store.lock("k", ttl=5, wait=1) as first:
        pass
    async with store.lock("k", ttl=5, wait=1) as second:
        pass
    assert ("k", 5) == (first.key, first.ttl)
    assert first.owner != second.owner


async def test_lock_excludes_other_tasks(store: TokenStore) -> None:
    """Ten tasks doing read-modify-write under the lock never overlap and never conflict."""
    await store.put("counter", b"0", expected_version=None)
    inside = 0
    most_inside = 0

    async def increment() -> None:
        nonlocal inside, most_inside
        async with store.lock("counter", ttl=10, wait=10):
            inside += 1
            most_inside = max(most_inside, inside)
            current = await store.get("counter")
            assert current is not None
            await anyio.sleep(0.01)
            value = b"%d" % (int(current.value) + 1)
            await store.put("counter", value, expected_version=current.version)
            inside -= 1

    await asyncio.gather(*(increment() for _ in range(10)))
    assert (1, Versioned(b"10", 11)) == (most_inside, await store.get("counter"))


async def test_locks_are_per_key(store: TokenStore) -> None:
    """Holding one key's lock does not block another key's."""
    async with store.lock("a", ttl=5, wait=0), store.lock("b", ttl=5, wait=0) as lease:
        assert "b" == lease.key


async def test_lock_wait_timeout(store: TokenStore) -> None:
    """A second acquirer gives up with LockTimeoutError after its wait."""
    async with store.lock("k", ttl=10, wait=0):
        with pytest.raises(LockTimeoutError):
            async with store.lock("k", ttl=10, wait=0.2):
                pass


async def test_lock_is_free_after_release(store: TokenStore) -> None:
    """After the holder's block ends, the lock is free at once, even after an error in it."""
    with pytest.raises(RuntimeError):
        async with store.lock("k", ttl=10, wait=0):
            raise RuntimeError("boom")
    async with store.lock("k", ttl=10, wait=0):
        pass


async def test_lock_ttl_expires(store: TokenStore) -> None:
    """A lock held past its ttl passes to a waiter; the late holder's exit does not free it."""
    first = store.lock("k", ttl=0.3, wait=0)
    await first.__aenter__()
    async with store.lock("k", ttl=10, wait=5):
        await first.__aexit__(None, None, None)
        with pytest.raises(LockTimeoutError):
            async with store.lock("k", ttl=10, wait=0.1):
                pass


async def test_cancel_while_waiting_leaves_lock_clean(store: TokenStore) -> None:
    """A waiter cancelled mid-wait takes nothing with it: the lock is free once the holder ends."""
    entered = anyio.Event()

    async def waiter() -> None:
        entered.set()
        async with store.lock("k", ttl=10, wait=30):
            pytest.fail("the waiter must not get the lock")

    async with store.lock("k", ttl=10, wait=0):
        task = asyncio.create_task(waiter())
        await entered.wait()
        await anyio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with store.lock("k", ttl=10, wait=0):
        pass


async def test_cancel_while_holding_releases_lock(store: TokenStore) -> None:
    """A holder cancelled inside the block releases the lock."""
    locked = anyio.Event()

    async def holder() -> None:
        async with store.lock("k", ttl=30, wait=0):
            locked.set()
            await anyio.sleep(60)

    task = asyncio.create_task(holder())
    await locked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with store.lock("k", ttl=10, wait=0):
        pass


async def test_anyio_cancel_scope_while_holding_releases_lock(store: TokenStore) -> None:
    """A holder timed out by an anyio cancel scope releases the lock too."""
    with anyio.move_on_after(0.1):
        async with store.lock("k", ttl=30, wait=0):
            await anyio.sleep(60)
    async with store.lock("k", ttl=10, wait=0):
        pass


async def test_aclose_is_idempotent(store: TokenStore) -> None:
    """aclose can be called more than once."""
    await store.aclose()
    await store.aclose()
