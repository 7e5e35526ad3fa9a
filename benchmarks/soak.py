"""Soak: many accounts through repeated expiry and refresh, against a faulty server (issue 7).

The built-in authorization server runs in a child process (so the client's memory is measured
alone) with short-lived access tokens and rotating refresh tokens (reuse revokes the grant,
RFC 9700 4.14.2). A background task there arms single-use faults on the token endpoint at
random, at per-request rates: about 5 % answered 5xx, 1 % dropped connections, 0.5 % slow_down.

The client process signs ``--accounts`` accounts in with real device flows (faults already on),
then every account calls ``get_token()`` every 0.25-1 s for ``--duration`` seconds while its
tokens expire and are refreshed. At the end faults are switched off and every account is
checked: its current access token must be accepted by the server's protected resource and its
refresh token must still refresh. Reported:

- refresh requests the server received (retries included) and successful refreshes, against
  the minimum needed (``floor(duration / lifetime)`` per account) and the expected number with
  refresh-ahead (``duration / (lifetime - skew)`` per account);
- errors surfaced to callers of ``get_token()`` (only when retries are exhausted);
- RSS of the client process at the start of the soak phase and at the end (limit: +10 %),
  measured after garbage collection and glibc's malloc_trim (so it shows live memory, not the
  allocator's high-water mark of a busy moment), and also as found;
- tokens lost (grants revoked by reuse detection, accounts needing a new sign-in, final checks
  that fail): must be 0.

Run: ``python benchmarks/soak.py [--duration 600] [--accounts 1000] [--lifetime 20]``
(``nox -s soak -- --duration 60`` for a short run). Exit status 1 when a token is lost or
memory grows by more than 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import sys
import time
from typing import Any

import aiohttp
import attrs

from deviceflow import (
    DeviceFlowClient,
    DeviceFlowError,
    FlowState,
    InvalidGrantError,
    Provider,
    ReauthorizationRequiredError,
)
from deviceflow.testing import AuthorizationServer, Fault

REFRESH_GRANT = "refresh_token"
SLOW_DOWN_BODY = '{"error": "slow_down", "error_description": "soak: slow down"}'


@attrs.frozen
class Rates:
    """Per-request probabilities of each fault on the token endpoint."""

    server_error: float
    drop: float
    slow_down: float


def heap() -> str:
    """Python's own view of the heap: allocated blocks and objects tracked by the collector.

    Flat figures with a growing RSS mean allocator high-water marks (more connections or
    buffers at a busy moment), not objects kept alive.
    """
    return f"{sys.getallocatedblocks()} blocks, {len(gc.get_objects())} objects"


def trim() -> None:
    """Collect garbage and hand free heap memory back to the OS (glibc's malloc_trim).

    Without it RSS keeps the high-water mark of a busy moment (more connections and buffers in
    flight), which is not memory held; after it, RSS shows what is live.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS stays as it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # POSIX only, like this fallback

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# --- the server process ------------------------------------------------------------------------


def serve(
    conn: multiprocessing.connection.Connection, lifetime: int, rates: Rates, seed: int
) -> None:
    """Child process: the test server plus the fault injector, driven over ``conn``."""
    asyncio.run(_serve(conn, lifetime, rates, seed))


async def _serve(
    conn: multiprocessing.connection.Connection, lifetime: int, rates: Rates, seed: int
) -> None:
    rng = random.Random(seed)
    injected: collections.Counter[str] = collections.Counter()
    enabled = True
    async with AuthorizationServer(
        interval=1,
        access_token_lifetime=lifetime,
        auto_approve_after=1,
        rotate_refresh_tokens=True,
    ) as server:
        conn.send((server.issuer, server.resource_url))

        async def inject() -> None:
            # Fault has no probability: watch the request log and, for each new request, arm a
            # single-use fault for a later token request with the configured probabilities.
            seen = 0
            while True:
                await asyncio.sleep(0.05)
                total = len(server.requests)
                for _ in range(total - seen):
                    if not enabled:
                        break
                    roll = rng.random()
                    if roll < rates.server_error:
                        status = rng.choice([500, 502, 503, 504])
                        server.faults.add(Fault(endpoint="token", status=status))
                        injected["5xx"] += 1
                    elif roll < rates.server_error + rates.drop:
                        server.faults.add(Fault(endpoint="token", drop=True))
                        injected["drop"] += 1
                    elif roll < rates.server_error + rates.drop + rates.slow_down:
                        server.faults.add(
                            Fault(
                                endpoint="token",
                                status=400,
                                content_type="application/json",
                                body=SLOW_DOWN_BODY,
                            )
                        )
                        injected["slow_down"] += 1
                seen = total

        injector = asyncio.get_running_loop().create_task(inject())
        try:
            while True:
                command = await asyncio.to_thread(conn.recv)
                if command == "faults-off":
                    enabled = False
                    server.faults.clear()
                    conn.send(None)
                elif command == "stats":
                    conn.send(_stats(server, injected))
                else:
                    break
        finally:
            injector.cancel()


def _stats(server: AuthorizationServer, injected: collections.Counter[str]) -> dict[str, Any]:
    refresh_requests = faulted = 0
    for record in server.requests:
        if record.endpoint == "token" and record.form.get("grant_type") == REFRESH_GRANT:
            refresh_requests += 1
            faulted += record.fault is not None
    return {
        **attrs.asdict(server.stats),
        "refresh_requests": refresh_requests,
        "refresh_requests_faulted": faulted,
        "requests": len(server.requests),
        "injected": dict(injected),
    }


class Server:
    """The parent's handle on the server process."""

    def __init__(self, lifetime: int, rates: Rates, seed: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve, args=(child, lifetime, rates, seed), daemon=True)
        self._proc.start()
        self.issuer, self.resource_url = self._conn.recv()

    async def ask(self, command: str) -> Any:
        await asyncio.to_thread(self._conn.send, command)
        return await asyncio.to_thread(self._conn.recv)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


# --- the client process ------------------------------------------------------------------------


@attrs.define
class Tally:
    calls: int = 0
    token_changes: int = 0
    stale_tokens: int = 0
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    lost: set[str] = attrs.Factory(set)


async def sign_in(client: DeviceFlowClient, account: str, tally: Tally) -> None:
    """One real device flow (the server approves after the first poll); retried if it fails."""
    for _ in range(5):
        async for event in client.authorize(account):
            if event.state is FlowState.GRANTED:
                return
            if event.error is not None:
                tally.errors[f"sign-in {type(event.error).__name__}"] += 1
    tally.lost.add(account)


async def use(
    client: DeviceFlowClient, account: str, deadline: float, tally: Tally, rng: random.Random
) -> None:
    """Call get_token() until ``deadline``, as a service would before each API call."""
    last = None
    await asyncio.sleep(rng.uniform(0, 1))
    while time.monotonic() < deadline:
        try:
            token = await client.get_token(account)
        except (ReauthorizationRequiredError, InvalidGrantError) as exc:
            tally.errors[type(exc).__name__] += 1
            tally.lost.add(account)
            return
        except DeviceFlowError as exc:
            tally.errors[type(exc).__name__] += 1
        else:
            tally.calls += 1
            if token.access_token != last:
                tally.token_changes += last is not None
                last = token.access_token
            if token.expires_within(0):
                tally.stale_tokens += 1
        await asyncio.sleep(rng.uniform(0.25, 1.0))


async def final_check(
    client: DeviceFlowClient, server: Server, accounts: list[str], tally: Tally
) -> collections.Counter[str]:
    """Every account's token works at the resource and its refresh token still refreshes."""
    failures: collections.Counter[str] = collections.Counter()
    limit = asyncio.Semaphore(100)
    async with aiohttp.ClientSession() as session:

        async def check(account: str) -> None:
            if account in tally.lost:
                return
            async with limit:
                try:
                    token = await client.get_token(account)
                    headers = {"Authorization": token.authorization}
                    async with session.get(server.resource_url, headers=headers) as resp:
                        if resp.status != 200:
                            failures["access token refused by the resource"] += 1
                            tally.lost.add(account)
                            return
                    await client.refresh(account)
                except DeviceFlowError as exc:
                    failures[f"final check {type(exc).__name__}"] += 1
                    tally.lost.add(account)

        await asyncio.gather(*(check(account) for account in accounts))
    return failures


async def soak(args: argparse.Namespace) -> int:
    rates = Rates(server_error=args.p5xx, drop=args.pdrop, slow_down=args.pslow)
    server = Server(args.lifetime, rates, args.seed)
    rng = random.Random(args.seed + 1)
    accounts = [f"account-{i:05d}" for i in range(args.accounts)]
    tally = Tally()
    try:
        client = DeviceFlowClient(
            Provider(issuer=server.issuer),
            client_id="soak",
            scope="openid offline_access",
            refresh_skew=args.skew,
        )
        async with client:
            began = time.monotonic()
            limit = asyncio.Semaphore(200)

            async def signed_in(account: str) -> None:
                async with limit:
                    await sign_in(client, account, tally)

            await asyncio.gather(*(signed_in(a) for a in accounts))
            sign_in_seconds = time.monotonic() - began
            before = await server.ask("stats")
            gc.collect()
            rss_start_raw = rss_bytes()
            trim()
            rss_start = rss_bytes()
            heap_start = heap()
            start = time.monotonic()
            deadline = start + args.duration
            workers = [
                asyncio.ensure_future(use(client, a, deadline, tally, rng)) for a in accounts
            ]
            report_every = max(10.0, args.duration / 10)
            rss_first_report = None
            while not all(w.done() for w in workers):
                await asyncio.wait(workers, timeout=report_every)
                now = time.monotonic() - start
                if rss_first_report is None:
                    rss_first_report = (now, rss_bytes())
                print(
                    f"  {now:6.0f} s: {tally.calls} get_token calls, {tally.token_changes} new "
                    f"tokens seen, errors {dict(tally.errors)}, RSS {rss_bytes() / 2**20:.1f} MiB, "
                    f"{heap()}",
                    flush=True,
                )
            elapsed = time.monotonic() - start
            after = await server.ask("stats")
            workers.clear()  # the benchmark's own tasks: measure the client, as at the start
            gc.collect()
            rss_end_raw = rss_bytes()
            trim()
            rss_end = rss_bytes()
            heap_end = heap()
            await server.ask("faults-off")
            failures = await final_check(client, server, accounts, tally)
            final = await server.ask("stats")
    finally:
        server.stop()

    made = after["refresh_requests"] - before["refresh_requests"]
    faulted = after["refresh_requests_faulted"] - before["refresh_requests_faulted"]
    succeeded = after["refreshes"] - before["refreshes"]
    minimum = args.accounts * math.floor(elapsed / args.lifetime)
    expected = args.accounts * elapsed / (args.lifetime - min(args.skew, args.lifetime / 2))
    revoked = final["grants_revoked"]
    lost = len(tally.lost) + revoked
    growth = (rss_end - rss_start) / rss_start
    surfaced = sum(n for kind, n in tally.errors.items() if not kind.startswith("sign-in"))
    print()
    print(
        f"soak: {args.accounts} accounts for {elapsed:.0f} s; access tokens live {args.lifetime} s"
    )
    print(f"      and are refreshed {args.skew:g} s ahead; sign-in took {sign_in_seconds:.1f} s")
    print(f"faults injected (whole run): {final['injected']}")
    print(f"get_token calls: {tally.calls}; token changes seen by callers: {tally.token_changes}")
    print(f"refresh requests made: {made} ({faulted} answered by a fault), successful: {succeeded}")
    print(f"minimum needed: {minimum} (ratio made/minimum {made / max(1, minimum):.3f}); ")
    print(f"      expected with refresh-ahead: {expected:.0f} (ratio {made / expected:.3f})")
    print(f"errors surfaced to callers: {surfaced} {dict(tally.errors)}")
    print(f"stale tokens returned: {tally.stale_tokens}")
    print(f"final check failures: {dict(failures)}")
    print(
        f"RSS after gc and malloc_trim: start {rss_start / 2**20:.1f} MiB, "
        f"end {rss_end / 2**20:.1f} MiB ({growth:+.1%}; limit +10%)"
    )
    raw_growth = (rss_end_raw - rss_start_raw) / rss_start_raw
    print(
        f"RSS as found (with the allocator's high-water mark): start "
        f"{rss_start_raw / 2**20:.1f} MiB, end {rss_end_raw / 2**20:.1f} MiB ({raw_growth:+.1%})"
    )
    if rss_first_report is not None:
        at, rss_warm = rss_first_report
        warm_growth = (rss_end_raw - rss_warm) / rss_warm
        print(
            f"RSS after the first {at:.0f} s (every account refreshed at least once): "
            f"{rss_warm / 2**20:.1f} MiB; from there to the end {warm_growth:+.1%}"
        )
    print(f"Python heap: start {heap_start}; end {heap_end}")
    print(f"grants revoked by the server: {revoked}; tokens lost: {lost}")
    ok = lost == 0 and growth <= 0.10
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--lifetime", type=int, default=20, help="access token lifetime, s")
    parser.add_argument("--skew", type=float, default=2.0, help="refresh this far ahead, s")
    parser.add_argument("--p5xx", type=float, default=0.05)
    parser.add_argument("--pdrop", type=float, default=0.01)
    parser.add_argument("--pslow", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "7")))
    args = parser.parse_args()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
