"""Eight processes share one rotating grant in one Redis that keeps stalling: nothing is lost.

For ``DEVICEFLOW_STALL_SECONDS`` seconds (default 60) eight replica processes
(stall_worker.py) loop on get_token() and use every token on the server's protected resource,
while this process puts Redis to sleep (DEBUG SLEEP) at random the whole time: naps of 0.05 to
1 s, in storms (0.25 to 2.5 s apart) and calms (6 to 12 s apart), all times DEVICEFLOW_TIME_FACTOR.
The store timeout (0.25 s) is shorter than most naps, so reads, locks, and the writes after
refreshes fail now and then; the token endpoint holds each answer 0.4 s, so that naps often fall
on a refresh under way. The calms show that refreshes come on time once Redis is well again.
``DEVICEFLOW_STALL_SEED`` replays one run's naps (the seed is printed on failure).

The built-in server rotates refresh tokens and revokes the whole grant when a used one comes
back (RFC 9700 4.14.2): one lost or replayed refresh token anywhere shows up as invalid_grant,
as a revoked grant and as rejected tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from _redis import DEBUG_COMMANDS, RedisProcess, RedisSleeper
from deviceflow import DeviceFlowClient, DeviceFlowError, Provider, Token
from deviceflow._cache import TokenCache
from deviceflow.stores import RedisStore, generate_key
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock

pytestmark = [pytest.mark.slow, pytest.mark.redis]

WORKER = Path(__file__).with_name("stall_worker.py")
PROCESSES = 8
ACCOUNT = "shared"
PREFIX = "stalls:"
#: TokenCache waits at least this long (real seconds) after a failed background refresh.
POSTPONE = 1.0


def fresh_for(lifetime: int) -> float:
    """How long replicas use a token of ``lifetime`` seconds before one of them refreshes it in
    the background: TokenCache's refresh-ahead rule (default refresh_skew), asked directly."""
    clock = VirtualClock()
    token = Token(access_token="t", expires_at=clock.wall() + timedelta(seconds=lifetime))
    entry = TokenCache(clock, refresh_skew=60.0).entry(ACCOUNT, token, clock.wall())
    return entry.refresh_at - clock.monotonic()


def stall_seconds() -> float:
    """``DEVICEFLOW_STALL_SECONDS`` (default 60): how long the replicas run."""
    return float(os.environ.get("DEVICEFLOW_STALL_SECONDS", "60"))


class Staller:
    """Puts Redis to sleep at random until stopped; keeps when each nap began and ended."""

    def __init__(self, redis: RedisProcess, factor: float, rng: random.Random) -> None:
        self.redis = redis
        self.factor = factor
        self.rng = rng
        self.naps: list[tuple[float, float]] = []  # (began, ended) on time.monotonic()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with RedisSleeper(self.redis) as sleeper:
            while True:
                calm = self.rng.random() < 0.3
                gap = self.rng.uniform(*((6.0, 12.0) if calm else (0.25, 2.5))) * self.factor
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), gap)
                if self.stop.is_set():
                    return
                began = time.monotonic()
                await sleeper.sleep(self.rng.uniform(0.05, 1.0) * self.factor)
                self.naps.append((began, time.monotonic()))

    def last_wake(self, before: float) -> float:
        """When Redis last woke up from a nap begun before ``before`` (-inf: none)."""
        return max((end for began, end in self.naps if began < before), default=-float("inf"))


async def seed(server: AuthorizationServer, store: RedisStore, lifetime: int) -> None:
    """Store the grant all replicas share, as a sign-in would have."""
    issued = server.issue_tokens("svc", scope="openid offline_access")
    async with DeviceFlowClient(
        Provider(issuer=server.issuer), client_id="svc", store=store
    ) as client:
        await client.save_token(
            ACCOUNT,
            Token(
                access_token=issued["access_token"],
                refresh_token=issued["refresh_token"],
                expires_at=server.clock.wall() + timedelta(seconds=lifetime),
            ),
        )


