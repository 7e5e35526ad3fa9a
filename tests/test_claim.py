"""One device flow per account across clients that share a store (stand-ins for replicas).

These use the real clock with a fast server: a waiting client polls the store while the flow
runs over real sockets, and a virtual clock would race ahead while it polls.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import deviceflow._waiting
from deviceflow import (
    AccessDeniedError,
    DeviceCode,
    DeviceFlowClient,
    DeviceFlowError,
    ExpiredTokenError,
    InvalidClientError,
    OAuthError,
    ProtocolError,
    Provider,
    StoreError,
    SystemClock,
    TransportError,
)
from deviceflow._claim import Claim, FlowClaim
from deviceflow.stores import EncryptedFileStore, MemoryStore, generate_key
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock
from helpers import eventually, make_client, seed, time_factor

REPLICAS = 4


@pytest.fixture(autouse=True)
def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deviceflow._waiting, "CLAIM_POLL", 0.02)


pytestmark = pytest.mark.authorization_server(clock=SystemClock(), interval=0.05)


def replicas(server: AuthorizationServer, store: MemoryStore, on_code: object) -> list[Any]:
    return [
        make_client(server, client_id="bot", store=store, on_code=on_code) for _ in range(REPLICAS)
    ]


async def test_replicas_without_a_token_show_one_code(
    authorization_server: AuthorizationServer,
) -> None:
    """Four clients on one store ask for the same account at once: one code, one grant."""
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        authorization_server.approve(code.user_code)

    clients = replicas(authorization_server, MemoryStore(), on_code)
    tokens = await asyncio.gather(*(c.get_token("ops") for c in clients))
    for client in clients:
        await client.aclose()
    assert 1 == len(shown)
    assert 1 == authorization_server.stats.device_authorizations
    assert 1 == len({t.access_token for t in tokens})


async def test_a_denial_reaches_the_waiting_replicas(
    authorization_server: AuthorizationServer,
) -> None:
    """The person denies the one code shown: every replica raises AccessDeniedError."""
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        authorization_server.deny(code.user_code)

    store = MemoryStore()
    clients = replicas(authorization_server, store, on_code)
    outcomes = await asyncio.gather(*(c.get_token("ops") for c in clients), return_exceptions=True)
    assert all(isinstance(o, AccessDeniedError) for o in outcomes), outcomes
    assert 1 == len(shown)
    # The failed flow's claim does not block the next try: it shows a new code.
    shown.clear()
    approving = make_client(
        authorization_server,
        client_id="bot",
        store=store,
        on_code=lambda code, account: authorization_server.approve(code.user_code),
    )
    assert authorization_server.is_valid_access_token(
        (await approving.get_token("ops")).access_token
    )
    for client in [*clients, approving]:
        await client.aclose()


async def test_a_lapsed_claim_is_taken_over(authorization_server: AuthorizationServer) -> None:
    """A claim its process stopped renewing (it died mid-flow) lapses; a replica takes over."""
    store = MemoryStore()
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        authorization_server.approve(code.user_code)

    client = make_client(authorization_server, client_id="bot", store=store, on_code=on_code)
    now = datetime.now(timezone.utc).timestamp()
    dead = Claim(flow="dead-process", until=now + 0.3)
    await store.put(client.store_key("ops") + "//device-flow", dead.encode(), expected_version=None)
    started = asyncio.get_running_loop().time()
    token = await client.get_token("ops")
    waited = asyncio.get_running_loop().time() - started
    await client.aclose()
    assert authorization_server.is_valid_access_token(token.access_token)
    assert 1 == len(shown)
    assert waited >= 0.25  # it waited for the claim to lapse, then ran its own flow


async def test_an_unreadable_claim_counts_as_lapsed(
    authorization_server: AuthorizationServer,
) -> None:
    """Garbage where a claim should be does not block the account: a flow runs."""
    store = MemoryStore()
    client = make_client(
        authorization_server,
        client_id="bot",
        store=store,
        on_code=lambda code, account: authorization_server.approve(code.user_code),
    )
    for garbage in (b"\xff", b"[]", b'{"flow": 1, "until": 2}', b'{"flow": "x", "until": "nan"}'):
        key = client.store_key(f"ops-{garbage.hex()}")
        await store.put(key + "//device-flow", garbage, expected_version=None)
        token = await client.get_token(f"ops-{garbage.hex()}")
        assert authorization_server.is_valid_access_token(token.access_token)
        assert None is await store.get(key + "//device-flow")  # ended with the flow
    await client.aclose()


@pytest.mark.parametrize(
    "error",
    [
        AccessDeniedError("access_denied", "no"),
        ExpiredTokenError("expired_token"),
        InvalidClientError("invalid_client", "bad secret", "https://idp.test/e", status=401),
        OAuthError("unauthorized_client", "nope", status=400),
        ProtocolError("not JSON"),
        TransportError("timed out"),
        DeviceFlowError("something else"),
    ],
)
def test_waiters_raise_the_class_the_flow_raised(error: DeviceFlowError) -> None:
    """A failed flow's error, read back from its claim, has the same class and fields."""
    stored = Claim.decode(Claim.failed("f", 1.0, error).encode())
    assert stored is not None
    again = stored.failure()
    assert type(error) is type(again)
    assert str(error) == str(again)
    if isinstance(error, OAuthError):
        assert isinstance(again, OAuthError)
        assert (error.status, error.uri) == (again.status, again.uri)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff",
        b"[]",
        b'{"flow": 1, "until": 2}',
        b'{"flow": "x", "until": true}',
        b'{"flow": "x", "until": 1e999}',
        b'{"flow": "x", "until": 1, "error": 0}',
    ],
)
def test_unreadable_claims_decode_to_none(garbage: bytes) -> None:
    """Anything but a well-formed claim reads as no claim (lapsed)."""
    assert None is Claim.decode(garbage)


