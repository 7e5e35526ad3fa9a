"""Durability: a rotated refresh token is never lost or replayed, whatever the store does.

Each test runs over the memory, file and Redis stores, wrapped in FaultyStore to break them as
an operator would (a full disk, a stalled store, a store emptied by a restart), against the
built-in server, which rotates refresh tokens and revokes the whole grant when a used one comes
back. Every test ends with zero invalid_grant answers and zero revoked grants.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import pytest

from _redis import open_redis_store
from deviceflow import (
    DeviceCode,
    DeviceFlowClient,
    Provider,
    ReauthorizationRequiredError,
    StoreError,
    Token,
)
from deviceflow.stores import EncryptedFileStore, MemoryStore, TokenStore, Versioned, generate_key
from deviceflow.testing import AuthorizationServer, Fault, FaultyStore, VirtualClock
from helpers import stored_token

#: Real-time waits scale with this one factor (a loaded machine wants more).
FACTOR = float(os.environ.get("DEVICEFLOW_TIME_FACTOR", "1"))
KEY = generate_key()

StoreFactory = Callable[[], TokenStore]


@pytest.fixture(params=["memory", "file", pytest.param("redis", marks=pytest.mark.redis)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Makes stores that share one backend's data, as replicas' stores do."""
    backend: str = request.param
    async with AsyncExitStack() as stack:
        if backend == "memory":
            shared = MemoryStore()
            yield lambda: shared
        elif backend == "file":
            yield lambda: EncryptedFileStore(tmp_path / "tokens", key=KEY)
        else:
            server = request.getfixturevalue("redis_server")
            prefix = f"d{uuid.uuid4().hex[:12]}:"
            opened = [
                await stack.enter_async_context(open_redis_store(server, key=KEY, prefix=prefix))
                for _ in range(2)
            ]
            handed = iter(opened)
            yield lambda: next(handed, opened[-1])


@pytest.fixture
async def server(virtual_clock: VirtualClock) -> AsyncIterator[AuthorizationServer]:
    async with AuthorizationServer(
        clock=virtual_clock, access_token_lifetime=300, rotate_refresh_tokens=True
    ) as srv:
        yield srv


