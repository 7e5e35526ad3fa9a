"""DeviceFlowClient end to end against the built-in authorization server, on a virtual clock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from deviceflow import (
    AccessDeniedError,
    DeviceCode,
    DeviceFlowClient,
    ExpiredTokenError,
    FlowState,
    InvalidClientError,
    Provider,
    ReauthorizationRequiredError,
    Token,
)
from deviceflow.stores import MemoryStore
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock
from helpers import stored_token

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
async def server(virtual_clock: VirtualClock) -> AsyncIterator[AuthorizationServer]:
    async with AuthorizationServer(clock=virtual_clock, interval=5) as srv:
        yield srv


def approver(server: AuthorizationServer, *, deny: bool = False) -> Any:
    """An on_code callback that approves (or denies) the code as a person would."""
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode, account: str) -> None:
        shown.append(code)
        (server.deny if deny else server.approve)(code.user_code)

    on_code.shown = shown  # type: ignore[attr-defined]
    return on_code


@pytest.fixture
def make_client(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> Callable[..., DeviceFlowClient]:
    def make(**kwargs: Any) -> DeviceFlowClient:
        provider = kwargs.pop("provider", None) or Provider(issuer=server.issuer)
        kwargs.setdefault("client_id", "cli")
        kwargs.setdefault("scope", "openid offline_access")
        kwargs.setdefault("clock", virtual_clock)
        return DeviceFlowClient(provider, **kwargs)

    return make


def token_polls(server: AuthorizationServer) -> list[float]:
    return [
        r.at
        for r in server.requests
        if r.endpoint == "token" and r.form.get("grant_type") == DEVICE_GRANT
    ]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


async def test_approve_flow_yields_events_and_a_token(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """authorize() discovers, requests a code, polls, and ends GRANTED with a stored token."""
    async with make_client() as client:
        states = []
        async for event in client.authorize("alice"):
            states.append(event.state)
            if event.state is FlowState.PENDING:
                assert event.code is not None
                assert 5.0 == event.interval
                if len(token_polls(server)) == 0:
                    server.approve(event.code.user_code)
        assert [
            FlowState.DISCOVER,
            FlowState.REQUEST_CODE,
            FlowState.PENDING,
            FlowState.GRANTED,
        ] == states
        assert event.token is not None
        assert server.is_valid_access_token(event.token.access_token)
        assert event.token is await client.get_token("alice")


async def test_no_request_after_granted(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """Once a token is issued the client never polls again (RFC 8628 3.5)."""
    server.configure(auto_approve_after=3)
    async with make_client(on_code=lambda code, account: None) as client:
        await client.get_token()
        count = len(server.requests)
        virtual_clock.advance(120)
        await asyncio.sleep(0.05)
        assert count == len(server.requests)
    assert "token" == server.requests[-1].endpoint
    assert 1 == server.stats.tokens_issued


async def test_polls_are_spaced_by_the_interval(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """Polls land one interval apart on the server's clock, and slow_down is never drawn."""
    server.configure(auto_approve_after=4)
    async with make_client(on_code=lambda code, account: None) as client:
        await client.get_token()
    assert all(gap >= 5.0 for gap in gaps(token_polls(server)))
    assert 0 == server.stats.slow_downs


async def test_no_interval_means_five_seconds(
    virtual_clock: VirtualClock,
) -> None:
    """A server that omits interval is polled every 5 s (RFC 8628 3.2)."""
    async with AuthorizationServer(clock=virtual_clock, interval=None, auto_approve_after=3) as srv:
        provider = Provider(issuer=srv.issuer)
        async with DeviceFlowClient(
            provider, client_id="c", clock=virtual_clock, on_code=lambda c, a: None
        ) as client:
            await client.get_token()
        polls = token_polls(srv)
    assert len(polls) >= 3
    assert all(5.0 <= gap < 5.5 for gap in gaps(polls))


