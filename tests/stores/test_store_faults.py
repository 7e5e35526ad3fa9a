"""Faults the stores must survive with nothing lost: kill -9, dead lock holders, Redis restarts,
racing processes, and secrets that must not leak into logs, reprs or messages."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from _redis import RedisClusterProcess, RedisProcess, open_redis_store
from deviceflow.exceptions import (
    ConflictError,
    DecryptionError,
    LockTimeoutError,
    StoreError,
)
from deviceflow.stores import (
    EncryptedFileStore,
    KeySet,
    MemoryStore,
    Passphrase,
    TokenStore,
    Versioned,
    generate_key,
)
from helpers import time_factor

CHILD = Path(__file__).with_name("_store_child.py")

pytestmark = pytest.mark.slow


def value_for(key: str, version: int) -> bytes:
    """What the child writes for ``key`` at ``version`` (same as _store_child.value_for)."""
    return (f"{key}:{version};".encode() * 200)[:2048]


class Child:
    """A _store_child.py process, with its stdout read line by line."""

    def __init__(self, key: str, *args: str) -> None:
        env = {**os.environ, "DEVICEFLOW_TEST_KEY": key}
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # Unbuffered: expect() reads stdout byte by byte, so no line after the one it waits
            # for sits in a read-ahead buffer that communicate() (reading the fd) never sees.
            bufsize=0,
        )

    async def expect(self, line: str, timeout: float = 30) -> None:
        """Wait for the child to print ``line`` (fail with its stderr if it dies first) for
        ``timeout`` real seconds, times the time factor; past that, kill it and fail."""
        assert self.process.stdout is not None
        limit = timeout * time_factor()
        with anyio.move_on_after(limit):
            while True:
                # Abandoned on timeout: a readline in a thread cannot be cancelled, and a child
                # that neither prints nor exits would hold the wait for ever. The kill below
                # ends the read.
                got = await anyio.to_thread.run_sync(
                    self.process.stdout.readline, abandon_on_cancel=True
                )
                if got.decode().strip() == line:
                    return
                if not got:
                    pytest.fail(f"child exited: {self.finish()[1]}")
        self.kill()
        pytest.fail(f"the child did not print {line!r} within {limit:g} s: {self.finish()[1]}")

    def send(self, line: str) -> None:
        """Write a line to the child's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        """SIGKILL (kill -9) the child."""
        self.process.kill()

    def finish(self) -> tuple[list[list[str]], str]:
        """Wait for the end; the remaining stdout lines split into words, and stderr."""
        out, err = self.process.communicate(timeout=60 * time_factor())
        return [line.split() for line in out.decode().splitlines()], err.decode()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children started by a test, killed at its end whatever happens."""
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()
        child.process.communicate(timeout=60 * time_factor())


async def test_kill_9_during_file_writes_loses_nothing(
    tmp_path: Path, children: list[Child]
) -> None:
    """A writer killed at random points leaves each record at its old or new value, never worse."""
    key = generate_key()
    folder = str(tmp_path / "s")
    store = EncryptedFileStore(folder, key=key)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    stored: dict[str, int] = {}
    for _round in range(3):
        child = Child(key, "write", "file", folder, "200")
        children.append(child)
        await child.expect("ready")
        await anyio.sleep(rng.uniform(0.0, 0.4))
        child.kill()
        output, _ = child.finish()
        # Whole "begin|done <key> <version>" lines only: anything else (a blank line) is noise.
        lines = [w for w in output if len(w) == 3 and w[2].isdigit()]
        began = {(w[1], int(w[2])) for w in lines if w[0] == "begin"}
        for name, version in {(w[1], int(w[2])) for w in lines if w[0] == "done"}:
            stored[name] = max(stored.get(name, 0), version)
        for name in [f"tenant-{i}" for i in range(5)]:
            got = await store.get(name)
            done = stored.get(name, 0)
            allowed = {done} | ({done + 1} if (name, done + 1) in began else set())
            if got is None:
                assert 0 == done, f"seed {seed}"
                continue
            assert got.version in allowed, f"seed {seed}"
            assert value_for(name, got.version) == got.value, f"seed {seed}"
            stored[name] = got.version
    # Whatever the kills left behind, every key takes its next write (a key never written
    # takes its first).
    for name in [f"tenant-{i}" for i in range(5)]:
        version = stored.get(name, 0)
        written = await store.put(name, b"after", expected_version=version or None)
        assert version + 1 == written, f"seed {seed}"
    assert len(list(Path(folder).rglob("*.tmp"))) <= 5


async def test_file_lock_frees_at_once_when_holder_dies(
    tmp_path: Path, children: list[Child]
) -> None:
    """A process killed while holding a file lock (ttl 60 s) frees it at once."""
    key = generate_key()
    store = EncryptedFileStore(tmp_path / "s", key=key)
    child = Child(key, "hold", "file", str(tmp_path / "s"), "tenant", "60")
    children.append(child)
    await child.expect("locked")
    with pytest.raises(LockTimeoutError):
        async with store.lock("tenant", ttl=5, wait=0.2):
            pass
    child.kill()
    child.finish()
    async with store.lock("tenant", ttl=5, wait=2) as lease:
        assert "tenant" == lease.key


@pytest.mark.redis
async def test_redis_lock_frees_after_ttl_when_holder_dies(
    redis_server: RedisProcess, children: list[Child]
) -> None:
    """A process killed while holding a Redis lock leaves it held until its ttl runs out."""
    key = generate_key()
    async with open_redis_store(redis_server, key=key, prefix="dead-holder:") as store:
        child = Child(key, "hold", "redis", f"{redis_server.url}|dead-holder:", "tenant", "1.5")
        children.append(child)
        await child.expect("locked")
        child.kill()
        child.finish()
        with pytest.raises(LockTimeoutError):
            async with store.lock("tenant", ttl=5, wait=0):
                pass
        async with store.lock("tenant", ttl=5, wait=5) as lease:
            assert "tenant" == lease.key


@pytest.mark.redis
async def test_redis_restart_mid_refresh_is_typed_and_never_stale(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    """Redis killed mid refresh: StoreError within the timeout, and no stale write after restart."""
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    timeout = 1.0
    key = generate_key()
    async with (
        open_redis_store(server, key=key, prefix="rs:", timeout=timeout) as replica_a,
        open_redis_store(server, key=key, prefix="rs:", timeout=timeout) as replica_b,
    ):
        await replica_a.put("tenant", b"token-1", expected_version=None)

        async def refresh() -> None:
            # As get_token does: lock, re-read, (refresh at the IdP), write at that version.
            async with replica_a.lock("tenant", ttl=10, wait=1):
                assert Versioned(b"token-1", 1) == await replica_a.get("tenant")
                server.kill()
                await replica_a.put("tenant", b"token-2", expected_version=1)

        with anyio.fail_after(timeout * 4 * time_factor()), pytest.raises(StoreError):
            await refresh()
        server.start()
        assert Versioned(b"token-1", 1) == await replica_a.get("tenant")
        await replica_b.put("tenant", b"token-from-b", expected_version=1)
        with pytest.raises(ConflictError):
            await replica_a.put("tenant", b"token-2", expected_version=1)
        assert Versioned(b"token-from-b", 2) == await replica_b.get("tenant")


def _target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "file":
        return str(tmp_path / "s")
    server: RedisProcess | RedisClusterProcess = request.getfixturevalue(
        "redis_server" if backend == "redis" else "redis_cluster"
    )
    return f"{server.url}|race-{backend}:"


@pytest.mark.parametrize(
    "backend",
    [
        "file",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ],
)
async def test_two_processes_compare_and_set_one_winner_each_time(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, children: list[Child]
) -> None:
    """Two processes racing compare-and-set: each version has exactly one winner; nothing lost."""
    key = generate_key()
    target = _target(backend, tmp_path, request)
    store: TokenStore
    if backend == "file":
        store = EncryptedFileStore(target, key=key)
    else:
        from deviceflow.stores import RedisStore

        url, prefix = target.split("|")
        store = RedisStore(url, key=key, prefix=prefix, cluster=backend == "cluster")
    try:
        await store.put("counter", b"0", expected_version=None)
        racers = [Child(key, "increment", backend, target, "counter", "15") for _ in range(2)]
        children.extend(racers)
        for racer in racers:
            await racer.expect("ready")
        for racer in racers:
            racer.send("go")
        won = []
        for racer in racers:
            lines, err = racer.finish()
            assert 0 == racer.process.returncode, err
            won.append([int(w[1]) for w in lines if w[0] == "won"])
        assert [15, 15] == [len(w) for w in won]
        assert list(range(2, 32)) == sorted(won[0] + won[1])
        assert Versioned(b"30", 31) == await store.get("counter")
    finally:
        await store.aclose()


async def test_no_secret_in_logs_reprs_or_messages(
    tmp_path: Path,
    redis_server: RedisProcess,
    redis_factory: Callable[..., RedisProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No token, key or passphrase shows up in any log record, repr or error message."""
    key = generate_key()
    raw = base64.urlsafe_b64decode(key)
    token = b"SECRET-TOKEN-" + os.urandom(8).hex().encode()
    phrase = "SECRET-PASSPHRASE-" + os.urandom(8).hex()
    secrets = [
        token.decode(),
        key,
        key.rstrip("="),
        base64.b64encode(raw).decode(),
        raw.hex(),
        repr(raw),
        phrase,
    ]
    texts: list[str] = []

    async def exercise(store: TokenStore, other: TokenStore) -> None:
        texts.append(repr(store))
        await store.put("tenant", token, expected_version=None)
        versioned = await store.get("tenant")
        texts.append(repr(versioned))
        async with store.lock("tenant", ttl=5, wait=0) as lease:
            texts.append(repr(lease))
            with pytest.raises(LockTimeoutError) as timeout:
                async with store.lock("tenant", ttl=5, wait=0):
                    pass
        with pytest.raises(ConflictError) as conflict:
            await store.put("tenant", token, expected_version=None)
        errors: list[BaseException] = [timeout.value, conflict.value]
        if not isinstance(other, MemoryStore):
            with pytest.raises(DecryptionError) as undecryptable:
                await other.get("tenant")
            errors.append(undecryptable.value)
        texts.extend(f"{e!s} {e!r}" for e in errors)

    with caplog.at_level(logging.DEBUG):
        await exercise(MemoryStore(), MemoryStore())
        folder = tmp_path / "s"
        await exercise(
            EncryptedFileStore(folder, key=KeySet(key, Passphrase(phrase, work_factor=2**10))),
            EncryptedFileStore(folder, key=generate_key()),
        )
        async with (
            open_redis_store(redis_server, key=key, prefix="leak:") as redis_store,
            open_redis_store(redis_server, key=generate_key(), prefix="leak:") as wrong,
        ):
            await exercise(redis_store, wrong)
        dead = redis_factory()
        async with open_redis_store(dead, key=key, timeout=0.5) as doomed:
            await doomed.put("tenant", token, expected_version=None)
            dead.kill()
            with pytest.raises(StoreError) as unreachable:
                await doomed.get("tenant")
            texts.append(f"{unreachable.value!s} {unreachable.value!r}")
    texts.extend(record.getMessage() for record in caplog.records)
    texts.extend(repr(record.args) for record in caplog.records)
    texts.append(repr(KeySet(key)) + repr(Passphrase(phrase)))
    assert caplog.records, "the scenario should have logged something"
    leaks = [(secret, text) for text in texts for secret in secrets if secret in text]
    assert [] == leaks


async def test_cancelled_file_lock_wait_leaks_no_file_lock(tmp_path: Path) -> None:
    """Cancelling many waiters mid-attempt never leaves the file lock held by nobody."""
    store = EncryptedFileStore(tmp_path / "s", key=generate_key())
    for _ in range(20):
        async with store.lock("k", ttl=5, wait=0):
            waiters = [
                asyncio.create_task(store.lock("k", ttl=5, wait=5).__aenter__()) for _ in range(3)
            ]
            await anyio.sleep(random.uniform(0, 0.01))
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        async with store.lock("k", ttl=5, wait=0):
            pass
