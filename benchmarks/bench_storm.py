"""Refresh storms: many accounts whose tokens expire together, against the test server in its
own process (benchmarks/_storm_server.py).

(a) Expired: N accounts whose stored tokens have all expired, every caller at once; wall time
    to a token for each, beside bare aiohttp POSTing the same N refresh requests (same
    connection limit). Target: 1.2x or better; failed calls: 0.
(b) Ahead: N accounts signed in at the same moment (lifetime L), every account asked for its
    token every 0.5 s until every token has been refreshed. Counted at the server: refreshes
    that arrived after the token they replaced had expired (target 0); the spread of the
    refresh moments; failed calls (target 0).
(c) Ahead, with the token endpoint answering 429 and ``Retry-After: R`` for a window of W
    seconds that opens when the first refreshes are due: also counted, requests of a refresh
    token that came back sooner than R after its 429 (target 0), and requests the client sent
    while its gate was closed: after it had read a 429, sooner than R later (timed in the
    client's transport; target 0). For information, requests that reached the server sooner
    than R after a 429 it had answered at least 50 ms before: these include requests the
    client had sent before it read that 429, still waiting in the server's queue. No refresh
    can succeed inside the window, so the whole cohort must be refreshed between its end and
    the expiry (L/2 - W seconds: 20 s by default); at (a)'s rate of
    refreshes, the benchmark prints how many of them cannot make it (the least possible
    refreshes after expiry on this machine).

Run: ``python benchmarks/bench_storm.py [--accounts N] [--lifetime L]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

from _harness import machine, table
from deviceflow import (
    AiohttpTransport,
    ClientAuth,
    DeviceFlowClient,
    DeviceFlowError,
    Provider,
    Request,
    Response,
    Token,
)

CLIENT_ID = "storm"
TARGET_WALL = 1.2


class Server:
    """benchmarks/_storm_server.py in a child process, spoken to over its stdin and stdout."""

    def __init__(self, lifetime: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_storm_server.py")), str(lifetime)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.issuer = self.proc.stdout.readline().strip()

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(10)

    @property
    def provider(self) -> Provider:
        return Provider(
            issuer=self.issuer,
            device_authorization_endpoint=self.issuer + "/device_authorization",
            token_endpoint=self.issuer + "/token",
        )


def tokens_from(grants: Sequence[Sequence[Any]], expires_at: datetime) -> list[Token]:
    return [Token(access_token=a, refresh_token=r, expires_at=expires_at) for a, r, _ in grants]


class Recording(AiohttpTransport):
    """The client's own transport, noting on the machine's monotonic clock when each token
    request left and when each 429 was read: the gate's rule is about what the client knew."""

    def __init__(self) -> None:
        super().__init__(auth=ClientAuth(client_id=CLIENT_ID))
        self.sent: list[float] = []
        self.busy_read: list[float] = []

    async def send(self, request: Request, *, timeout: float | None = None) -> Response:
        self.sent.append(time.monotonic())
        response = await super().send(request, timeout=timeout)
        if response.status == 429:
            self.busy_read.append(time.monotonic())
        return response


def sent_while_closed(transport: Recording, retry_after: float) -> int:
    """Requests the client sent after reading a 429 and before its Retry-After had passed."""
    closed = sorted(transport.busy_read)
    early = 0
    index, last = 0, -1e18
    for at in sorted(transport.sent):
        while index < len(closed) and closed[index] <= at:
            last = closed[index]
            index += 1
        early += at < last + retry_after
    return early


async def seeded(
    server: Server, tokens: Sequence[Token], transport: Recording | None = None
) -> DeviceFlowClient:
    client = DeviceFlowClient(server.provider, client_id=CLIENT_ID, transport=transport)
    for n, token in enumerate(tokens):
        await client.save_token(f"acct-{n}", token)
    return client


