"""Every preset end to end against the built-in server running its provider's profile."""

from __future__ import annotations

import itertools

import pytest
from provider_cases import CASE_IDS, CASES, Case, deciding

from deviceflow import AccessDeniedError, ExpiredTokenError, FlowState, Token
from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import DEVICE_GRANT

cases = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def poll_times(server: AuthorizationServer) -> list[float]:
    return [
        r.at
        for r in server.requests
        if r.endpoint == "token" and r.form.get("grant_type") == DEVICE_GRANT
    ]


@cases
async def test_approve(case: Case, virtual_clock: VirtualClock) -> None:
    """An approved code yields a Bearer token the server accepts."""
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server))
        async with client:
            token = await client.get_token("alice")
            again = await client.get_token("alice")
    assert isinstance(token, Token)
    assert token is again
    assert ("Bearer", True) == (token.token_type, server.is_valid_access_token(token.access_token))
    assert token.refresh_token is not None
    assert 1 == server.stats.tokens_issued


@cases
async def test_deny(case: Case, virtual_clock: VirtualClock) -> None:
    """A denied code ends the flow with AccessDeniedError and no further polls."""
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server, server.deny))
        async with client:
            with pytest.raises(AccessDeniedError) as caught:
                await client.get_token()
            polls = len(poll_times(server))
            virtual_clock.advance(60)
            assert polls == len(poll_times(server))
    assert "access_denied" == caught.value.error
    assert 0 == server.stats.tokens_issued


@cases
async def test_slow_down(case: Case, virtual_clock: VirtualClock) -> None:
    """After slow_down every later poll waits five seconds more, and the flow still succeeds."""
    async with case.running(virtual_clock, auto_approve_after=3) as server:
        seen: list[tuple[FlowState, float | None]] = []
        async with case.client_for(server, virtual_clock) as client:
            async for event in client.authorize():
                if event.code is not None and not seen:
                    server.slow_down(event.code.user_code)
                if event.code is not None:
                    seen.append((event.state, event.interval))
    gaps = [round(b - a) for a, b in itertools.pairwise(poll_times(server))]
    assert [
        (FlowState.PENDING, 5.0),
        (FlowState.SLOW_DOWN, 10.0),
        (FlowState.PENDING, 10.0),
        (FlowState.GRANTED, 10.0),
    ] == seen
    assert [10, 10, 10] == gaps  # the interval plus the client's 0.1 s margin
    assert (1, 1) == (server.stats.slow_downs, server.stats.tokens_issued)


@cases
async def test_expire(case: Case, virtual_clock: VirtualClock) -> None:
    """A code that expires before approval ends the flow with ExpiredTokenError."""
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server, server.expire))
        async with client:
            with pytest.raises(ExpiredTokenError) as caught:
                await client.get_token()
    assert "expired_token" == caught.value.error
    assert 1 == len(poll_times(server))


@cases
async def test_refresh(case: Case, virtual_clock: VirtualClock) -> None:
    """An expired access token is refreshed without a person; a rotated refresh token is kept."""
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server))
        async with client:
            first = await client.get_token()
            virtual_clock.advance(4 * 3600 if case.name != "github" else 9 * 3600)
            second = await client.get_token()
            third = await client.refresh()
    assert first.access_token != second.access_token != third.access_token
    assert server.is_valid_access_token(third.access_token)
    assert (2, 1) == (server.stats.refreshes, server.stats.device_authorizations)
    assert case.rotates == (first.refresh_token != second.refresh_token)
    assert second.refresh_token is not None