async def test_slow_down_adds_five_seconds_kept_afterwards(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """After slow_down every later poll is at least interval + 5 s apart (server's log)."""
    server.faults.add(
        Fault(
            endpoint="token",
            status=400,
            body=b'{"error":"slow_down"}',
            content_type="application/json",
            times=1,
        )
    )
    server.configure(auto_approve_after=5)
    async with make_client(on_code=lambda code, account: None) as client:
        await client.get_token()
    spacing = gaps(token_polls(server))
    assert spacing[0] >= 5.0
    assert all(gap >= 10.0 for gap in spacing[1:])
    assert len(spacing) >= 3


async def test_denied_raises_access_denied(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A denied code ends get_token with AccessDeniedError and stores nothing."""
    async with make_client(on_code=approver(server, deny=True)) as client:
        with pytest.raises(AccessDeniedError):
            await client.get_token()
        assert None is await stored_token(client, "default")


async def test_expired_code_raises_expired_token(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A code that expires unapproved ends with ExpiredTokenError, never polling past expiry."""
    server.configure(code_lifetime=30)
    events = []
    async with make_client() as client:
        async for event in client.authorize():
            events.append(event)
    assert FlowState.EXPIRED == events[-1].state
    assert isinstance(events[-1].error, ExpiredTokenError)
    code = events[-1].code
    assert code is not None
    last_poll = token_polls(server)[-1]
    first = server.requests[0].at
    assert last_poll - first <= 30.0


async def test_server_expire_control_is_reported(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """The server's expired_token answer ends the flow as EXPIRED."""

    def expire(code: DeviceCode, account: str) -> None:
        server.expire(code.user_code)

    async with make_client(on_code=expire) as client:
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
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient], fault: Fault
) -> None:
    """Dropped connections, 5xx and 429 are retried with backoff until the flow succeeds."""
    server.faults.add(fault)
    server.configure(auto_approve_after=1)
    async with make_client(on_code=lambda code, account: None) as client:
        token = await client.get_token()
    assert server.is_valid_access_token(token.access_token)
    assert all(gap >= 5.0 for gap in gaps(token_polls(server)))


async def test_retry_after_is_honoured(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A 429 with Retry-After: 20 delays the next poll by at least 20 s."""
    server.faults.add(Fault(endpoint="token", status=429, retry_after=20, times=1))
    server.configure(auto_approve_after=1)
    async with make_client(on_code=lambda code, account: None) as client:
        await client.get_token()
    assert gaps(token_polls(server))[0] >= 20.0


async def test_refresh_rotates_and_persists_refresh_token(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """refresh() uses the refresh token, stores the rotated one, and the old one is dead."""
    async with make_client(on_code=approver(server)) as client:
        first = await client.get_token()
        second = await client.refresh()
        assert first.refresh_token != second.refresh_token
        assert server.is_valid_access_token(second.access_token)
        stored = await client.store.get(client.store_key("default"))
        assert stored is not None
        assert second.refresh_token is not None
        assert second.refresh_token.encode() in stored.value
        third = await client.refresh()
        assert server.is_valid_access_token(third.access_token)
    assert 0 == server.stats.grants_revoked
    assert 2 == server.stats.refreshes


async def test_expired_access_token_is_refreshed_by_get_token(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """get_token() refreshes an expired token instead of running a new device flow."""
    server.configure(access_token_lifetime=300)
    on_code = approver(server)
    async with make_client(on_code=on_code) as client:
        first = await client.get_token()
        virtual_clock.advance(301)
        second = await client.get_token()
    assert first.access_token != second.access_token
    assert 1 == len(on_code.shown)
    assert 1 == server.stats.refreshes


async def test_refresh_ahead_returns_cached_token_and_refreshes_in_background(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """Inside the skew window the cached token comes back at once; one refresh runs behind it."""
    server.configure(access_token_lifetime=600)
    async with make_client(on_code=approver(server), refresh_skew=60) as client:
        first = await client.get_token()
        virtual_clock.advance(586)  # past every account's refresh moment (540 to 585 s)
        same = await asyncio.gather(*(client.get_token() for _ in range(10)))
        assert all(t is first for t in same)
        for _ in range(20):
            await asyncio.sleep(0.01)
            if server.stats.refreshes:
                break
        newer = await client.get_token()
    assert 1 == server.stats.refreshes
    assert newer.access_token != first.access_token


async def background_done(client: DeviceFlowClient) -> None:
    """Wait (real time: the server is real) until no flight of ``client`` is running."""
    for _ in range(500):
        if not client._flights:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the background refresh did not end")


async def test_failed_background_refresh_keeps_the_token_and_retries_later(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed background refresh: callers keep the cached token, the next try comes halfway to
    the end of its usable life, and the token is never served past that end."""
    server.configure(access_token_lifetime=600)
    rejected = Fault(
        endpoint="token",
        status=400,
        content_type="application/json",
        body='{"error": "invalid_request"}',
        times=None,
    )

    def failures() -> int:
        return sum("background refresh" in r.getMessage() for r in caplog.records)

    async with make_client(on_code=approver(server), refresh_skew=60) as client:
        # Refresh ahead from somewhere in 540 s to 585 s (spread by account), usable until 599 s.
        first = await client.get_token()
        server.faults.add(rejected)
        for advance, tries in ((586, 1), (0, 1), (6.5, 2), (3.25, 3)):
            virtual_clock.advance(advance)  # 586: try; 592.5: next try; 595.75: the next
            assert first is await client.get_token()
            await background_done(client)
            assert tries == failures()
        server.faults.clear()
        virtual_clock.advance(3.45)  # 599.2 s: past its usable life, callers wait for a refresh
        newer = await client.get_token()
    assert newer.access_token != first.access_token
    assert server.is_valid_access_token(newer.access_token)


async def test_concurrent_callers_share_one_refresh(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """20 callers with an expired token cause exactly one refresh request."""
    server.configure(access_token_lifetime=300)
    async with make_client(on_code=approver(server)) as client:
        await client.get_token()
        virtual_clock.advance(400)
        tokens = await asyncio.gather(*(client.get_token() for _ in range(20)))
    assert 1 == len({t.access_token for t in tokens})
    assert 1 == server.stats.refreshes


async def test_concurrent_callers_share_one_device_flow(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """Many waiters for an account without a token see one code shown, not N."""
    on_code = approver(server)
    async with make_client(on_code=on_code) as client:
        tokens = await asyncio.gather(*(client.get_token("bot") for _ in range(10)))
    assert 1 == len(on_code.shown)
    assert 1 == server.stats.device_authorizations
    assert 1 == len({t.access_token for t in tokens})


async def test_without_on_code_reauthorization_is_required(
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """No token and no on_code: ReauthorizationRequiredError, never a hang."""
    async with make_client() as client:
        with pytest.raises(ReauthorizationRequiredError):
            await client.get_token()


async def test_invalid_grant_on_refresh_runs_device_flow_again(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """A revoked grant is removed from the store and a new device flow runs."""
    server.configure(access_token_lifetime=300)
    on_code = approver(server)
    async with make_client(on_code=on_code) as client:
        await client.get_token()
        server.revoke_all()
        virtual_clock.advance(400)
        token = await client.get_token()
    assert server.is_valid_access_token(token.access_token)
    assert 2 == len(on_code.shown)


async def test_invalid_grant_without_on_code_removes_token(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """A revoked grant and no on_code: the dead token is deleted and reauthorization is asked."""
    server.configure(access_token_lifetime=300)
    async with make_client(on_code=approver(server)) as first:
        await first.get_token()
        store = first.store
    async with make_client(store=store) as client:
        server.revoke_all()
        virtual_clock.advance(400)
        with pytest.raises(ReauthorizationRequiredError):
            await client.get_token()
        assert None is await stored_token(client, "default")


async def test_save_token_and_logout_revokes(
    server: AuthorizationServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """save_token() stores a token obtained elsewhere; logout() revokes it and deletes it."""
    issued = server.issue_tokens("cli", scope="openid")
    token = Token(
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        expires_at=virtual_clock.wall() + timedelta(seconds=3600),
    )
    async with make_client() as client:
        await client.save_token("imported", token)
        assert token == await client.get_token("imported")
        assert await client.logout("imported")
        assert None is await stored_token(client, "imported")
    assert not server.is_valid_access_token(token.access_token)


async def test_waiter_timeout_leaves_shared_flow_running(
    server: AuthorizationServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A caller that times out does not cancel the flow other callers wait on."""
    on_code = approver(server)
    server.faults.add(Fault(endpoint="token", delay=0.2, times=1))
    async with make_client(on_code=on_code) as client:
        patient = asyncio.ensure_future(client.get_token("x"))
        with pytest.raises(TimeoutError):
            await client.get_token("x", timeout=0.05)
        token = await patient
    assert server.is_valid_access_token(token.access_token)


async def test_discovered_provider_and_client_secret_basic(virtual_clock: VirtualClock) -> None:
    """Provider.discover() + client_secret_basic work against a confidential client."""
    async with AuthorizationServer(
        clock=virtual_clock, clients={"conf id": "s3cr:et&"}, auto_approve_after=1
    ) as srv:
        provider = await Provider.discover(srv.issuer)
        assert srv.token_endpoint == provider.token_endpoint
        for method in ("client_secret_basic", "client_secret_post"):
            async with DeviceFlowClient(
                provider,
                client_id="conf id",
                client_secret="s3cr:et&",
                client_auth=method,
                clock=virtual_clock,
                on_code=lambda c, a: None,
            ) as client:
                token = await client.get_token(method)
            assert srv.is_valid_access_token(token.access_token)
        async with DeviceFlowClient(
            provider,
            client_id="conf id",
            client_secret="wrong",
            clock=virtual_clock,
            on_code=lambda c, a: None,
        ) as client:
            with pytest.raises(InvalidClientError):
                await client.get_token()


async def test_client_secret_defaults_to_http_basic(virtual_clock: VirtualClock) -> None:
    """RFC 6749 2.3.1: with a secret and no client_auth, credentials go in HTTP Basic."""
    async with AuthorizationServer(
        clock=virtual_clock, clients={"conf": "secret"}, auto_approve_after=0
    ) as srv:
        async with DeviceFlowClient(
            Provider(issuer=srv.issuer),
            client_id="conf",
            client_secret="secret",
            clock=virtual_clock,
            on_code=lambda c, a: None,
        ) as client:
            await client.get_token()
        posts = [r for r in srv.requests if r.method == "POST"]
    assert posts
    assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in posts)
    assert all("client_secret" not in r.form for r in posts)


async def test_logout_deletes_even_when_discovery_fails(
    server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """logout() removes the local token even when the provider cannot be reached."""
    store = MemoryStore()
    async with DeviceFlowClient(
        Provider(issuer=server.issuer), client_id="cli", clock=virtual_clock, store=store
    ) as client:
        await client.save_token("a", Token(access_token="x"))
    server.faults.add(Fault(endpoint="discovery", status=404, times=None))
    async with DeviceFlowClient(
        Provider(issuer=server.issuer), client_id="cli", clock=virtual_clock, store=store
    ) as client:
        assert False is await client.logout("a")
        assert None is await stored_token(client, "a")
