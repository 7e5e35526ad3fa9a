"""Eight processes share one store and one rotating grant: one refresh per window, no loss.

The built-in server rotates refresh tokens and revokes the whole grant when a used one comes
back (RFC 9700 4.14.2), so a single duplicate refresh anywhere would show up as invalid_grant
and as rejected tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from deviceflow import SystemClock
from deviceflow.stores import EncryptedFileStore, TokenStore, generate_key
from deviceflow.testing import AuthorizationServer
from helpers import make_client, seed, time_factor

WORKER = Path(__file__).with_name("worker.py")
PROCESSES = 8
#: Real seconds, scaled together so that a slow machine keeps their ratios: the access token's
#: life (refreshed when half of it is left), and how long each process loops (several lives).
LIFETIME = math.ceil(2 * time_factor())
DURATION = 4.5 * time_factor()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.authorization_server(
        clock=SystemClock(), access_token_lifetime=LIFETIME, rotate_refresh_tokens=True
    ),
]


async def seed_shared(server: AuthorizationServer, store: TokenStore) -> None:
    """Store the grant all replicas share, as a login would have."""
    async with make_client(server, store=store) as client:
        await seed(client, server, "shared", scope="openid offline_access")


async def run_replicas(
    server: AuthorizationServer,
    store_spec: str,
    key: str,
    *options: str,
    processes: int = PROCESSES,
) -> list[Any]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            "--issuer",
            server.issuer,
            "--resource",
            server.resource_url,
            "--store",
            store_spec,
            f"--key={key}",  # one argument even when the key starts with "-"
            "--duration",
            str(DURATION),
            *options,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    try:
        outputs = await asyncio.wait_for(
            asyncio.gather(*(proc.communicate() for proc in procs)),
            DURATION + 120 * time_factor(),
        )
    finally:  # none left running (and holding pipes) when a replica fails or hangs
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
    assert [0] * processes == [proc.returncode for proc in procs], [e.decode() for _, e in outputs]
    return [json.loads(out) for out, _ in outputs]


def check(server: AuthorizationServer, reports: list[Any]) -> None:
    refreshes = [
        r.at
        for r in server.requests
        if r.endpoint == "token" and r.form.get("grant_type") == "refresh_token"
    ]
    gaps = [b - a for a, b in itertools.pairwise(refreshes)]
    # On failure, show the server's counters and its last requests (time, status).
    summary = (server.stats, [(round(r.at, 3), r.status) for r in server.requests][-40:])
    assert [] == [r["errors"] for r in reports if r["errors"]], summary
    assert [] == [r["rejected"] for r in reports if r["rejected"]]
    assert all(r["accepted"] >= 10 for r in reports)
    assert 0 == server.stats.invalid_grants
    assert 0 == server.stats.grants_revoked
    # Several windows passed, and no window saw two refreshes: refreshes are at least most of
    # a half-lifetime apart (the refresh point is half the token's life).
    assert len(refreshes) >= 3
    assert all(gap > LIFETIME / 2 * 0.8 for gap in gaps), gaps


async def test_file_store_replicas_refresh_once_per_window(
    authorization_server: AuthorizationServer, tmp_path: Path
) -> None:
    """8 processes on one EncryptedFileStore folder: one refresh per window, zero invalid_grant."""
    key = generate_key()
    folder = tmp_path / "tokens"
    await seed_shared(authorization_server, EncryptedFileStore(folder, key=key))
    reports = await run_replicas(authorization_server, f"file:{folder}", key)
    check(authorization_server, reports)


async def test_redis_replicas_refresh_once_per_window(
    authorization_server: AuthorizationServer, redis_server: Any
) -> None:
    """8 processes on one Redis: one refresh per window, zero invalid_grant."""
    from deviceflow.stores import RedisStore

    key = generate_key()
    store = RedisStore(redis_server.url, key=key)
    await seed_shared(authorization_server, store)
    await store.aclose()
    reports = await run_replicas(authorization_server, f"redis:{redis_server.url}", key)
    check(authorization_server, reports)


async def test_redis_cluster_replicas_refresh_once_per_window(
    authorization_server: AuthorizationServer, redis_cluster: Any
) -> None:
    """8 processes on a 3-master Redis Cluster: one refresh per window, zero invalid_grant."""
    from deviceflow.stores import RedisStore

    key = generate_key()
    store = RedisStore(redis_cluster.url, key=key, cluster=True)
    await seed_shared(authorization_server, store)
    await store.aclose()
    reports = await run_replicas(authorization_server, f"cluster:{redis_cluster.url}", key)
    check(authorization_server, reports)


@pytest.mark.authorization_server(interval=0.25, auto_approve_after=1)
async def test_file_store_replicas_share_one_device_flow(
    authorization_server: AuthorizationServer, tmp_path: Path
) -> None:
    """8 processes without a token on one EncryptedFileStore: one device code, shown once."""
    await check_one_device_flow(authorization_server, f"file:{tmp_path / 'tokens'}")


@pytest.mark.authorization_server(interval=0.25, auto_approve_after=1)
async def test_redis_replicas_share_one_device_flow(
    authorization_server: AuthorizationServer, redis_server: Any
) -> None:
    """8 processes without a token on one Redis: one device code, shown once."""
    await check_one_device_flow(authorization_server, f"redis:{redis_server.url}")


async def check_one_device_flow(server: AuthorizationServer, store_spec: str) -> None:
    reports = await run_replicas(server, store_spec, generate_key(), "--on-code")
    assert [] == [r["errors"] for r in reports if r["errors"]], server.stats
    assert 1 == server.stats.device_authorizations
    assert 1 == sum(len(r["shown"]) for r in reports)
    assert [] == [r["rejected"] for r in reports if r["rejected"]]
    assert all(r["accepted"] >= 5 for r in reports)
    assert 0 == server.stats.invalid_grants


@pytest.mark.authorization_server(interval=0.25, auto_approve_after=1, dpop=True, dpop_nonce=True)
async def test_file_store_replicas_share_one_dpop_key(
    authorization_server: AuthorizationServer, tmp_path: Path
) -> None:
    """3 DPoP processes on one EncryptedFileStore: one device flow, one key, every proof and
    every refresh accepted (the server binds the grant to the key of its first proof)."""
    await check_one_dpop_key(authorization_server, f"file:{tmp_path / 'tokens'}")


@pytest.mark.authorization_server(interval=0.25, auto_approve_after=1, dpop=True, dpop_nonce=True)
async def test_redis_replicas_share_one_dpop_key(
    authorization_server: AuthorizationServer, redis_server: Any
) -> None:
    """3 DPoP processes on one Redis: one device flow, one key, every proof accepted."""
    await check_one_dpop_key(authorization_server, f"redis:{redis_server.url}")


async def check_one_dpop_key(server: AuthorizationServer, store_spec: str) -> None:
    reports = await run_replicas(
        server, store_spec, generate_key(), "--on-code", "--dpop", processes=3
    )
    summary = (server.stats, [(round(r.at, 3), r.endpoint, r.status) for r in server.requests])
    assert [] == [r["errors"] for r in reports if r["errors"]], summary
    assert [] == [r["rejected"] for r in reports if r["rejected"]], summary
    assert all(r["accepted"] >= 3 for r in reports), summary
    assert 1 == server.stats.device_authorizations
    # The first refresh proves the key the device flow bound the grant to: a replica with
    # another key would get invalid_dpop_proof, and its resource requests would be refused.
    assert server.stats.refreshes >= 1, summary
    assert (0, 0) == (server.stats.invalid_grants, server.stats.dpop_proofs_refused)
    assert 1 == len({key for r in reports for key in r["keys"]})
    assert all(r["keys"] for r in reports)
