"""One device flow per account across clients that share a store (stand-ins for replicas).

These use the real clock with a fast server: a waiting client polls the store while the flow
runs over real sockets, and a virtual clock would race ahead while it polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest

import deviceflow._client
from deviceflow import AccessDeniedError, DeviceCode, DeviceFlowClient, Provider
from deviceflow._claim import Claim
from deviceflow.stores import MemoryStore
from deviceflow.testing import AuthorizationServer

REPLICAS = 4


@pytest.fixture(autouse=True)
def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deviceflow._client, "_CLAIM_POLL", 0.02)


@pytest.fixture
async def server() -> AsyncIterator[AuthorizationServer]:
    async with AuthorizationServer(interval=0.05) as srv:
        yield srv


def replicas(server: AuthorizationServer, store: MemoryStore, on_code: object) -> list[Any]:
    provider = Provider(issuer=server.issuer)
    return [
        DeviceFlowClient(provider, client_id="bot", store=store, on_code=on_code)  # type: ignore[arg-type]
        for _ in range(REPLICAS)
    ]


async def test_replicas_without_a_token_show_one_code(server: AuthorizationServer) -> None:
    """Four clients on one store ask for the same account at once: one code, one grant."""
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        server.approve(code.user_code)

    clients = replicas(server, MemoryStore(), on_code)
    tokens = await asyncio.gather(*(c.get_token("ops") for c in clients))
    for client in clients:
        await client.aclose()
    assert 1 == len(shown)
    assert 1 == server.stats.device_authorizations
    assert 1 == len({t.access_token for t in tokens})


async def test_a_denial_reaches_the_waiting_replicas(server: AuthorizationServer) -> None:
    """The person denies the one code shown: every replica raises AccessDeniedError."""
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        server.deny(code.user_code)

    store = MemoryStore()
    clients = replicas(server, store, on_code)
    outcomes = await asyncio.gather(*(c.get_token("ops") for c in clients), return_exceptions=True)
    assert all(isinstance(o, AccessDeniedError) for o in outcomes), outcomes
    assert 1 == len(shown)
    # The failed flow's claim does not block the next try: it shows a new code.
    shown.clear()
    approving = DeviceFlowClient(
        Provider(issuer=server.issuer),
        client_id="bot",
        store=store,
        on_code=lambda code, account: server.approve(code.user_code),
    )
    assert server.is_valid_access_token((await approving.get_token("ops")).access_token)
    for client in [*clients, approving]:
        await client.aclose()


async def test_a_lapsed_claim_is_taken_over(server: AuthorizationServer) -> None:
    """A claim its process stopped renewing (it died mid-flow) lapses; a replica takes over."""
    store = MemoryStore()
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        server.approve(code.user_code)

    client = DeviceFlowClient(
        Provider(issuer=server.issuer), client_id="bot", store=store, on_code=on_code
    )
    now = datetime.now(timezone.utc).timestamp()
    dead = Claim(flow="dead-process", until=now + 0.3)
    await store.put(client._key("ops") + "//device-flow", dead.encode(), expected_version=None)
    started = asyncio.get_running_loop().time()
    token = await client.get_token("ops")
    waited = asyncio.get_running_loop().time() - started
    await client.aclose()
    assert server.is_valid_access_token(token.access_token)
    assert 1 == len(shown)
    assert waited >= 0.25  # it waited for the claim to lapse, then ran its own flow


async def test_an_unreadable_claim_counts_as_lapsed(server: AuthorizationServer) -> None:
    """Garbage where a claim should be does not block the account: a flow runs."""
    store = MemoryStore()
    client = DeviceFlowClient(
        Provider(issuer=server.issuer),
        client_id="bot",
        store=store,
        on_code=lambda code, account: server.approve(code.user_code),
    )
    for garbage in (b"\xff", b"[]", b'{"flow": 1, "until": 2}', b'{"flow": "x", "until": "nan"}'):
        key = client._key(f"ops-{garbage.hex()}")
        await store.put(key + "//device-flow", garbage, expected_version=None)
        token = await client.get_token(f"ops-{garbage.hex()}")
        assert server.is_valid_access_token(token.access_token)
        assert None is await store.get(key + "//device-flow")  # ended with the flow
    await client.aclose()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("access_denied", "AccessDeniedError"),
        ("expired_token", "ExpiredTokenError"),
        ("invalid_client", "OAuthError"),
        ("failed", "DeviceFlowError"),
    ],
)
def test_claim_failures_are_typed(code: str, error: str) -> None:
    failure = Claim(flow="f", until=0.0, error=code, description="why").failure()
    assert error == type(failure).__name__
    assert "why" in str(failure)
    assert Claim.decode(Claim(flow="f", until=1.5, error=code).encode()) == Claim(
        flow="f", until=1.5, error=code
    )
