"""One replica in the Redis stall test (run as a script, not collected).

It loops on get_token() against a shared Redis for ``duration`` seconds and checks every token
it gets against the server's protected resource. Redis stalls make some calls fail with
StoreError: those are counted, apart from any other error. At the end it closes the client
(which lets a refresh under way finish and stores what it leaves unsaved, within its bound) and
prints a JSON report on stdout, with the client's log lines counted by message.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import sys
import time

import aiohttp

from deviceflow import DeviceFlowClient, DeviceFlowError, Provider, StoreError
from deviceflow.stores import RedisStore


class Tally(logging.Handler):
    """Counts the client's log records by level and message template, and keeps the last ones."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()
        self.last: collections.deque[str] = collections.deque(maxlen=100)

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.msg}"] += 1
        self.last.append(f"{time.monotonic():.3f} {record.levelname} {record.getMessage()}")


async def run(args: argparse.Namespace, tally: Tally) -> dict[str, object]:
    store = RedisStore(args.redis, key=args.key, prefix=args.prefix, timeout=args.timeout)
    calls = accepted = 0
    rejected: list[float] = []
    store_errors: list[tuple[float, str]] = []
    errors: list[str] = []
    async with (
        DeviceFlowClient(
            Provider(issuer=args.issuer),
            client_id="svc",
            store=store,
            http_timeout=args.http_timeout,
            lock_ttl=args.lock_ttl,
        ) as client,
        aiohttp.ClientSession() as session,
    ):
        start = time.monotonic()
        while time.monotonic() - start < args.duration:
            calls += 1
            try:
                token = await client.get_token(args.account)
            except StoreError as exc:
                store_errors.append((time.monotonic(), type(exc).__name__))
                await asyncio.sleep(args.pause)
                continue
            except DeviceFlowError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(args.pause)
                continue
            async with session.get(
                args.resource, headers={"Authorization": token.authorization}
            ) as response:
                if response.status == 200:
                    accepted += 1
                else:
                    rejected.append(time.monotonic() - start)
            await asyncio.sleep(args.pause)
        ended = time.monotonic()
    # aclose() (the end of the block) lets a refresh on its way finish and keeps trying to store
    # what it leaves unsaved, for a bounded time, through any Redis nap.
    unsaved = sorted(client.unsaved_accounts())
    await store.aclose()
    return {
        "started": start,  # time.monotonic(): one clock for every process of this machine
        "ended": ended,
        "calls": calls,
        "accepted": accepted,
        "rejected": rejected,
        "store_errors": store_errors,
        "errors": errors,
        "unsaved": unsaved,
        "log": dict(tally.counts),
        "last": list(tally.last),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--resource", required=True)
    parser.add_argument("--redis", required=True, help="redis:// URL")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--account", default="shared")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, required=True, help="RedisStore timeout")
    parser.add_argument("--http-timeout", type=float, required=True)
    parser.add_argument("--lock-ttl", type=float, required=True)
    parser.add_argument("--pause", type=float, default=0.05)
    tally = Tally()
    logger = logging.getLogger("deviceflow")
    logger.addHandler(tally)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # stderr stays for tracebacks
    report = asyncio.run(run(parser.parse_args(), tally))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
