"""The token endpoint's device_code grant (RFC 8628 3.4, 3.5) and the user's controls."""

from __future__ import annotations

import pytest
from server_wire import CLIENT, me, poll, post, start_flow

from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import DEVICE_GRANT


async def test_pending_then_approved_gives_tokens(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """authorization_pending until approved; then an RFC 6749 5.1 token answer."""
    server = authorization_server
    code = await start_flow(server, scope="openid offline_access")
    pending = await poll(server, code["device_code"])
    assert (400, "authorization_pending") == (pending.status, pending.error)
    server.approve(code["user_code"])
    virtual_clock.advance(5)
    answer = await poll(server, code["device_code"])
    tokens = answer.data
    assert 200 == answer.status
    assert ("no-store", "no-cache") == (answer.headers["Cache-Control"], answer.headers["Pragma"])
    fields = {"access_token", "token_type", "expires_in", "refresh_token", "scope", "id_token"}
    assert fields == set(tokens)
    assert ("Bearer", 3600, "openid offline_access") == (
        tokens["token_type"],
        tokens["expires_in"],
        tokens["scope"],
    )
    assert server.is_valid_access_token(tokens["access_token"])
    assert not server.is_valid_access_token(tokens["refresh_token"])
    resource = await me(server, tokens["access_token"])
    assert (200, {"sub": "user", "client_id": CLIENT, "scope": "openid offline_access"}) == (
        resource.status,
        resource.data,
    )


@pytest.mark.parametrize("typed", ["lower", "nodash", "spaced"])
async def test_user_code_matching_ignores_case_dashes_and_spaces(
    authorization_server: AuthorizationServer, typed: str
) -> None:
    """approve() accepts the user code however the person typed it."""
    code = await start_flow(authorization_server)
    user_code = code["user_code"]
    variants = {
        "lower": user_code.lower(),
        "nodash": user_code.replace("-", ""),
        "spaced": " ".join(user_code.replace("-", "")),
    }
    authorization_server.approve(variants[typed])
    assert 200 == (await poll(authorization_server, code["device_code"])).status


async def test_denied_code_gets_access_denied(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """deny() makes every later poll access_denied."""
    code = await start_flow(authorization_server)
    authorization_server.deny(code["user_code"])
    for _ in range(2):
        answer = await poll(authorization_server, code["device_code"])
        assert (400, "access_denied") == (answer.status, answer.error)
        virtual_clock.advance(5)


async def test_code_expires_by_time_and_by_control(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """A code is expired_token after code_lifetime on the server's clock, or after expire()."""
    server = authorization_server
    timed, forced = await start_flow(server), await start_flow(server)
    virtual_clock.advance(599)
    assert "authorization_pending" == (await poll(server, timed["device_code"])).error
    server.expire(forced["user_code"])
    assert "expired_token" == (await poll(server, forced["device_code"])).error
    virtual_clock.advance(5)
    assert "expired_token" == (await poll(server, timed["device_code"])).error
    with pytest.raises(ValueError, match="expired"):
        server.approve(timed["user_code"])


async def test_slow_down_adds_five_seconds_for_good(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """Polling early draws slow_down and the code's interval grows by 5 s, kept afterwards."""
    server = authorization_server
    device_code = (await start_flow(server))["device_code"]
    errors = []
    for gap in (0, 1, 10, 9, 15):  # interval 5 -> 10 after the 2nd poll -> 15 after the 4th
        virtual_clock.advance(gap)
        errors.append((await poll(server, device_code)).error)
    assert [
        "authorization_pending",
        "slow_down",
        "authorization_pending",
        "slow_down",
        "authorization_pending",
    ] == errors
    assert 2 == server.stats.slow_downs
    assert "slow_down" == (await poll(server, device_code)).error  # at once: still too fast


async def test_poll_exactly_on_the_interval_is_on_time(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """Polls exactly `interval` apart on a virtual clock never draw slow_down."""
    server = authorization_server
    virtual_clock.advance(0.1)
    device_code = (await start_flow(server))["device_code"]
    for _ in range(20):
        assert "authorization_pending" == (await poll(server, device_code)).error
        virtual_clock.advance(5)
    assert 0 == server.stats.slow_downs


@pytest.mark.authorization_server(enforce_interval=False)
async def test_interval_enforcement_can_be_turned_off(
    authorization_server: AuthorizationServer,
) -> None:
    """With enforce_interval=False, back-to-back polls are simply pending."""
    device_code = (await start_flow(authorization_server))["device_code"]
    for _ in range(3):
        assert "authorization_pending" == (await poll(authorization_server, device_code)).error


@pytest.mark.authorization_server(interval=None)
async def test_omitted_interval_is_enforced_as_five_seconds(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """Without an advertised interval, clients are held to RFC 8628's default of 5 s."""
    device_code = (await start_flow(authorization_server))["device_code"]
    await poll(authorization_server, device_code)
    virtual_clock.advance(4.9)
    assert "slow_down" == (await poll(authorization_server, device_code)).error


async def test_polling_a_redeemed_code_revokes_its_grant(
    authorization_server: AuthorizationServer,
) -> None:
    """A device code polled again after success is invalid_grant and its tokens are revoked."""
    server = authorization_server
    code = await start_flow(server)
    server.approve(code["user_code"])
    tokens = (await poll(server, code["device_code"])).data
    again = await poll(server, code["device_code"])
    assert (400, "invalid_grant") == (again.status, again.error)
    assert not server.is_valid_access_token(tokens["access_token"])
    refreshed = await post(
        server.token_endpoint,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": CLIENT,
        },
    )
    assert "invalid_grant" == refreshed.error
    assert 401 == (await me(server, tokens["access_token"])).status
    assert (1, 1) == (server.stats.grants_revoked, server.stats.tokens_issued)


async def test_unknown_or_foreign_device_code_is_invalid_grant(
    authorization_server: AuthorizationServer,
) -> None:
    """A device code that does not exist, or belongs to another client, is invalid_grant."""
    code = await start_flow(authorization_server)
    authorization_server.approve(code["user_code"])
    assert "invalid_grant" == (await poll(authorization_server, "dc_nope")).error
    assert "invalid_grant" == (await poll(authorization_server, code["device_code"], "x")).error
    assert 2 == authorization_server.stats.invalid_grants
    assert 200 == (await poll(authorization_server, code["device_code"])).status


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"client_id": CLIENT}, "invalid_request"),
        ({"client_id": CLIENT, "grant_type": DEVICE_GRANT}, "invalid_request"),
        ({"client_id": CLIENT, "grant_type": "refresh_token"}, "invalid_request"),
        ({"client_id": CLIENT, "grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": DEVICE_GRANT, "device_code": "x"}, "invalid_request"),
    ],
)
async def test_incomplete_token_requests(
    authorization_server: AuthorizationServer, form: dict[str, str], error: str
) -> None:
    """Missing grant_type, device_code, refresh_token or client_id, or another grant, are 400s."""
    answer = await post(authorization_server.token_endpoint, form)
    assert (400, error) == (answer.status, answer.error)


@pytest.mark.authorization_server(auto_approve_after=0)
async def test_auto_approve_at_issue(authorization_server: AuthorizationServer) -> None:
    """auto_approve_after=0: the first poll already gets the tokens."""
    code = await start_flow(authorization_server)
    assert [] == authorization_server.pending_codes()
    assert 200 == (await poll(authorization_server, code["device_code"])).status


@pytest.mark.authorization_server(auto_approve_after=2)
async def test_auto_approve_after_n_polls(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """auto_approve_after=2: two polls are pending, the third gets the tokens."""
    device_code = (await start_flow(authorization_server))["device_code"]
    statuses = []
    for _ in range(3):
        statuses.append((await poll(authorization_server, device_code)).status)
        virtual_clock.advance(5)
    assert [400, 400, 200] == statuses


async def test_configure_changes_later_codes(
    authorization_server: AuthorizationServer,
) -> None:
    """configure() applies to codes issued afterwards."""
    authorization_server.configure(interval=9, code_lifetime=60, auto_approve_after=0)
    code = await start_flow(authorization_server)
    assert (9, 60) == (code["interval"], code["expires_in"])
    assert 200 == (await poll(authorization_server, code["device_code"])).status


async def test_request_log_and_poll_times_follow_the_clock(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """requests and polls() record each request with the server clock's monotonic time."""
    server = authorization_server
    start = virtual_clock.monotonic()
    first = (await start_flow(server))["device_code"]
    second = (await start_flow(server))["device_code"]
    for _ in range(3):
        virtual_clock.advance(5)
        await poll(server, first)
    virtual_clock.advance(1)
    await poll(server, second)
    assert [start + 5, start + 10, start + 15, start + 16] == server.polls()
    assert [start + 5, start + 10, start + 15] == server.polls(first)
    assert [start + 16] == server.polls(second)
    log = server.requests
    assert ["device", "device", "token", "token", "token", "token"] == [r.endpoint for r in log]
    assert ("POST", "/token", 400) == (log[2].method, log[2].path, log[2].status)
    assert {"grant_type": DEVICE_GRANT, "device_code": first, "client_id": CLIENT} == log[2].form
    assert "application/x-www-form-urlencoded" == log[2].headers["content-type"]
    assert 4 == server.stats.polls


async def test_approve_and_deny_need_a_pending_code(
    authorization_server: AuthorizationServer,
) -> None:
    """Unknown codes raise KeyError; decided codes raise ValueError."""
    server = authorization_server
    with pytest.raises(KeyError):
        server.approve("BCDF-GHJK")
    with pytest.raises(KeyError):
        server.expire("BCDF-GHJK")
    code = await start_flow(server)
    server.deny(code["user_code"])
    with pytest.raises(ValueError, match="already denied"):
        server.approve(code["user_code"])