async def run_replica(*args: str, timeout: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:  # timed out, or cancelled because another replica failed
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    assert 0 == proc.returncode, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def test_replicas_keep_one_grant_through_random_redis_stalls(
    redis_factory: Callable[..., RedisProcess], time_factor: float
) -> None:
    """8 processes, one grant, Redis stalling at random throughout: zero invalid_grant, zero
    revoked grants, no token rejected or lost, and one refresh per refresh window."""
    duration = stall_seconds()
    seed_value = int(os.environ.get("DEVICEFLOW_STALL_SEED", str(random.randrange(1 << 32))))
    factor = time_factor
    lifetime = max(2, round(6 * factor))  # seconds; refreshed once half of it has passed
    timeout = 0.25 * factor  # the replicas' RedisStore timeout
    hold = 0.4 * factor  # the token endpoint answers this long after a request
    http_timeout = hold + factor
    lock_ttl = http_timeout + 2 * timeout + factor  # shorter than lifetime / 2
    redis = redis_factory(*DEBUG_COMMANDS)
    key = generate_key()
    async with AuthorizationServer(
        access_token_lifetime=lifetime, rotate_refresh_tokens=True
    ) as server:
        store = RedisStore(redis.url, key=key, prefix=PREFIX, timeout=2 * factor)
        seeded_at = time.monotonic()
        await seed(server, store, lifetime)
        server.faults.add(Fault(endpoint="token", status=None, delay=hold, times=None))
        staller = Staller(redis, factor, random.Random(seed_value))
        stalling = asyncio.ensure_future(staller.run())
        args = ["--issuer", server.issuer, "--resource", server.resource_url]
        args += ["--redis", redis.url, "--prefix", PREFIX, f"--key={key}"]
        args += ["--duration", str(duration), "--timeout", str(timeout)]
        args += ["--http-timeout", str(http_timeout), "--lock-ttl", str(lock_ttl)]
        replicas = [
            asyncio.ensure_future(run_replica(*args, timeout=duration + 60 * factor))
            for _ in range(PROCESSES)
        ]
        try:
            reports = await asyncio.gather(*replicas)
        finally:
            for replica in replicas:  # one failed: its siblings are stopped, not left running
                replica.cancel()
            await asyncio.gather(*replicas, return_exceptions=True)
            staller.stop.set()
            await stalling
        finished_at = time.monotonic()
        refreshes = [
            r.at
            for r in server.requests
            if r.endpoint == "token" and r.form.get("grant_type") == "refresh_token"
        ]
        # Nothing was lost at the end either: the store holds the newest refresh token.
        server.faults.clear()
        async with DeviceFlowClient(
            Provider(issuer=server.issuer), client_id="svc", store=store
        ) as last:
            try:
                final: Token | DeviceFlowError = await last.refresh(ACCOUNT)
            except DeviceFlowError as exc:
                final = exc
        await store.aclose()

    log: Counter[str] = Counter()
    for report in reports:
        log.update(report["log"])
    naps = staller.naps
    # On failure: the seed (DEVICEFLOW_STALL_SEED replays the naps), the server's counters, the
    # naps (how many, how long in all) and what the replicas logged.
    summary = (seed_value, server.stats, len(naps), sum(e - b for b, e in naps), dict(log))
    print(summary)
    assert 0 == server.stats.invalid_grants, summary
    assert 0 == server.stats.grants_revoked, summary
    assert isinstance(final, Token), (final, summary)
    assert server.is_valid_access_token(final.access_token), summary
    assert [] == [r["errors"] for r in reports if r["errors"]], summary
    assert [] == [r["rejected"] for r in reports if r["rejected"]], summary
    assert [] == [(r["unsaved"], r["last"]) for r in reports if r["unsaved"]], summary
    assert [] == [key for key in log if key.startswith("ERROR")], summary
    assert all(r["accepted"] >= 10 for r in reports), [r["accepted"] for r in reports]

    # For scheduling on a shared machine, the replicas' pauses between calls, HTTP round trips:
    # a refresh that late still comes well before its token expires (half the lifetime later).
    slack = 1.5 * factor

    # StoreErrors: a call fails only when one of its Redis calls waited a whole store timeout
    # for a sleeping Redis, so it ends while Redis sleeps (plain StoreError; a LockTimeoutError
    # would mean the lease rule starved a refresh, which naps this short must not do). The
    # calls of one replica, and the one flight they share, run one after the other, so a nap of
    # s seconds fails at most s // timeout + 1 of them: a few calls per nap, while memory
    # answers all the others.
    bound = sum(int((end - began) // timeout) + 1 for began, end in naps)
    for report in reports:
        failures = report["store_errors"]
        assert all("StoreError" == kind for _, kind in failures), failures
        assert all(staller.last_wake(when) > when - slack for when, _ in failures), (failures, naps)
        assert len(failures) <= bound, (len(failures), bound)

    # Refresh windows, from the refresh-ahead rule (TokenCache): no flight refreshes a token in
    # the first half of its life, and the replicas' background refresh starts at the moment the
    # rule sets (refresh_skew, 60 s, is more than half of it). A token's life counts from when
    # it was obtained, `hold` after its refresh reached the server. So refreshes are at least
    # half a life and `hold` apart (never two in one window), one `period` apart when all goes
    # well.
    period = fresh_for(lifetime) + hold
    windows = (finished_at - seeded_at) / period
    assert len(refreshes) + 1 == server.stats.refreshes, summary  # + the last check's
    assert len(refreshes) <= windows + 1, (windows, summary)
    gaps = [b - a for a, b in itertools.pairwise(refreshes)]
    assert all(gap > lifetime / 2 + hold - 0.05 * factor for gap in gaps), (period, gaps)
    # And no window is skipped, unless Redis held the refresh up: each refresh (and the one due
    # after the last, while the replicas still ran) comes within `slack` of when it is due, or
    # within `recover` of Redis waking up from a nap begun before it. A nap can hold a due
    # refresh for up to `recover` after it: a lock whose release Redis never got expires
    # lock_ttl after Redis wakes, a failed background refresh is retried POSTPONE later, each
    # after a call that timed out and its in-doubt release.
    recover = lock_ttl + POSTPONE + 2 * timeout + slack
    started = min(r["started"] for r in reports)
    stopped = min(r["ended"] for r in reports)
    due = [max(seeded_at + fresh_for(lifetime), started)] + [at + period for at in refreshes]
    late = [
        (round(d - seeded_at, 2), round(at - d, 2))
        for d, at in zip(due, [*refreshes, stopped], strict=True)
        if at > d + slack and at > staller.last_wake(at) + recover
    ]
    assert [] == late, (late, [(round(b - seeded_at, 2), round(e - b, 2)) for b, e in naps])
    # So, one refresh per window, less the time naps held refreshes up (each window may run
    # `slack` long, and the last one may be under way when the replicas stop).
    held = [at - d - slack for d, at in zip(due, refreshes, strict=False) if at > d + slack]
    free = (stopped - due[0] - sum(held)) / (period + slack)
    assert len(refreshes) >= free - 1, (free, held, summary)
    print(f"{len(refreshes)} refreshes, {windows:.1f} windows, {free:.1f} free of naps")
