"""Refresh storms: tokens obtained together are refreshed spread out, and a token endpoint that
asks to wait (429 or 503 with Retry-After) is left alone for that long by every account."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from deviceflow import DeviceFlowClient, Token
from deviceflow._cache import TokenCache
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock
from helpers import eventually, make_client, seed

LIFETIME = 600
ACCOUNTS = 200


pytestmark = pytest.mark.authorization_server(access_token_lifetime=LIFETIME)


async def seed_all(client: DeviceFlowClient, server: AuthorizationServer) -> None:
    """A cohort: ACCOUNTS grants obtained in the same instant."""
    for n in range(ACCOUNTS):
        await seed(client, server, f"tenant-{n}")


def test_a_cohort_is_spread_over_the_skew_window(virtual_clock: VirtualClock) -> None:
    """Tokens expiring together get refresh moments spread over the window (from the whole skew
    to a quarter of it before expiry), each fixed by the account, the same in every replica."""
    token = Token(access_token="at", expires_at=virtual_clock.wall() + timedelta(seconds=600))
    one, two = TokenCache(virtual_clock, 60.0), TokenCache(virtual_clock, 60.0)
    start = virtual_clock.monotonic()
    moments = [one.entry(f"t{n}", token, None).refresh_at - start for n in range(1000)]
    assert all(540.0 <= m <= 585.0 for m in moments)
    assert max(moments) - min(moments) > 40.0  # spread, not one instant
    assert 300 < sum(m < 562.5 for m in moments) < 700  # about half in each half
    assert moments == [two.entry(f"t{n}", token, None).refresh_at - start for n in range(1000)]


async def test_a_cohort_refreshes_spread_out_and_before_expiry(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A cohort served from the cache refreshes in the background over the window, and every
    token is refreshed before the old one expires."""
    async with make_client(authorization_server, refresh_skew=60) as client:
        await seed_all(client, authorization_server)
        seen: list[int] = []
        for _ in range(60):  # one call per account each virtual second, from 540 s to 599 s
            virtual_clock.advance(1 if seen else 540)
            await asyncio.gather(*(client.get_token(f"tenant-{n}") for n in range(ACCOUNTS)))
            for _ in range(50):
                await asyncio.sleep(0)
            seen.append(authorization_server.stats.refreshes)
    assert ACCOUNTS == seen[-1]
    assert seen[5] < ACCOUNTS / 4  # not all at once at the start of the window
    assert ACCOUNTS == seen[46]  # all done by 585 s: well before expiry
    assert 0 == authorization_server.stats.invalid_grants


async def test_retry_after_closes_the_gate_for_every_account(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A 429 with Retry-After: no account's refresh reaches the server before it has passed,
    and every caller then gets a token."""
    async with make_client(authorization_server) as client:
        await seed_all(client, authorization_server)
        virtual_clock.advance(LIFETIME + 1)  # all expired: callers wait for refreshes
        authorization_server.faults.add(
            Fault(endpoint="token", status=429, retry_after=30, times=1)
        )
        tokens = await asyncio.gather(*(client.get_token(f"tenant-{n}") for n in range(ACCOUNTS)))
    token_requests = [r for r in authorization_server.requests if r.endpoint == "token"]
    refused = [r for r in token_requests if r.status == 429]
    assert 1 == len(refused)
    later = [r.at for r in token_requests if r.at > refused[0].at]
    assert ACCOUNTS == len(later)  # one refresh per account after the wait, no more
    assert all(at >= refused[0].at + 30 for at in later)
    assert all(authorization_server.is_valid_access_token(t.access_token) for t in tokens)
    assert 0 == authorization_server.stats.invalid_grants


async def test_a_refresh_that_meets_a_closed_gate_keeps_the_cached_token(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A background refresh that meets a 503 with Retry-After: the caller gets the cached token
    at once, and the refresh is sent again only once the wait has passed."""
    async with make_client(authorization_server, refresh_skew=60) as client:
        await seed_all(client, authorization_server)
        first = await client.get_token("tenant-0")
        authorization_server.faults.add(
            Fault(endpoint="token", status=503, retry_after=20, times=1)
        )
        virtual_clock.advance(586)  # in the window: a background refresh meets the 503
        assert first is await client.get_token("tenant-0")

        async def refreshed() -> bool:
            return first is not await client.get_token("tenant-0")

        await eventually(refreshed)  # the background refresh has replaced the cached token
        newer = await client.get_token("tenant-0")
    attempts = [r for r in authorization_server.requests if r.endpoint == "token"]
    assert [503, 200] == [r.status for r in attempts]
    assert attempts[1].at >= attempts[0].at + 20
    assert authorization_server.is_valid_access_token(newer.access_token)
