"""A real Redis that sleeps or restarts empty: a rotated refresh token is neither lost nor replayed.

Each test runs a private redis-server of its own (free loopback port, no persistence). Redis is
made to sleep with DEBUG SLEEP from a raw connection of the test: the whole server stops
answering, as a stuck or swapping Redis does, and the commands sent meanwhile run when it wakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from durability_helpers import seed, until
from redis.asyncio import Redis

from _redis import DEBUG_COMMANDS, RedisProcess, RedisSleeper, open_redis_store
from deviceflow import DeviceCode, DeviceFlowClient, Provider
from deviceflow.stores import generate_key
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock
from helpers import stored_token

pytestmark = pytest.mark.redis

ACCOUNT = "tenant-7"
LIFETIME = 300  # the access token's life (virtual seconds)
PREFIX = "durable:"


async def test_a_write_into_a_sleeping_redis_is_stored_once_it_wakes(
    redis_factory: Callable[..., RedisProcess], virtual_clock: VirtualClock, time_factor: float
) -> None:
    """Redis asleep when a refresh's answer comes back: get_token serves the new token, it is
    stored once Redis wakes, and a second client refreshes from it with no grant lost."""
    redis = redis_factory(*DEBUG_COMMANDS)
    timeout = 0.5 * time_factor  # each RedisStore call fails after this long
    hold = 1.0 * time_factor  # the token endpoint holds the refresh's answer this long
    nap = hold + 4 * timeout  # Redis sleeps through the write after the refresh, and past it
    http_timeout = hold + time_factor
    lock_ttl = http_timeout + 2 * timeout + time_factor  # reserve: (lock_ttl - http) / 2 > timeout
    key = generate_key()
    async with AuthorizationServer(
        clock=virtual_clock, access_token_lifetime=LIFETIME, rotate_refresh_tokens=True
    ) as server:
        provider = Provider(issuer=server.issuer)
        async with (
            open_redis_store(redis, key=key, prefix=PREFIX, timeout=timeout) as store,
            DeviceFlowClient(
                provider,
                client_id="svc",
                clock=virtual_clock,
                store=store,
                http_timeout=http_timeout,
                lock_ttl=lock_ttl,
                lock_wait=2 * lock_ttl,  # a lock whose release Redis never saw frees in time
            ) as client,
            RedisSleeper(redis) as sleeper,
        ):
            seeded = await seed(client, server, ACCOUNT, virtual_clock)
            virtual_clock.advance(LIFETIME + 100)
            server.faults.add(Fault(endpoint="token", status=None, delay=hold))
            refreshing = asyncio.ensure_future(client.get_token(ACCOUNT))
            await until(
                lambda: any(r.endpoint == "token" for r in server.requests),
                10 * time_factor,
                "the refresh to reach the server",
            )
            await sleeper.start(nap)  # the answer is held: Redis sleeps when it arrives
            refreshed = await refreshing
            assert server.is_valid_access_token(refreshed.access_token)
            assert seeded.access_token != refreshed.access_token
            # The write met a sleeping Redis: tried again under the lock, and later if need be.
            await sleeper.woken()
            assert await client.flush()
            assert refreshed == await stored_token(client, ACCOUNT)
        assert 1 == server.stats.refreshes

        async with (
            open_redis_store(redis, key=key, prefix=PREFIX, timeout=timeout) as other_store,
            DeviceFlowClient(
                provider, client_id="svc", clock=virtual_clock, store=other_store
            ) as other,
        ):
            assert refreshed == await other.get_token(ACCOUNT)  # read from Redis
            virtual_clock.advance(LIFETIME + 100)
            renewed = await other.get_token(ACCOUNT)  # refreshed with the rotated token
    assert server.is_valid_access_token(renewed.access_token)
    assert 0 == server.stats.invalid_grants
    assert 0 == server.stats.grants_revoked
    assert 2 == server.stats.refreshes


async def test_redis_restarted_empty_gets_the_token_back_from_memory(
    redis_factory: Callable[..., RedisProcess], virtual_clock: VirtualClock, time_factor: float
) -> None:
    """Redis killed and restarted empty while a client holds the token: its next refresh writes
    the token back and refreshes, a second client reads the new token from Redis, and no grant is
    lost or asked for again."""
    redis = redis_factory()
    timeout = 2.0 * time_factor
    key = generate_key()
    shown: list[str] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(account)

    async with AuthorizationServer(
        clock=virtual_clock, access_token_lifetime=LIFETIME, rotate_refresh_tokens=True
    ) as server:
        provider = Provider(issuer=server.issuer)
        async with (
            open_redis_store(redis, key=key, prefix=PREFIX, timeout=timeout) as store,
            DeviceFlowClient(
                provider, client_id="svc", clock=virtual_clock, store=store, on_code=on_code
            ) as client,
        ):
            seeded = await seed(client, server, ACCOUNT, virtual_clock)
            assert seeded is await client.get_token(ACCOUNT)  # held in memory
            redis.kill()  # SIGKILL, no persistence: everything stored is gone
            redis.start()
            async with Redis.from_url(redis.url) as raw:
                assert 0 == await raw.dbsize()
            virtual_clock.advance(LIFETIME + 100)
            # The store's pooled connection died with the old server; redis-py notices when it
            # checks the connection out and reconnects, so the first call after the restart
            # already succeeds.
            refreshed = await client.get_token(ACCOUNT)
            assert server.is_valid_access_token(refreshed.access_token)
            assert seeded.access_token != refreshed.access_token
            assert frozenset() == client.unsaved_accounts()
        async with (
            open_redis_store(redis, key=key, prefix=PREFIX, timeout=timeout) as other_store,
            DeviceFlowClient(
                provider, client_id="svc", clock=virtual_clock, store=other_store, on_code=on_code
            ) as other,
        ):
            assert refreshed == await other.get_token(ACCOUNT)  # read from Redis, not refreshed
            virtual_clock.advance(LIFETIME + 100)
            renewed = await other.get_token(ACCOUNT)
    assert server.is_valid_access_token(renewed.access_token)
    assert [] == shown
    assert 0 == server.stats.device_authorizations
    assert 0 == server.stats.invalid_grants
    assert 0 == server.stats.grants_revoked
    assert 2 == server.stats.refreshes