async def test_a_claim_outlasts_a_long_retry_after(virtual_clock: VirtualClock) -> None:
    """A 40 s Retry-After in the running flow does not let a waiting replica take over."""
    shown: list[DeviceCode] = []
    async with AuthorizationServer(clock=virtual_clock, interval=1) as server:

        def on_code(code: DeviceCode, account: str) -> None:
            shown.append(code)
            server.approve(code.user_code)

        server.faults.add(Fault(endpoint="token", status=503, retry_after=40))
        store = MemoryStore()
        clients = [
            DeviceFlowClient(
                Provider(issuer=server.issuer),
                client_id="bot",
                store=store,
                clock=virtual_clock,
                on_code=on_code,
            )
            for _ in range(REPLICAS)
        ]
        tokens = await asyncio.gather(*(c.get_token("ops") for c in clients))
        for client in clients:
            await client.aclose()
    assert 1 == len(shown)
    assert 1 == len({t.access_token for t in tokens})


async def test_a_sign_in_elsewhere_ends_the_running_flow(
    authorization_server: AuthorizationServer,
) -> None:
    """A token stored by other means (a login) while a flow polls ends that flow at once."""
    store = MemoryStore()
    waiting = make_client(
        authorization_server, client_id="bot", store=store, on_code=lambda code, account: None
    )
    flow = asyncio.ensure_future(waiting.get_token("ops"))
    await eventually(lambda: authorization_server.stats.device_authorizations)  # it polls
    async with make_client(authorization_server, client_id="bot", store=store) as elsewhere:
        login = await seed(elsewhere, authorization_server, "ops")
    assert login == await asyncio.wait_for(flow, 5 * time_factor())
    assert None is await store.get(waiting.store_key("ops") + "//device-flow")
    await waiting.aclose()


class LostAnswers(MemoryStore):
    """Writes of claims land, then their answer is lost (a store timeout), ``lose`` times."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = 0

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None, ttl: float | None = None
    ) -> int:
        version = await super().put(key, value, expected_version=expected_version, ttl=ttl)
        if key.endswith("//device-flow") and self.lose:
            self.lose -= 1
            raise StoreError("the answer was lost")
        return version


async def test_a_renewal_whose_answer_was_lost_is_recognised(virtual_clock: VirtualClock) -> None:
    """A renewal that landed without an answer does not make its process give up its claim."""
    store = LostAnswers()
    claim = FlowClaim(store, "acct//device-flow", virtual_clock)
    assert None is await claim.take()
    store.lose = 1
    virtual_clock.advance(29)
    await claim.renew(20)  # landed, answer lost
    virtual_clock.advance(45)
    await claim.renew(20)  # reads its own claim back by flow id, renews it
    current = await claim.read()
    assert current is not None
    assert claim.flow == current.flow
    assert current.live(virtual_clock.wall().timestamp())


class HeldClaimWrites(MemoryStore):
    """A claim write lands, then the writer is cancelled before it hears back."""

    def __init__(self) -> None:
        super().__init__()
        self.landed = asyncio.Event()

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None, ttl: float | None = None
    ) -> int:
        version = await super().put(key, value, expected_version=expected_version, ttl=ttl)
        if key.endswith("//device-flow"):
            self.landed.set()
            await asyncio.Event().wait()  # never answers
        return version


async def test_a_claim_written_as_the_flow_is_cancelled_is_removed(
    authorization_server: AuthorizationServer,
) -> None:
    """Cancelled while its claim was being written, a flow still removes that claim."""
    store = HeldClaimWrites()
    client = make_client(
        authorization_server, client_id="bot", store=store, on_code=lambda c, a: None
    )
    caller = asyncio.ensure_future(client.get_token("ops"))
    await asyncio.wait_for(store.landed.wait(), 10 * time_factor())
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(caller, 10 * time_factor())
    assert None is await store.get(client.store_key("ops") + "//device-flow")


async def test_an_undecryptable_claim_is_removed(
    tmp_path: Path, authorization_server: AuthorizationServer
) -> None:
    """A claim file written under a key the store no longer has does not block the account."""
    folder = tmp_path / "tokens"
    provider = Provider(issuer=authorization_server.issuer)
    old = EncryptedFileStore(folder, key=generate_key())
    key = DeviceFlowClient(provider, client_id="bot", store=old).store_key("ops") + "//device-flow"
    await old.put(key, Claim(flow="dead", until=2e9).encode(), expected_version=None)
    new = EncryptedFileStore(folder, key=generate_key())
    async with DeviceFlowClient(
        provider,
        client_id="bot",
        store=new,
        on_code=lambda code, account: authorization_server.approve(code.user_code),
    ) as client:
        assert authorization_server.is_valid_access_token(
            (await client.get_token("ops")).access_token
        )
    assert None is await new.get(key)
