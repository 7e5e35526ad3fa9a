"""A separate process for the store fault tests (run as a script, never imported by pytest).

    python _store_child.py write <backend> <target> <count>
    python _store_child.py hold <backend> <target> <key> <ttl>
    python _store_child.py increment <backend> <target> <key> <count>

``backend`` is ``file`` (target: a folder), ``redis`` or ``cluster`` (target: ``url|prefix``).
The key comes from the environment variable DEVICEFLOW_TEST_KEY. Progress goes to stdout, one
line per event, flushed at once, so that a parent that kills this process knows how far it got.
"""

from __future__ import annotations

import asyncio
import sys

import anyio
import anyio.to_thread

from deviceflow.exceptions import ConflictError
from deviceflow.stores import EncryptedFileStore, KeySet, RedisStore, TokenStore

KEYS = [f"tenant-{i}" for i in range(5)]


def value_for(key: str, version: int) -> bytes:
    """The 2 KB value the writer stores for ``key`` at ``version`` (the parent checks it)."""
    return (f"{key}:{version};".encode() * 200)[:2048]


def open_store(backend: str, target: str) -> TokenStore:
    """The store the parent named."""
    keys = KeySet.from_env("DEVICEFLOW_TEST_KEY")
    if backend == "file":
        return EncryptedFileStore(target, key=keys)
    url, prefix = target.split("|")
    return RedisStore(url, key=keys, prefix=prefix, cluster=backend == "cluster", timeout=5)


def say(*words: object) -> None:
    """One line of progress for the parent."""
    print(*words, flush=True)


async def write(store: TokenStore, count: int) -> None:
    """Update five keys round-robin, announcing each write before and after it."""
    versions = {}
    for key in KEYS:
        current = await store.get(key)
        versions[key] = None if current is None else current.version
    say("ready")
    for i in range(count):
        key = KEYS[i % len(KEYS)]
        new = (versions[key] or 0) + 1
        say("begin", key, new)
        versions[key] = await store.put(key, value_for(key, new), expected_version=versions[key])
        say("done", key, new)


async def hold(store: TokenStore, key: str, ttl: float) -> None:
    """Take the lock and keep it until killed."""
    async with store.lock(key, ttl=ttl, wait=10):
        say("locked")
        await anyio.sleep(600)


async def increment(store: TokenStore, key: str, count: int) -> None:
    """After "go" on stdin, win ``count`` compare-and-set increments, reporting each version."""
    await store.get(key)  # connect and set up before the race starts
    say("ready")
    await anyio.to_thread.run_sync(sys.stdin.readline)
    conflicts = 0
    for _ in range(count):
        while True:
            current = await store.get(key)
            assert current is not None
            try:
                version = await store.put(
                    key, b"%d" % (int(current.value) + 1), expected_version=current.version
                )
            except ConflictError:
                conflicts += 1
                continue
            say("won", version)
            break
    say("conflicts", conflicts)


async def main(mode: str, backend: str, target: str, *args: str) -> None:
    """Run one mode against one store."""
    store = open_store(backend, target)
    try:
        if mode == "write":
            await write(store, int(args[0]))
        elif mode == "hold":
            await hold(store, args[0], float(args[1]))
        else:
            await increment(store, args[0], int(args[1]))
    finally:
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
