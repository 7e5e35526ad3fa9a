"""Private Redis servers for tests: one node and a three-master cluster, on free loopback ports.

Import the fixtures into a conftest.py (``from _redis import redis_server, ...``);
``open_redis_store`` opens a RedisStore (and its client) on one of these servers. Each server
runs from a temporary folder with persistence off (unless asked for), binds 127.0.0.1 only, and
is stopped at the end. Nothing here ever connects to a Redis the tests did not start (such as one
already listening on 6379).

Without a ``redis-server`` binary the Redis tests skip, with the reason; with
``DEVICEFLOW_REQUIRE_REDIS=1`` (CI) they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest

from deviceflow.stores import KeyMaterial, generate_key

if TYPE_CHECKING:
    from deviceflow.stores import RedisStore

__all__ = [
    "RedisClusterProcess",
    "RedisProcess",
    "open_redis_store",
    "redis_binaries",
    "redis_cluster",
    "redis_factory",
    "redis_server",
]

_START_TIMEOUT = 10.0


def redis_binaries() -> tuple[str, str]:
    """Paths of redis-server and redis-cli; skip (or fail, when required) if missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        reason = "redis-server and redis-cli are not on PATH (install Redis to run these tests)"
        if os.environ.get("DEVICEFLOW_REQUIRE_REDIS") == "1":
            pytest.fail(f"DEVICEFLOW_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    return server, cli


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A free loopback port (and port + 10000 free too, for a cluster node's bus)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port == 6379 or (cluster_bus and (port > 55535 or not _bindable(port + 10000))):
            continue
        return port
    raise RuntimeError("no free loopback port found")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisProcess:
    """One redis-server on 127.0.0.1:``port``, run from ``workdir``.

    With ``sentinel_of`` (a master's port) it runs as a Redis Sentinel watching that master under
    the name ``mymaster``.
    """

    port: int
    workdir: Path
    extra: Sequence[str] = ()
    sentinel_of: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self, server: str) -> list[str]:
        if self.sentinel_of is not None:
            config = self.workdir / "sentinel.conf"
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"logfile {self.workdir / 'redis.log'}\n"
                f"sentinel monitor mymaster 127.0.0.1 {self.sentinel_of} 1\n"
            )
            return [server, str(config), "--sentinel"]
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        return [*args, "--logfile", str(self.workdir / "redis.log"), *self.extra]

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        server, _ = redis_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # stderr to a file, not a pipe: nobody drains a pipe while the server runs.
        with open(self.workdir / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                self._args(server), stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                logs = [self.workdir / "stderr.log", self.workdir / "redis.log"]
                tail = "".join(p.read_text(errors="replace")[-1000:] for p in logs if p.exists())
                raise RuntimeError(f"redis-server on port {self.port} did not start: {tail}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no save) and reap it; start() brings it back."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@attrs.define
class RedisClusterProcess:
    """Three redis-server masters joined by ``redis-cli --cluster create``."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one node (RedisCluster discovers the others)."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start the nodes, create the cluster and wait until every slot is served."""
        _, cli = redis_binaries()
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not all(self._state_ok(cli, node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the test Redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _state_ok(cli: str, port: int) -> bool:
        info = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        return "cluster_state:ok" in info and "cluster_slots_ok:16384" in info

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


@contextlib.asynccontextmanager
async def open_redis_store(
    server: RedisProcess | RedisClusterProcess,
    *,
    key: KeyMaterial | None = None,
    prefix: str | None = None,
    timeout: float = 2.0,
) -> AsyncIterator[RedisStore]:
    """A RedisStore on ``server``, by default with a prefix of its own (tests never share keys)."""
    from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

    from deviceflow.stores import RedisStore

    client: Redis | RedisCluster
    if isinstance(server, RedisClusterProcess):
        client = RedisCluster.from_url(server.url, socket_timeout=timeout)
    else:
        pool = BlockingConnectionPool.from_url(
            server.url, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        client = Redis.from_pool(pool)
    prefix = prefix if prefix is not None else f"t{uuid.uuid4().hex[:12]}:"
    store = RedisStore(client, key=key or generate_key(), prefix=prefix, timeout=timeout)
    try:
        yield store
    finally:
        await store.aclose()
        await client.aclose()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private single-node Redis for the whole session."""
    redis_binaries()
    server = RedisProcess(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess]:
    """A private three-master Redis cluster for the whole session."""
    redis_binaries()
    root = tmp_path_factory.mktemp("redis-cluster")
    nodes = []
    for _ in range(3):
        port = free_port(cluster_bus=True)
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        extra += ["--cluster-node-timeout", "5000"]
        nodes.append(RedisProcess(port, root / str(port), extra))
    cluster = RedisClusterProcess(nodes)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Start disposable Redis servers (extra redis-server arguments allowed) for one test."""
    redis_binaries()
    started: list[RedisProcess] = []

    def start(*extra: str) -> RedisProcess:
        server = RedisProcess(free_port(), tmp_path / f"redis-{len(started)}", extra)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


# --- Redis stalls: DEBUG SLEEP from a raw connection ---------------------------------------------

#: redis-server arguments that allow DEBUG SLEEP (Redis 7 refuses DEBUG commands by default).
DEBUG_COMMANDS = ("--enable-debug-command", "yes")


class RedisSleeper:
    """A raw connection to one test Redis that puts the whole server to sleep (DEBUG SLEEP).

    While it sleeps, Redis reads and answers nothing (as a stuck or swapping Redis would);
    commands sent meanwhile run when it wakes. The server must run with ``DEBUG_COMMANDS``.
    ``start()`` returns once the command is sent, ``woken()`` once Redis answers it::

        async with RedisSleeper(server) as sleeper:
            await sleeper.sleep(0.5)
    """

    def __init__(self, server: RedisProcess) -> None:
        self.server = server
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RedisSleeper:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def start(self, seconds: float) -> None:
        """Send ``DEBUG SLEEP seconds``; Redis sleeps from the moment it reads it."""
        assert self._writer is not None, "use RedisSleeper in async with"
        parts = [b"DEBUG", b"SLEEP", f"{seconds:.3f}".encode()]
        self._writer.write(
            b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        )
        await self._writer.drain()

    async def woken(self) -> None:
        """Wait until Redis answers the DEBUG SLEEP sent last: it is awake again."""
        assert self._reader is not None, "use RedisSleeper in async with"
        reply = await self._reader.readline()
        if reply != b"+OK\r\n":
            raise RuntimeError(f"DEBUG SLEEP failed ({reply!r}); start Redis with DEBUG_COMMANDS")

    async def sleep(self, seconds: float) -> None:
        """Put Redis to sleep for ``seconds`` and return once it is awake."""
        await self.start(seconds)
        await self.woken()


__all__ += ["DEBUG_COMMANDS", "RedisSleeper"]