def client_on(
    server: AuthorizationServer, store: TokenStore, clock: VirtualClock, **options: object
) -> DeviceFlowClient:
    return DeviceFlowClient(
        Provider(issuer=server.issuer),
        client_id="svc",
        store=store,
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


async def seed(client: DeviceFlowClient, server: AuthorizationServer, clock: VirtualClock) -> None:
    """Store a rotating grant for account "a", as a sign-in would."""
    issued = server.issue_tokens("svc", scope="openid")
    await client.save_token(
        "a",
        Token(
            access_token=issued["access_token"],
            refresh_token=issued["refresh_token"],
            expires_at=clock.wall() + timedelta(seconds=int(issued["expires_in"])),
        ),
    )


def assert_grant_kept(server: AuthorizationServer) -> None:
    """The server never saw a used refresh token come back."""
    assert (0, 0) == (server.stats.invalid_grants, server.stats.grants_revoked)


async def test_a_failed_write_after_refresh_is_kept_and_stored_later(
    stores: StoreFactory, server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A write failing after a refresh: the token is served from memory, the next refresh uses
    its refresh token (never the stored, older one), and once the store heals a new process
    refreshes from what was stored."""
    faulty = FaultyStore(stores())
    client = client_on(server, faulty, virtual_clock)
    await seed(client, server, virtual_clock)
    faulty.fail("put", times=None)
    virtual_clock.advance(400)
    first = await client.get_token("a")
    assert server.is_valid_access_token(first.access_token)
    assert {"a"} == client.unsaved_accounts()
    virtual_clock.advance(400)
    second = await client.get_token("a")  # refreshed from the unsaved token, not the record
    assert server.is_valid_access_token(second.access_token)
    assert not await client.flush()  # the store is still down
    faulty.heal()
    assert await client.flush()
    assert frozenset() == client.unsaved_accounts()
    await client.aclose()

    async with client_on(server, stores(), virtual_clock) as later:
        assert second == await stored_token(later, "a")
        virtual_clock.advance(400)
        third = await later.get_token("a")
    assert server.is_valid_access_token(third.access_token)
    assert 3 == server.stats.refreshes
    assert_grant_kept(server)


async def test_aclose_stores_what_the_store_refused_before(
    stores: StoreFactory,
    server: AuthorizationServer,
    virtual_clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that is writable again by the time the process closes gets the unsaved token
    from aclose(); a new process then refreshes with zero invalid_grant."""
    faulty = FaultyStore(stores())
    client = client_on(server, faulty, virtual_clock)
    await seed(client, server, virtual_clock)
    faulty.fail("put", times=None)
    virtual_clock.advance(400)
    token = await client.get_token("a")
    faulty.heal()
    with caplog.at_level(logging.ERROR, logger="deviceflow"):
        await client.aclose()
    assert [] == [r for r in caplog.records if r.levelno >= logging.ERROR]

    async with client_on(server, stores(), virtual_clock) as later:
        assert token == await stored_token(later, "a")
        virtual_clock.advance(400)
        assert server.is_valid_access_token((await later.get_token("a")).access_token)
    assert_grant_kept(server)


async def test_aclose_names_the_account_it_could_not_save(
    stores: StoreFactory,
    server: AuthorizationServer,
    virtual_clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store still failing at close: one ERROR line naming the account, and no secret in it."""
    faulty = FaultyStore(stores())
    client = client_on(server, faulty, virtual_clock)
    await seed(client, server, virtual_clock)
    faulty.fail("put", times=None)
    virtual_clock.advance(400)
    token = await client.get_token("a")
    with caplog.at_level(logging.ERROR, logger="deviceflow"):
        await client.aclose()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 == len(errors)
    assert "'a'" in errors[0]
    assert token.access_token not in errors[0]
    assert token.refresh_token is not None
    assert token.refresh_token not in errors[0]


async def test_a_store_emptied_under_a_running_process_gets_the_token_back(
    stores: StoreFactory, server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A store that lost its data (Redis restarted empty) gets the token written back by the
    process holding it, and the grant goes on without a new sign-in."""
    codes: list[DeviceCode] = []
    faulty = FaultyStore(stores())
    client = client_on(server, faulty, virtual_clock, on_code=lambda code, _: codes.append(code))
    await seed(client, server, virtual_clock)
    assert 1 == await faulty.lose_everything()
    virtual_clock.advance(400)
    refreshed = await client.get_token("a")
    assert server.is_valid_access_token(refreshed.access_token)
    await client.aclose()
    async with client_on(server, stores(), virtual_clock) as later:
        assert refreshed == await later.get_token("a")
    assert ([], 1) == (codes, server.stats.refreshes)
    assert_grant_kept(server)


async def test_a_token_in_memory_goes_back_before_it_expires(
    stores: StoreFactory, server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A record lost while its token is still fresh is written back by the next flight,
    without a refresh."""
    faulty = FaultyStore(stores())
    async with client_on(server, faulty, virtual_clock, refresh_skew=60) as client:
        await seed(client, server, virtual_clock)
        seeded = await client.get_token("a")
        await faulty.lose_everything()
        virtual_clock.advance(290)  # inside the refresh-ahead window: a background flight runs
        assert seeded == await client.get_token("a")
        for _ in range(200):
            await asyncio.sleep(0.005 * FACTOR)
            if await stored_token(client, "a") is not None:
                break
        assert await stored_token(client, "a") is not None
    assert_grant_kept(server)


async def test_a_logout_is_never_undone_by_a_copy_in_memory(
    stores: StoreFactory, server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """After a logout elsewhere, a process holding the token in memory does not write it back:
    the tombstone tells a logout from a lost record."""
    one, two = (
        client_on(server, stores(), virtual_clock),
        client_on(server, stores(), virtual_clock),
    )
    async with one, two:
        await seed(one, server, virtual_clock)
        await two.get_token("a")
        assert await one.logout("a")
        virtual_clock.advance(400)
        with pytest.raises(ReauthorizationRequiredError):
            await two.get_token("a")
        assert None is await stored_token(two, "a")
    assert 0 == server.stats.refreshes


async def test_a_stall_past_the_lease_never_refreshes_twice(
    stores: StoreFactory, server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A store read that stalls until the lease has run out, while another replica took the lock
    and refreshes: the stalled process gives the lock up and starts over instead of refreshing
    with the refresh token the other one is using."""
    lease = 1.0 * FACTOR
    faulty = FaultyStore(stores())
    slow = client_on(server, faulty, virtual_clock, lock_ttl=lease, http_timeout=0.3 * lease)
    other = client_on(server, stores(), virtual_clock, lock_ttl=3 * lease, http_timeout=lease)
    async with slow, other:
        await seed(other, server, virtual_clock)
        virtual_clock.advance(400)
        # The slow process's read under the lock stalls past its lease; the other one's refresh
        # is answered after that stall ends, so the stalled read sees the old record.
        faulty.stall(1.3 * lease, operations="get", times=1)
        server.faults.add(Fault(endpoint="token", status=None, delay=0.6 * lease))
        forced = asyncio.ensure_future(slow.refresh("a"))
        for _ in range(1000):
            if faulty.counts["lock"]:
                break
            await asyncio.sleep(0.001)
        assert 1 == faulty.counts["lock"]
        await asyncio.sleep(0.05 * lease)  # the slow process is inside its lock now
        theirs = await other.get_token("a")
        mine = await asyncio.wait_for(forced, 10 * lease)
    assert server.is_valid_access_token(theirs.access_token)
    assert server.is_valid_access_token(mine.access_token)
    assert_grant_kept(server)


class _ReplicaWritesOnRefusal(MemoryStore):
    """Another replica stores its copy of the (just revoked) grant at the moment this process
    records the refusal, so the refusal's tombstone loses the compare-and-set."""

    def __init__(self) -> None:
        super().__init__()
        self.copy: bytes | None = None

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None, ttl: float | None = None
    ) -> int:
        if self.copy is not None and b'"reason":"refused"' in value:
            current = await self.get(key)
            await super().put(key, self.copy, expected_version=current.version if current else None)
            self.copy = None
        return await super().put(key, value, expected_version=expected_version, ttl=ttl)


async def test_after_invalid_grant_no_older_token_is_handed_out(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """Once the server refused a refresh, a token of the refused grant that another replica
    stored is not handed out: a new device flow runs instead."""
    store = _ReplicaWritesOnRefusal()
    codes: list[DeviceCode] = []

    def approve(code: DeviceCode, account: str) -> None:
        codes.append(code)
        server.approve(code.user_code)

    async with client_on(server, store, virtual_clock, on_code=approve) as client:
        await seed(client, server, virtual_clock)
        server.configure(access_token_lifetime=3600)
        async with client_on(server, MemoryStore(), virtual_clock) as replica:
            await seed(replica, server, virtual_clock)  # the replica's copy, obtained now
            copied = await replica.store.get(replica.store_key("a"))
            assert isinstance(copied, Versioned)
            replica_token = await stored_token(replica, "a")
        store.copy = copied.value
        server.revoke_all()
        virtual_clock.advance(400)
        token = await client.get_token("a")
    assert replica_token is not None
    assert token.access_token != replica_token.access_token
    assert server.is_valid_access_token(token.access_token)
    assert 1 == len(codes)


async def test_aclose_keeps_trying_while_the_store_blips(
    stores: StoreFactory,
    server: AuthorizationServer,
    virtual_clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that fails the first writes aclose() makes still gets the unsaved token: aclose()
    retries within its bound instead of giving up after one attempt."""
    faulty = FaultyStore(stores())
    client = client_on(server, faulty, virtual_clock)
    await seed(client, server, virtual_clock)
    faulty.fail("put", times=3)  # the refresh's write, then the first two tries of aclose()
    virtual_clock.advance(400)
    token = await client.get_token("a")
    with caplog.at_level(logging.ERROR, logger="deviceflow"):
        await client.aclose()
    assert [] == [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 3 == faulty.injected
    async with client_on(server, stores(), virtual_clock) as later:
        assert token == await stored_token(later, "a")
    assert_grant_kept(server)


async def test_a_write_blip_on_one_replica_never_lets_another_replay(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """One replica's write fails once after its refresh while another waits for the lock: the
    write is retried under the lock, so the other never reads the older record and refreshes
    with the refresh token already used."""
    shared = MemoryStore()
    faulty = FaultyStore(shared)
    one, two = client_on(server, faulty, virtual_clock), client_on(server, shared, virtual_clock)
    async with one, two:
        await seed(one, server, virtual_clock)
        await two.get_token("a")
        virtual_clock.advance(400)
        server.faults.add(Fault(endpoint="token", status=None, delay=0.3 * FACTOR))
        faulty.fail("put", times=1)
        first = asyncio.ensure_future(one.get_token("a"))
        for _ in range(1000):
            if faulty.counts["lock"]:
                break
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(two.get_token("a"))
        tokens = await asyncio.gather(first, second)
    assert all(server.is_valid_access_token(t.access_token) for t in tokens)
    assert (1, 1) == (faulty.injected, server.stats.refreshes)
    assert_grant_kept(server)


async def test_after_a_store_reset_the_newest_lineage_wins_not_the_highest_version(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """Store versions start again at 1 when a store loses its data; the order of tokens is the
    lineage each record carries, so a replica holding an older token does not write it over a
    newer one (and never refreshes with a used refresh token)."""
    shared = MemoryStore()
    faulty = FaultyStore(shared)
    one, two = client_on(server, faulty, virtual_clock), client_on(server, shared, virtual_clock)
    async with one, two:
        await seed(one, server, virtual_clock)
        for _ in range(3):  # versions 2 to 4, all refreshed by one
            virtual_clock.advance(400)
            await one.get_token("a")
        await two.get_token("a")  # two caches the same token
        await faulty.lose_everything()
        virtual_clock.advance(400)
        await two.get_token("a")  # writes it back (version 1) and refreshes (version 2)
        virtual_clock.advance(400)
        token = await one.get_token("a")  # one's copy has the higher old version: it is older
    assert server.is_valid_access_token(token.access_token)
    assert 5 == server.stats.refreshes
    assert_grant_kept(server)


async def test_a_logout_that_fails_keeps_the_unsaved_token(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A logout whose tombstone the store refuses drops nothing: the unsaved token stays, and
    is stored once the store heals."""
    faulty = FaultyStore(MemoryStore())
    async with client_on(server, faulty, virtual_clock) as client:
        await seed(client, server, virtual_clock)
        virtual_clock.advance(400)
        faulty.fail("put", times=None)
        token = await client.get_token("a")
        with pytest.raises(StoreError):
            await client.logout("a")
        assert {"a"} == client.unsaved_accounts()
        faulty.heal()
        assert token is await client.get_token("a")
        assert await client.flush()
        assert token == await stored_token(client, "a")
    assert_grant_kept(server)


async def test_a_device_flow_token_the_store_refuses_is_kept(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A device flow whose token cannot be stored yet keeps it (unsaved, served by get_token,
    no second code), and the token reaches the store once it heals."""
    server.configure(auto_approve_after=0)
    faulty = FaultyStore(MemoryStore())
    async with client_on(server, faulty, virtual_clock) as client:
        faulty.fail("put", times=None)
        events = [event async for event in client.authorize("a")]
        token = events[-1].token
        assert token is not None
        assert token is await client.get_token("a")
        assert {"a"} == client.unsaved_accounts()
        faulty.heal()
        assert await client.flush()
        assert token == await stored_token(client, "a")
    assert 1 == server.stats.device_authorizations


async def test_a_token_without_refresh_token_starts_no_flight_per_call(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """Inside its refresh window, a token that cannot be refreshed costs one flight, not one
    store round trip per call."""
    faulty = FaultyStore(MemoryStore())
    async with client_on(server, faulty, virtual_clock) as client:
        expires = virtual_clock.wall() + timedelta(seconds=300)
        await client.save_token("a", Token(access_token="at", expires_at=expires))
        virtual_clock.advance(290)
        for _ in range(1000):
            await client.get_token("a")
            await asyncio.sleep(0)
    assert faulty.counts["lock"] <= 2


async def test_refresh_of_a_stale_token_never_returns_it(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """refresh(stale=T) that meets a plain get_token() flight (which returns T from the store)
    still returns a newer token."""
    shared = MemoryStore()
    async with client_on(server, shared, virtual_clock) as seeding:
        await seed(seeding, server, virtual_clock)
        stale = await stored_token(seeding, "a")
    assert stale is not None
    async with client_on(server, shared, virtual_clock) as client:
        plain = asyncio.ensure_future(client.get_token("a"))
        await asyncio.sleep(0)
        fresh = await client.refresh("a", stale=stale)
        await plain
    assert fresh.access_token != stale.access_token
    assert server.is_valid_access_token(fresh.access_token)
