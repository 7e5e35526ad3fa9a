"""One replica in the multi-process get_token tests (run as a script, not collected).

It loops on get_token() against a shared store for ``duration`` seconds and checks every token
it gets against the server's protected resource, then prints a JSON report on stdout. With
``--on-code`` it can start device flows (the server approves codes by itself) and counts the
codes it was asked to show. With ``--dpop`` it asks for DPoP tokens, authorizes each resource
request with request_headers() (a proof of the account's key) and reports the keys it used.
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
    keys: set[str] = set()  # thumbprints of the DPoP keys of the tokens it got

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code.user_code)

    async with (
        DeviceFlowClient(
            provider,
            client_id="svc",
            store=store,
            on_code=on_code if args.on_code else None,
            dpop=args.dpop,
        ) as client,
        aiohttp.ClientSession() as session,
    ):
        start = time.monotonic()
        while time.monotonic() - start < args.duration:
            calls += 1
            try:
                token = await client.get_token(args.account)
                headers = await client.request_headers("GET", args.resource, args.account)
            except DeviceFlowError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
                continue
            if token.dpop_key is not None:
                keys.add(token.dpop_key.jkt)
            async with session.get(args.resource, headers=headers) as response:
                status, nonce = response.status, response.headers.get("DPoP-Nonce")
            if status == 401 and nonce is not None:  # RFC 9449 9: once more, with its nonce
                headers = await client.request_headers(
                    "GET", args.resource, args.account, dpop_nonce=nonce
                )
                async with session.get(args.resource, headers=headers) as response:
                    status = response.status
            if status == 200:
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
        "keys": sorted(keys),
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
    parser.add_argument("--dpop", action="store_true", help="asks for DPoP tokens")
    report = asyncio.run(run(parser.parse_args()))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
