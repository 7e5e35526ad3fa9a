"""Memory per cached account, and the start-up time of ``deviceflow token``.

(a) A client with the default MemoryStore holding N accounts, each with an access token of
    1,200 characters and a refresh token of 400 (1.6 KB of token): resident memory per account
    (RSS after the accounts were saved and read once, minus RSS before, after a full garbage
    collection and glibc's malloc_trim, so that freed memory is not counted), as a multiple of
    the token's size. Each size runs in a fresh process. Target: 1.6x or less at 100,000.
    Beside it, cached get_token against a dict lookup at the same size (ns per call).
(b) ``deviceflow token`` for an account signed in with a cached, valid token, against
    ``python -c pass``: median wall time of 20 runs each, interleaved. Target: 12x or less.

Run: ``python benchmarks/bench_memory.py [--sizes 10000,100000,1000000] [--runs 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _harness import machine, rss, server_process, settle, table

TARGET_MEMORY = 1.6
TARGET_STARTUP = 12.0
BATCH = 1000


async def one_size(n: int) -> dict[str, float]:
    """(a) for n accounts, in this process (run it in a fresh one)."""
    from deviceflow import DeviceFlowClient, Provider, Token

    provider = Provider(
        issuer="https://idp.example",
        device_authorization_endpoint="https://idp.example/device",
        token_endpoint="https://idp.example/token",
    )
    client = DeviceFlowClient(provider, client_id="svc")
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    accounts = [f"tenant-{i}" for i in range(n)]
    settle()
    before = rss()
    for account in accounts:
        token = Token(
            access_token=secrets.token_urlsafe(900),  # 1,200 characters
            refresh_token=secrets.token_urlsafe(300),  # 400 characters
            expires_at=expires,
        )
        await client.save_token(account, token)
    for account in accounts:
        await client.get_token(account)
    settle()
    per_account = (rss() - before) / n

    baseline = dict.fromkeys(accounts, token)

    async def lookup(account: str) -> object:
        return baseline[account]

    picks = [accounts[(i * 7919) % n] for i in range(BATCH)]
    ours, theirs = [], []
    for _ in range(30):
        start = time.perf_counter_ns()
        for account in picks:
            await client.get_token(account)
        ours.append((time.perf_counter_ns() - start) / BATCH)
        start = time.perf_counter_ns()
        for account in picks:
            await lookup(account)
        theirs.append((time.perf_counter_ns() - start) / BATCH)
    await client.aclose()
    return {
        "per_account": per_account,
        "ratio": per_account / 1600,
        "get_token_ns": statistics.median(ours),
        "dict_ns": statistics.median(theirs),
    }


def startup(runs: int) -> tuple[float, float]:
    """(b): median seconds of ``deviceflow token`` (cached) and of ``python -c pass``."""
    with tempfile.TemporaryDirectory() as home, server_process("--auto-approve", "0") as server:
        env = {
            **os.environ,
            "HOME": home,
            "XDG_CONFIG_HOME": f"{home}/config",
            "XDG_DATA_HOME": f"{home}/data",
            "DEVICEFLOW_STORE": f"{home}/store",
            "DEVICEFLOW_KEY": "",
        }
        env.pop("DEVICEFLOW_KEY")
        cli = [sys.executable, "-m", "deviceflow"]
        target = ["--issuer", server.issuer, "--client-id", "bench"]
        login = subprocess.run(
            [*cli, "login", "--no-browser", *target], env=env, capture_output=True, text=True
        )
        if login.returncode != 0:
            raise RuntimeError(f"login failed: {login.stderr}")
        ours, bare = [], []
        for _ in range(runs):
            start = time.perf_counter()
            done = subprocess.run([*cli, "token", *target], env=env, capture_output=True)
            ours.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise RuntimeError(f"token failed: {done.stderr.decode()}")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            bare.append(time.perf_counter() - start)
        return statistics.median(ours), statistics.median(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(one_size(args.child))))
        return
    print(f"bench_memory: {machine()}")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        child = subprocess.run(
            [sys.executable, str(Path(__file__)), "--child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        found = json.loads(child.stdout)
        met = found["ratio"] <= TARGET_MEMORY
        rows.append(
            [
                f"(a) {n:,} accounts",
                f"{found['per_account']:,.0f} B",
                f"{found['ratio']:.2f}x",
                f"{found['get_token_ns']:.0f} ns vs dict {found['dict_ns']:.0f} ns "
                f"({found['get_token_ns'] / found['dict_ns']:.2f}x)",
                ("met" if met else "MISSED") if n == 100_000 else "",
            ]
        )
    ours, bare = startup(args.runs)
    ratio = ours / bare
    rows.append(
        [
            "(b) deviceflow token, cached",
            f"{ours * 1000:.0f} ms",
            f"{ratio:.1f}x",
            f"python -c pass {bare * 1000:.0f} ms",
            "met" if ratio <= TARGET_STARTUP else "MISSED",
        ]
    )
    print(table(["measure", "per account / time", "ratio", "beside", "target"], rows))


if __name__ == "__main__":
    main()
