"""DeviceFlowClient end to end against the built-in authorization server, on a virtual clock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from deviceflow import (
    AccessDeniedError,
    DeviceCode,
    ExpiredTokenError,
    FlowState,
    InvalidClientError,
    Provider,
    ReauthorizationRequiredError,
    Token,
)
from deviceflow.stores import MemoryStore
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock
from helpers import DEVICE_GRANT, eventually, issued_token, make_client, stored_token, time_factor

pytestmark = pytest.mark.authorization_server(interval=5)

REFRESH = "refresh_token"


def approver(server: AuthorizationServer, *, deny: bool = False) -> Any:
    """An on_code callback that approves (or denies) the code as a person would."""
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        (server.deny if deny else server.approve)(code.user_code)

    on_code.shown = shown  # type: ignore[attr-defined]
    return on_code


def token_polls(server: AuthorizationServer) -> list[float]:
    """When (server's clock) each device access token request, a poll, reached ``server``."""
    return [
        r.at
        for r in server.requests
        if r.endpoint == "token" and r.form.get("grant_type") == DEVICE_GRANT
    ]


def gaps(times: list[float]) -> list[float]:
    """The time between each two successive ``times``."""
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


async def test_approve_flow_yields_events_and_a_token(
    authorization_server: AuthorizationServer,
) -> None:
    """authorize() discovers, requests a code, polls, and ends GRANTED with a stored token."""
    async with make_client(authorization_server) as client:
        states = []
        async for event in client.authorize("alice"):
            states.append(event.state)
            if event.state is FlowState.PENDING:
                assert event.code is not None
                assert 5.0 == event.interval
                if len(token_polls(authorization_server)) == 0:
                    authorization_server.approve(event.code.user_code)
        assert [
            FlowState.DISCOVER,
            FlowState.REQUEST_CODE,
            FlowState.PENDING,
            FlowState.GRANTED,
        ] == states
        assert event.token is not None
        assert authorization_server.is_valid_access_token(event.token.access_token)
        assert event.token is await client.get_token("alice")


async def test_no_request_after_granted(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """Once a token is issued the client never polls again (RFC 8628 3.5)."""
    authorization_server.configure(auto_approve_after=3)
    async with make_client(authorization_server, on_code=lambda code, account: None) as client:
        await client.get_token()
        count = len(authorization_server.requests)
        virtual_clock.advance(120)
        await asyncio.sleep(0.05 * time_factor())  # real time for a poll, if one were due
        assert count == len(authorization_server.requests)
    assert "token" == authorization_server.requests[-1].endpoint
    assert 1 == authorization_server.stats.tokens_issued


async def test_polls_are_spaced_by_the_interval(
    authorization_server: AuthorizationServer,
) -> None:
    """Polls land one interval apart on the server's clock, and slow_down is never drawn."""
    authorization_server.configure(auto_approve_after=4)
    async with make_client(authorization_server, on_code=lambda code, account: None) as client:
        await client.get_token()
    polls = token_polls(authorization_server)
    assert 5 == len(polls)  # four answered authorization_pending, then the token
    assert all(gap >= 5.0 for gap in gaps(polls))
    assert 0 == authorization_server.stats.slow_downs


@pytest.mark.authorization_server(interval=None, auto_approve_after=3)
async def test_no_interval_means_five_seconds(authorization_server: AuthorizationServer) -> None:
    """A server that omits interval is polled every 5 s (RFC 8628 3.2)."""
    async with make_client(authorization_server, on_code=lambda c, a: None) as client:
        await client.get_token()
    polls = token_polls(authorization_server)
    assert len(polls) >= 3
    assert all(5.0 <= gap < 5.5 for gap in gaps(polls))


async def test_slow_down_adds_five_seconds_kept_afterwards(
    authorization_server: AuthorizationServer,
) -> None:
    """After slow_down every later poll is at least interval + 5 s apart (server's log)."""
    authorization_server.faults.add(
        Fault(
            endpoint="token",
            status=400,
            body=b'{"error":"slow_down"}',
            content_type="application/json",
            times=1,
        )
    )
    authorization_server.configure(auto_approve_after=5)
    async with make_client(authorization_server, on_code=lambda code, account: None) as client:
        await client.get_token()
    spacing = gaps(token_polls(authorization_server))
    assert spacing[0] >= 5.0
    assert all(gap >= 10.0 for gap in spacing[1:])
    assert len(spacing) >= 3


async def test_code_issued_marks_one_event_despite_slow_down(
    authorization_server: AuthorizationServer,
) -> None:
    """After slow_down PENDING comes again with the same code; code_issued is true only once."""
    events = []
    async with make_client(authorization_server) as client:
        async for event in client.authorize():
            events.append(event)
            if event.code_issued:
                assert event.code is not None
                authorization_server.slow_down(event.code.user_code)
            elif event.state is FlowState.PENDING and event.interval == 10.0:
                assert event.code is not None
                authorization_server.approve(event.code.user_code)
    assert [
        (FlowState.DISCOVER, False),
        (FlowState.REQUEST_CODE, False),
        (FlowState.PENDING, True),
        (FlowState.SLOW_DOWN, False),
        (FlowState.PENDING, False),
        (FlowState.GRANTED, False),
    ] == [(event.state, event.code_issued) for event in events]
    codes = [event.code for event in events if event.code is not None]
    assert all(code is codes[0] for code in codes)


async def test_on_code_is_called_once_despite_slow_down(
    authorization_server: AuthorizationServer,
) -> None:
    """get_token() shows a code once, though PENDING repeats after a slow_down."""
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        authorization_server.slow_down(code.user_code)

    authorization_server.configure(auto_approve_after=3)
    async with make_client(authorization_server, on_code=on_code) as client:
        await client.get_token()
    assert 1 == authorization_server.stats.slow_downs
    assert 1 == len(shown)


async def test_denied_raises_access_denied(
    authorization_server: AuthorizationServer,
) -> None:
    """A denied code ends get_token with AccessDeniedError and stores nothing."""
    async with make_client(
        authorization_server, on_code=approver(authorization_server, deny=True)
    ) as client:
        with pytest.raises(AccessDeniedError):
            await client.get_token()
        assert None is await stored_token(client, "default")


async def test_expired_code_raises_expired_token(
    authorization_server: AuthorizationServer,
) -> None:
    """A code that expires unapproved ends with ExpiredTokenError, never polling past expiry."""
    authorization_server.configure(code_lifetime=30)
    events = []
    async with make_client(authorization_server) as client:
        async for event in client.authorize():
            events.append(event)
    assert FlowState.EXPIRED == events[-1].state
    assert isinstance(events[-1].error, ExpiredTokenError)
    code = events[-1].code
    assert code is not None
    last_poll = token_polls(authorization_server)[-1]
    first = authorization_server.requests[0].at
    assert last_poll - first <= 30.0


async def test_server_expire_control_is_reported(
    authorization_server: AuthorizationServer,
) -> None:
    """The server's expired_token answer ends the flow as EXPIRED."""

    def expire(code: DeviceCode, account: str) -> None:
        authorization_server.expire(code.user_code)

    async with make_client(authorization_server, on_code=expire) as client:
        with pytest.raises(ExpiredTokenError):
            await client.get_token()


@pytest.mark.parametrize(
    "fault",
    [
        Fault(endpoint="token", drop=True, times=2),
        Fault(endpoint="token", status=503, times=2),
        Fault(endpoint="token", status=429, retry_after=20, times=1),
        Fault(endpoint="token", status=500, body=b"<html>oops</html>", content_type="text/html"),
        Fault(endpoint="device", status=503, times=2),
        Fault(endpoint="discovery", drop=True, times=1),
    ],
    ids=["drop", "503", "429", "html-500", "device-503", "discovery-drop"],
)
async def test_transport_faults_are_recovered(
    authorization_server: AuthorizationServer, fault: Fault
) -> None:
    """Dropped connections, 5xx and 429 are retried with backoff until the flow succeeds."""
    authorization_server.faults.add(fault)
    authorization_server.configure(auto_approve_after=1)
    async with make_client(authorization_server, on_code=lambda code, account: None) as client:
        token = await client.get_token()
    assert authorization_server.is_valid_access_token(token.access_token)
    polls = token_polls(authorization_server)
    assert len(polls) >= 2  # one answered authorization_pending, then the token
    assert all(gap >= 5.0 for gap in gaps(polls))


async def test_retry_after_is_honoured(
    authorization_server: AuthorizationServer,
) -> None:
    """A 429 with Retry-After: 20 delays the next poll by at least 20 s."""
    authorization_server.faults.add(Fault(endpoint="token", status=429, retry_after=20, times=1))
    authorization_server.configure(auto_approve_after=1)
    async with make_client(authorization_server, on_code=lambda code, account: None) as client:
        await client.get_token()
    assert gaps(token_polls(authorization_server))[0] >= 20.0


async def test_refresh_rotates_and_persists_refresh_token(
    authorization_server: AuthorizationServer,
) -> None:
    """refresh() uses the refresh token, stores the rotated one, and the old one is dead."""
    async with make_client(authorization_server, on_code=approver(authorization_server)) as client:
        first = await client.get_token()
        second = await client.refresh()
        assert first.refresh_token != second.refresh_token
        assert authorization_server.is_valid_access_token(second.access_token)
        stored = await client.store.get(client.store_key("default"))
        assert stored is not None
        assert second.refresh_token is not None
        assert second.refresh_token.encode() in stored.value
        third = await client.refresh()
        assert authorization_server.is_valid_access_token(third.access_token)
    assert 0 == authorization_server.stats.grants_revoked
    assert 2 == authorization_server.stats.refreshes


async def test_expired_access_token_is_refreshed_by_get_token(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """get_token() refreshes an expired token instead of running a new device flow."""
    authorization_server.configure(access_token_lifetime=300)
    on_code = approver(authorization_server)
    async with make_client(authorization_server, on_code=on_code) as client:
        first = await client.get_token()
        virtual_clock.advance(301)
        second = await client.get_token()
    assert first.access_token != second.access_token
    assert 1 == len(on_code.shown)
    assert 1 == authorization_server.stats.refreshes


async def test_refresh_ahead_returns_cached_token_and_refreshes_in_background(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """Inside the skew window the cached token comes back at once; one refresh runs behind it."""
    authorization_server.configure(access_token_lifetime=600)
    async with make_client(
        authorization_server, on_code=approver(authorization_server), refresh_skew=60
    ) as client:
        first = await client.get_token()
        virtual_clock.advance(586)  # past every account's refresh moment (540 to 585 s)
        same = await asyncio.gather(*(client.get_token() for _ in range(10)))
        assert [first] * 10 == same

        async def refreshed() -> bool:
            return first is not await client.get_token()

        await eventually(refreshed)  # the background refresh has replaced the cached token
        newer = await client.get_token()
    assert 1 == authorization_server.stats.refreshes
    assert newer.access_token != first.access_token


async def test_failed_background_refresh_keeps_the_token_and_retries_later(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed background refresh: callers keep the cached token, the next try comes halfway to
    the end of its usable life, and the token is never served past that end."""
    authorization_server.configure(access_token_lifetime=600)
    rejected = Fault(
        endpoint="token",
        status=400,
        content_type="application/json",
        body='{"error": "invalid_request"}',
        times=None,
    )

    def failures() -> int:
        return sum("background refresh" in r.getMessage() for r in caplog.records)

    def failed(tries: int) -> Callable[[], bool]:
        return lambda: failures() >= tries

    async with make_client(
        authorization_server, on_code=approver(authorization_server), refresh_skew=60
    ) as client:
        # Refresh ahead from somewhere in 540 s to 585 s (spread by account), usable until 599 s.
        first = await client.get_token()
        authorization_server.faults.add(rejected)
        for advance, tries in ((586, 1), (0, 1), (6.5, 2), (3.25, 3)):
            virtual_clock.advance(advance)  # 586: try; 592.5: next try; 595.75: the next
            assert first is await client.get_token()
            await eventually(failed(tries))  # that try has ended (real time: the server is real)
            assert tries == failures()
        authorization_server.faults.clear()
        virtual_clock.advance(3.45)  # 599.2 s: past its usable life, callers wait for a refresh
        newer = await client.get_token()
    assert newer.access_token != first.access_token
    assert authorization_server.is_valid_access_token(newer.access_token)
    # One try per step, none more (the step that does not advance starts none): the server saw
    # the refreshes 6.5, 3.25 and 3.45 s apart, the three rejected and the last one answered.
    refreshes = [r for r in authorization_server.requests if r.form.get("grant_type") == REFRESH]
    assert [400, 400, 400, 200] == [r.status for r in refreshes]
    assert [6.5, 3.25, 3.45] == gaps([r.at for r in refreshes])


async def test_concurrent_callers_share_one_refresh(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """20 callers with an expired token cause exactly one refresh request."""
    authorization_server.configure(access_token_lifetime=300)
    async with make_client(authorization_server, on_code=approver(authorization_server)) as client:
        await client.get_token()
        virtual_clock.advance(400)
        tokens = await asyncio.gather(*(client.get_token() for _ in range(20)))
    assert 1 == len({t.access_token for t in tokens})
    assert 1 == authorization_server.stats.refreshes


async def test_concurrent_callers_share_one_device_flow(
    authorization_server: AuthorizationServer,
) -> None:
    """Many waiters for an account without a token see one code shown, not N."""
    on_code = approver(authorization_server)
    async with make_client(authorization_server, on_code=on_code) as client:
        tokens = await asyncio.gather(*(client.get_token("bot") for _ in range(10)))
    assert 1 == len(on_code.shown)
    assert 1 == authorization_server.stats.device_authorizations
    assert 1 == len({t.access_token for t in tokens})


async def test_without_on_code_reauthorization_is_required(
    authorization_server: AuthorizationServer,
) -> None:
    """No token and no on_code: ReauthorizationRequiredError, never a hang."""
    async with make_client(authorization_server) as client:
        with pytest.raises(ReauthorizationRequiredError):
            await client.get_token()


async def test_invalid_grant_on_refresh_runs_device_flow_again(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """A revoked grant is removed from the store and a new device flow runs."""
    authorization_server.configure(access_token_lifetime=300)
    on_code = approver(authorization_server)
    async with make_client(authorization_server, on_code=on_code) as client:
        await client.get_token()
        authorization_server.revoke_all()
        virtual_clock.advance(400)
        token = await client.get_token()
    assert authorization_server.is_valid_access_token(token.access_token)
    assert 2 == len(on_code.shown)


async def test_invalid_grant_without_on_code_removes_token(
    authorization_server: AuthorizationServer,
    virtual_clock: VirtualClock,
) -> None:
    """A revoked grant and no on_code: the dead token is deleted and reauthorization is asked."""
    authorization_server.configure(access_token_lifetime=300)
    async with make_client(authorization_server, on_code=approver(authorization_server)) as first:
        await first.get_token()
        store = first.store
    async with make_client(authorization_server, store=store) as client:
        authorization_server.revoke_all()
        virtual_clock.advance(400)
        with pytest.raises(ReauthorizationRequiredError):
            await client.get_token()
        assert None is await stored_token(client, "default")


async def test_save_token_and_logout_revokes(authorization_server: AuthorizationServer) -> None:
    """save_token() stores a token obtained elsewhere; logout() revokes it and deletes it."""
    async with make_client(authorization_server) as client:
        token = issued_token(authorization_server, client.client_id)
        await client.save_token("imported", token)
        assert token == await client.get_token("imported")
        assert await client.logout("imported")
        assert None is await stored_token(client, "imported")
    assert not authorization_server.is_valid_access_token(token.access_token)


async def test_waiter_timeout_leaves_shared_flow_running(
    authorization_server: AuthorizationServer,
) -> None:
    """A caller that times out does not cancel the flow other callers wait on."""
    on_code = approver(authorization_server)
    delay = 0.2 * time_factor()  # real seconds
    authorization_server.faults.add(Fault(endpoint="token", delay=delay, times=1))
    async with make_client(authorization_server, on_code=on_code) as client:
        patient = asyncio.ensure_future(client.get_token("x"))
        with pytest.raises(TimeoutError):
            await client.get_token("x", timeout=delay / 4)
        token = await patient
    assert authorization_server.is_valid_access_token(token.access_token)


@pytest.mark.authorization_server(clients={"conf id": "s3cr:et&"}, auto_approve_after=1)
async def test_discovered_provider_and_client_secret_basic(
    authorization_server: AuthorizationServer,
) -> None:
    """Provider.discover() + client_secret_basic work against a confidential client."""
    provider = await Provider.discover(authorization_server.issuer)
    assert authorization_server.token_endpoint == provider.token_endpoint
    for method in ("client_secret_basic", "client_secret_post"):
        async with make_client(
            authorization_server,
            provider=provider,
            client_id="conf id",
            client_secret="s3cr:et&",
            client_auth=method,
            on_code=lambda c, a: None,
        ) as client:
            token = await client.get_token(method)
        assert authorization_server.is_valid_access_token(token.access_token)
    async with make_client(
        authorization_server,
        provider=provider,
        client_id="conf id",
        client_secret="wrong",
        on_code=lambda c, a: None,
    ) as client:
        with pytest.raises(InvalidClientError):
            await client.get_token()


@pytest.mark.authorization_server(clients={"conf": "secret"}, auto_approve_after=0)
async def test_client_secret_defaults_to_http_basic(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 6749 2.3.1: with a secret and no client_auth, credentials go in HTTP Basic."""
    async with make_client(
        authorization_server, client_id="conf", client_secret="secret", on_code=lambda c, a: None
    ) as client:
        await client.get_token()
    posts = [r for r in authorization_server.requests if r.method == "POST"]
    assert posts
    assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in posts)
    assert all("client_secret" not in r.form for r in posts)


async def test_logout_deletes_even_when_discovery_fails(
    authorization_server: AuthorizationServer,
) -> None:
    """logout() removes the local token even when the provider cannot be reached."""
    store = MemoryStore()
    async with make_client(authorization_server, store=store) as client:
        await client.save_token("a", Token(access_token="x"))
    authorization_server.faults.add(Fault(endpoint="discovery", status=404, times=None))
    async with make_client(authorization_server, store=store) as client:
        assert False is await client.logout("a")
        assert None is await stored_token(client, "a")
