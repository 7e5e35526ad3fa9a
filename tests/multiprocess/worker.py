"""One replica in the multi-process get_token tests (run as a script, not collected).

It loops on get_token() against a shared store for ``duration`` seconds and checks every token
it gets against the server's protected resource, then prints a JSON report on stdout. With
``--on-code`` it can start device flows (the server approves codes by itself) and counts the
codes it was asked to show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp

from deviceflow import DeviceCode, DeviceFlowClient, DeviceFlowError, Provider
from deviceflow.stores import EncryptedFileStore, TokenStore


def open_store(spec: str, key: str) -> TokenStore:
    kind, _, where = spec.partition(":")
    if kind == "file":
        return EncryptedFileStore(where, key=key)
    from deviceflow.stores import RedisStore

    return RedisStore(where, key=key, cluster=kind == "cluster")


async def run(args: argparse.Namespace) -> dict[str, object]:
    store = open_store(args.store, args.key)
    provider = Provider(issuer=args.issuer)
    calls = accepted = 0
    rejected: list[float] = []
    errors: list[str] = []
    shown: list[str] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code.user_code)

    async with (
        DeviceFlowClient(
            provider, client_id="svc", store=store, on_code=on_code if args.on_code else None
        ) as client,
        aiohttp.ClientSession() as session,
    ):
        start = time.monotonic()
        while time.monotonic() - start < args.duration:
            calls += 1
            try:
                token = await client.get_token(args.account)
            except DeviceFlowError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
                continue
            async with session.get(
                args.resource, headers={"Authorization": token.authorization}
            ) as response:
                if response.status == 200:
                    accepted += 1
                else:
                    rejected.append(time.monotonic() - start)
            await asyncio.sleep(args.pause)
    await store.aclose()
    return {
        "calls": calls,
        "accepted": accepted,
        "rejected": rejected,
        "errors": errors,
        "shown": shown,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--resource", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--account", default="shared")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--pause", type=float, default=0.02)
    parser.add_argument("--on-code", action="store_true", help="may run device flows")
    report = asyncio.run(run(parser.parse_args()))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
