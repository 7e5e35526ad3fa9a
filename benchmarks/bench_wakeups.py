"""Waiting replicas: N accounts parked on another replica's device flow, on a private Redis.

A redis-server started here (free loopback port, persistence off) is shared by two replicas in
this process, each with its own RedisStore (its own connections):

- the *runner* holds a device-flow claim on every account, as a replica running N flows does
  (written the way the client writes them, with an hour left, so that no claim lapses or is
  renewed during the measurement: a renewal costs each waiter one read of the claim, so a
  waiting account costs a read per renewal of its flow's claim, every 30 s or so for a flow in
  its usual rhythm);
- the *waiter*, a DeviceFlowClient, calls get_token() for every account and parks on the
  runner's claims.

What a parked waiter holds: resident memory and the objects the garbage collector tracks, each
after a full collection and glibc's malloc_trim, just before the get_token() calls and once every
waiter is parked, divided by N (the caller's own task of each get_token() included; with
--census, the types that grew, per waiter).

Once every waiter is parked (Redis reports its channels subscribed), Redis's command counts
(INFO commandstats) are read before and after a window of W seconds: the commands per second
that N waiting accounts cost. Each waiter also reads its two keys at a safety poll, once in 5
to 10 minutes (about N / 225 reads per second once it comes due, from 5 minutes after
parking). Then the runner stores a token for every account and ends its claim, as a finished
flow does; the wake-up latency of an account is from the moment the runner
starts storing its token to the moment the waiter's get_token() returns it.

The same is run with the waiter's store hiding its watches (it then polls every 2 s, as every
store did before, and as the file store does) for comparison, at --poll-accounts.

Run: ``python benchmarks/bench_wakeups.py [--accounts N] [--poll-accounts M] [--window W]
[--census]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta, timezone
from typing import Any

from redis.asyncio import Redis

from _harness import machine, rss, settle, table
from deviceflow import DeviceCode, DeviceFlowClient, Provider, Token
from deviceflow._claim import Claim
from deviceflow.stores import Lease, RedisStore, Versioned, generate_key

ISSUER = "https://idp.bench.test"
HOLD = 3600.0  # seconds of life left in the runner's claims


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench_wakeups needs redis-server on PATH")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", folder, "--maxclients", "1000"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


class Unwatched:
    """A store that passes every call on to a RedisStore but offers no watches (so its waiters
    poll, as with every store before, and the file store now)."""

    def __init__(self, inner: RedisStore) -> None:
        self.inner = inner

    async def get(self, key: str) -> Versioned | None:
        return await self.inner.get(key)

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None, ttl: float | None = None
    ) -> int:
        return await self.inner.put(key, value, expected_version=expected_version, ttl=ttl)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        return await self.inner.delete(key, expected_version=expected_version)

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]:
        return self.inner.lock(key, ttl=ttl, wait=wait)

    async def aclose(self) -> None:
        await self.inner.aclose()


def provider() -> Provider:
    return Provider(
        issuer=ISSUER,
        device_authorization_endpoint=ISSUER + "/device",
        token_endpoint=ISSUER + "/token",
    )


async def in_batches(work: list[Any], size: int = 500) -> None:
    for start in range(0, len(work), size):
        await asyncio.gather(*work[start : start + size])


async def commands(raw: Redis) -> dict[str, int]:
    """Calls per command so far (INFO commandstats), without INFO itself."""
    stats: dict[str, Any] = await raw.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name not in ("cmdstat_info",)
    }


async def subscribed(raw: Redis) -> int:
    stats: dict[str, Any] = await raw.info("stats")
    return int(stats["pubsub_channels"])


@contextlib.asynccontextmanager
async def stores(url: str, key: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    prefix = f"bench-{secrets.token_hex(4)}:"  # each run its own records
    # The default timeout (5 s): a call queued for a connection behind the burst fails only
    # if Redis stops answering, not because the queue is long.
    runner = RedisStore(url, key=key, prefix=prefix)
    waiter = RedisStore(url, key=key, prefix=prefix)
    try:
        yield runner, waiter
    finally:
        await waiter.aclose()
        await runner.aclose()


def census() -> Counter[str]:
    """The objects the garbage collector tracks, by type."""
    return Counter(type(o).__qualname__ for o in gc.get_objects())


async def run(url: str, n: int, window: float, watched: bool, types: bool) -> dict[str, Any]:
    key = generate_key()
    raw = Redis.from_url(url)
    async with stores(url, key) as (runner_store, waiter_store):

        def on_code(code: DeviceCode, account: str) -> None:
            raise RuntimeError("the waiting replica started a device flow of its own")

        runner = DeviceFlowClient(provider(), client_id="bench", store=runner_store)
        store: Any = waiter_store if watched else Unwatched(waiter_store)
        waiter = DeviceFlowClient(provider(), client_id="bench", store=store, on_code=on_code)
        accounts = [f"tenant-{i}" for i in range(n)]

        started = time.perf_counter()
        until = datetime.now(timezone.utc).timestamp() + HOLD
        await in_batches(
            [
                runner_store.put(
                    runner.store_key(a) + "//device-flow",
                    Claim(flow=f"flow-{i}", until=until).encode(),
                    expected_version=None,
                    ttl=HOLD * 2,
                )
                for i, a in enumerate(accounts)
            ]
        )
        claimed = time.perf_counter() - started

        returned: dict[str, float] = {}

        async def wait(account: str) -> Token:
            token = await waiter.get_token(account)
            returned[account] = time.perf_counter()
            return token

        settle()
        rss_before, objects_before = rss(), census() if types else len(gc.get_objects())
        started = time.perf_counter()
        locks = (await commands(raw)).get("set", 0)
        tasks = [asyncio.ensure_future(wait(a)) for a in accounts]
        # Parked: every account has been through the refresh transaction's lock (a SET), and
        # subscribed its two channels (or, polling, had a poll's time to start waiting).
        progress, last = time.perf_counter(), 0
        while (count := (await commands(raw)).get("set", 0) - locks) < n:
            if count > last:
                progress, last = time.perf_counter(), count
            elif time.perf_counter() - progress > 5:
                break  # the few left took no lock (a record seen as fresh, say)
            await asyncio.sleep(0.2)
        if watched:  # two channels per account, and the store's own
            progress, last = time.perf_counter(), 0
            while (count := await subscribed(raw)) < 2 * n + 1:
                if count > last:
                    progress, last = time.perf_counter(), count
                elif time.perf_counter() - progress > 60:
                    print(f"  only {count:,} of {2 * n + 1:,} channels were subscribed")
                    break
                await asyncio.sleep(0.2)
        else:
            await asyncio.sleep(2.5)
        parked = time.perf_counter() - started
        settle()
        held = (rss() - rss_before) / n
        if isinstance(objects_before, Counter):
            grown = census()
            grown.subtract(objects_before)
            objects = grown.total() / n
            top = ", ".join(f"{t} {c / n:.2f}" for t, c in grown.most_common(16))
            print(f"  objects per parked waiter, by type: {top}")
        else:
            objects = (len(gc.get_objects()) - objects_before) / n
        rss_parked = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        before = await commands(raw)
        cpu_before = time.process_time()
        await asyncio.sleep(window)
        cpu_window = time.process_time() - cpu_before
        after = await commands(raw)
        spent = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        spent = {c: v for c, v in spent.items() if v}

        landing: dict[str, float] = {}
        now = datetime.now(timezone.utc)

        async def land(i: int, account: str) -> None:
            token = Token(
                access_token=f"at-{i}",
                refresh_token=f"rt-{i}",
                expires_at=now + timedelta(hours=1),
            )
            landing[account] = time.perf_counter()
            await runner.save_token(account, token)
            await runner_store.delete(runner.store_key(account) + "//device-flow")

        started = time.perf_counter()
        await in_batches([land(i, a) for i, a in enumerate(accounts)], size=64)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        landed = time.perf_counter() - started
        failed = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
        latencies = sorted(returned[a] - landing[a] for a in accounts if a in returned)
        await waiter.aclose()
        await runner.aclose()
    await raw.aclose()
    return {
        "n": n,
        "claimed": claimed,
        "parked": parked,
        "window": window,
        "per_s": sum(spent.values()) / window,
        "by_command": {c: v / window for c, v in sorted(spent.items(), key=lambda x: -x[1])},
        "cpu_share": cpu_window / window,
        "rss_mb": rss_parked / 1024,
        "held": held,
        "objects": objects,
        "landed": landed,
        "failed": failed,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "max": latencies[-1] if latencies else float("nan"),
    }


def row(name: str, found: dict[str, Any]) -> list[str]:
    top = ", ".join(f"{c} {v:,.0f}" for c, v in list(found["by_command"].items())[:4]) or "-"
    return [
        name,
        f"{found['n']:,}",
        f"{found['parked']:.0f} s",
        f"{found['held']:,.0f} B, {found['objects']:.0f} objects",
        f"{found['per_s']:,.1f} ({top})",
        f"{found['cpu_share']:.0%}",
        f"{found['p50'] * 1000:.1f} / {found['p99'] * 1000:.0f} / {found['max'] * 1000:.0f} ms",
        f"{found['landed']:.0f} s",
        ", ".join(f"{v:,} {k}" for k, v in found["failed"].items()) or "0",
    ]


async def main(args: argparse.Namespace) -> None:
    print(f"bench_wakeups: {machine()}; load average {os.getloadavg()[0]:.1f}")
    rows = []
    with redis_server() as url:
        if args.poll_accounts:
            polled = await run(url, args.poll_accounts, args.window, False, args.census)
            print(f"  polling: {polled}")
            rows.append(row("polling (2 s)", polled))
        woken = await run(url, args.accounts, args.window, True, args.census)
        print(f"  woken: {woken}")
        rows.append(row("woken (pub/sub)", woken))
    print()
    print(
        table(
            [
                "waiters",
                "accounts",
                "parked in",
                "held per waiter",
                "Redis commands/s while waiting",
                "client CPU",
                "wake-up p50 / p99 / max",
                "all landed in",
                "failed",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--poll-accounts", type=int, default=10_000, help="0: skip polling")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--census", action="store_true", help="objects per waiter, by type")
    asyncio.run(main(parser.parse_args()))