async def expired(server: Server, n: int) -> tuple[float, float, int, float, float]:
    """(a): wall seconds for deviceflow and for bare POSTs, deviceflow's failed calls, and the
    client's CPU seconds for each."""
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    client = await seeded(server, tokens_from(server.ask(f"issue {n}"), past))
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(
        *(client.get_token(f"acct-{i}") for i in range(n)), return_exceptions=True
    )
    ours, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    await client.aclose()
    failed = sum(isinstance(r, BaseException) for r in results)
    # The bare POSTs' collections must not walk deviceflow's client and its 20,000 tokens.
    del client, results
    gc.collect()

    bare_grants = server.ask(f"issue {n}")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def post(refresh_token: str) -> None:
            form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
            form["client_id"] = CLIENT_ID
            async with session.post(
                server.issuer + "/token", data=form, headers={"Accept": "application/json"}
            ) as response:
                body = json.loads(await response.read())
            if "access_token" not in body:
                raise RuntimeError(f"bare refresh failed: {body}")

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(post(g[1]) for g in bare_grants))
        bare, bare_cpu = time.perf_counter() - start, time.process_time() - cpu
    return ours, bare, failed, ours_cpu, bare_cpu


async def ahead(
    server: Server, n: int, lifetime: int, busy: tuple[float, int] | None
) -> dict[str, Any]:
    """(b) and (c): callers keep asking while a cohort's tokens approach their common expiry."""
    grants = server.ask(f"issue {n}")
    issued_wall = datetime.now(timezone.utc)
    issued_mono = time.monotonic()
    transport = Recording()
    expires = issued_wall + timedelta(seconds=lifetime)
    client = await seeded(server, tokens_from(grants, expires), transport)
    expires_mono = issued_mono + lifetime
    first_due = expires_mono - min(60.0, lifetime / 2)
    seen_before = len(server.ask("report"))
    failed = calls = 0
    busy_sent = False
    held: dict[int, Token] = {}
    try:
        while time.monotonic() < expires_mono + 5:
            if busy is not None and not busy_sent and time.monotonic() >= first_due:
                server.ask(f"busy {busy[0]} {busy[1]}")
                busy_sent = True
            # A caller holding a token with more than 1.5 s left is answered from the cache
            # without suspending (a refresh due starts in the background), so it is called
            # inline; the others each get a task. Tasks for every call would cost the client
            # more CPU than the refreshes do (20,000 tasks every 0.5 s).
            soon = datetime.now(timezone.utc) + timedelta(seconds=1.5)
            blocked = []
            for i in range(n):
                token = held.get(i)
                if token is not None and token.expires_at is not None and token.expires_at > soon:
                    held[i] = await client.get_token(f"acct-{i}", timeout=30)
                else:
                    blocked.append(i)
            results = await asyncio.gather(
                *(client.get_token(f"acct-{i}", timeout=30) for i in blocked),
                return_exceptions=True,
            )
            for i, result in zip(blocked, results, strict=True):
                if isinstance(result, Token):
                    held[i] = result
            calls += n
            failed += sum(isinstance(r, (DeviceFlowError, TimeoutError)) for r in results)
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    requests = server.ask("report")[seen_before:]
    ours = {g[1] for g in grants}
    first = [r for r in requests if r[2] in ours]  # refreshes of the cohort's own tokens
    ok = [r for r in first if r[1] == 200]
    busy_answers = [r for r in requests if r[1] == 429]
    early_same, early_any = 0, 0
    if busy is not None:
        retry_after = busy[1]
        last_429: dict[str, float] = {}
        answered = sorted(r[0] for r in busy_answers)
        seen = -1e18  # the latest 429 the client can have read before sending (50 ms earlier)
        index = 0
        for at, _status, refresh_token in sorted(requests, key=lambda r: r[0]):
            while index < len(answered) and answered[index] < at - 0.05:
                seen = answered[index]
                index += 1
            if refresh_token in last_429 and at < last_429[refresh_token] + retry_after:
                early_same += 1
            if at < seen + retry_after:
                early_any += 1
            if _status == 429:
                last_429[refresh_token] = at
    moments = sorted(r[0] - issued_mono for r in ok)
    return {
        "refreshed": len(ok),
        "after_expiry": sum(r[0] > expires_mono for r in ok),
        "spread": (moments[-1] - moments[0]) if moments else 0.0,
        "p10_p90": (
            (moments[len(moments) // 10], moments[9 * len(moments) // 10]) if moments else (0, 0)
        ),
        "busy_answers": len(busy_answers),
        "early_same_token": early_same,
        "early_while_closed": early_any,
        "sent_while_closed": sent_while_closed(transport, busy[1]) if busy is not None else 0,
        "failed": failed,
        "calls": calls,
    }


async def main(args: argparse.Namespace) -> None:
    print(f"bench_storm: {machine()}; {args.accounts:,} accounts, lifetime {args.lifetime} s")
    server = Server(args.lifetime)
    try:
        walls = []
        for round_ in range(args.rounds):
            ours, bare, failed, ours_cpu, bare_cpu = await expired(server, args.accounts)
            walls.append((ours, bare, failed, ours_cpu, bare_cpu))
            print(
                f"  (a) round {round_ + 1}: deviceflow {ours:.2f} s, bare {bare:.2f} s, "
                f"ratio {ours / bare:.2f}x; client CPU {ours_cpu:.2f} s vs {bare_cpu:.2f} s, "
                f"ratio {ours_cpu / bare_cpu:.2f}x; failed {failed}; "
                f"load {os.getloadavg()[0]:.1f}"
            )
        ratio = statistics.median(w[0] / w[1] for w in walls)
        cpu_ratio = statistics.median(w[3] / w[4] for w in walls)
        rate = statistics.median(args.accounts / w[0] for w in walls)
        rows = [
            [
                "(a) expired, wall vs bare POSTs",
                f"{ratio:.2f}x",
                f"<= {TARGET_WALL}x",
                "met" if ratio <= TARGET_WALL else "MISSED",
            ],
            ["(a) expired, client CPU vs bare POSTs", f"{cpu_ratio:.2f}x", "", ""],
            ["(a) refreshes per second (deviceflow)", f"{rate:,.0f}", "", ""],
            ["(a) failed calls", str(sum(w[2] for w in walls)), "0", ""],
        ]
        plain = await ahead(server, args.accounts, args.lifetime, None)
        print(f"  (b) {plain}")
        busy = await ahead(server, args.accounts, args.lifetime, (args.busy, args.retry_after))
        print(f"  (c) {busy}")
        for name, found in (("(b)", plain), ("(c)", busy)):
            rows.append([f"{name} refreshes after expiry", str(found["after_expiry"]), "0", ""])
            rows.append([f"{name} failed calls", str(found["failed"]), "0", ""])
            rows.append(
                [
                    f"{name} refresh moments, 10th-90th percentile (s after sign-in)",
                    "{:.1f} to {:.1f}".format(*found["p10_p90"]),
                    "spread",
                    "",
                ]
            )
        # No refresh can pass before the 429 window ends, so the whole cohort must be refreshed
        # between its end and the common expiry; at (a)'s rate this many cannot be.
        left = min(60.0, args.lifetime / 2) - args.busy
        least = max(0, round(args.accounts - rate * left))
        rows.append(
            [
                f"(c) least possible after expiry (N - {rate:,.0f}/s x {left:.0f} s)",
                f"{least:,}",
                "",
                "",
            ]
        )
        rows.append(["(c) 429 answers", str(busy["busy_answers"]), "", ""])
        rows.append(["(c) retries sooner than Retry-After", str(busy["early_same_token"]), "0", ""])
        rows.append(
            ["(c) requests sent while the gate was closed", str(busy["sent_while_closed"]), "0", ""]
        )
        rows.append(
            [
                "(c) requests reaching the server within Retry-After of a 429 (those in flight)",
                str(busy["early_while_closed"]),
                "",
                "",
            ]
        )
        print()
        print(table(["measure", "result", "target", ""], rows))
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--lifetime", type=int, default=60, help="access token lifetime, s")
    parser.add_argument("--rounds", type=int, default=5, help="(a) rounds")
    parser.add_argument("--busy", type=float, default=10.0, help="(c) 429 window, s")
    parser.add_argument("--retry-after", type=int, default=3, help="(c) Retry-After, s")
    asyncio.run(main(parser.parse_args()))
