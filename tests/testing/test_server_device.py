"""The device authorization endpoint (RFC 8628 3.1, 3.2) and request validation."""

from __future__ import annotations

import asyncio
import re

import pytest
from server_wire import CLIENT, poll, post, start_flow

from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import time_factor

USER_CODE = re.compile(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}")


async def test_answer_has_every_rfc8628_field(authorization_server: AuthorizationServer) -> None:
    """device_code, user_code, verification_uri(_complete), expires_in and interval are sent."""
    server = authorization_server
    answer = await post(server.device_authorization_endpoint, {"client_id": CLIENT})
    data = answer.data
    assert 200 == answer.status
    assert "application/json" == answer.content_type
    assert "no-store" == answer.headers["Cache-Control"]
    assert {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    } == set(data)
    assert USER_CODE.fullmatch(data["user_code"])
    assert server.verification_uri == data["verification_uri"]
    assert (
        f"{server.verification_uri}?user_code={data['user_code']}"
        == data["verification_uri_complete"]
    )
    assert (600, 5) == (data["expires_in"], data["interval"])
    assert len(data["device_code"]) >= 32


@pytest.mark.authorization_server(interval=None)
async def test_interval_can_be_omitted(authorization_server: AuthorizationServer) -> None:
    """interval=None leaves interval out of the answer (clients must then use 5 s)."""
    assert "interval" not in await start_flow(authorization_server)


@pytest.mark.parametrize(
    ("interval", "as_string", "expected"),
    [(7, True, "7"), ("soon", False, "soon"), (0, False, 0)],
)
async def test_interval_as_sent(interval: int | str, as_string: bool, expected: object) -> None:
    """The advertised interval can be a string, garbage or zero, to test clients' parsing."""
    async with AuthorizationServer(interval=interval, interval_as_string=as_string) as server:
        assert expected == (await start_flow(server))["interval"]


async def test_user_codes_are_unique(authorization_server: AuthorizationServer) -> None:
    """Many codes in a row never repeat a user code or a device code."""
    codes = [await start_flow(authorization_server) for _ in range(40)]
    assert 40 == len({c["user_code"] for c in codes}) == len({c["device_code"] for c in codes})
    assert 40 == authorization_server.stats.device_authorizations


async def test_scope_is_checked(authorization_server: AuthorizationServer) -> None:
    """A malformed scope token is invalid_scope (RFC 6749 3.3); blank scope means none."""
    server = authorization_server
    answer = await post(
        server.device_authorization_endpoint, {"client_id": CLIENT, "scope": 'a "b"'}
    )
    assert (400, "invalid_scope") == (answer.status, answer.error)
    code = await start_flow(server, scope="  ")
    server.approve(code["user_code"])
    assert "scope" not in (await poll(server, code["device_code"])).data


@pytest.mark.authorization_server(scopes_supported=["openid", "offline_access"])
async def test_unsupported_scope_is_refused(authorization_server: AuthorizationServer) -> None:
    """With scopes_supported set, other scopes are invalid_scope; listed ones are fine."""
    url = authorization_server.device_authorization_endpoint
    refused = await post(url, {"client_id": CLIENT, "scope": "openid admin"})
    accepted = await post(url, {"client_id": CLIENT, "scope": "openid offline_access"})
    assert (400, "invalid_scope") == (refused.status, refused.error)
    assert 200 == accepted.status


@pytest.mark.parametrize(
    ("body", "content_type", "description"),
    [
        (b"", "application/x-www-form-urlencoded", "client_id is missing"),
        (b"client_id=", "application/x-www-form-urlencoded", "client_id is missing"),
        (b"client_id=a&client_id=b", "application/x-www-form-urlencoded", "repeated"),
        (b'{"client_id": "a"}', "application/json", "application/x-www-form-urlencoded"),
        (b"client_id=a", "text/plain", "application/x-www-form-urlencoded"),
        (b"client_id=%ff%fe", "application/x-www-form-urlencoded", "UTF-8"),
        (b"client_id=\xff", "application/x-www-form-urlencoded", "UTF-8"),
        (b"&".join(b"f%d=1" % i for i in range(99)), "application/x-www-form-urlencoded", "many"),
    ],
)
async def test_malformed_requests_are_invalid_request(
    authorization_server: AuthorizationServer, body: bytes, content_type: str, description: str
) -> None:
    """Missing, empty, repeated or undecodable parameters get invalid_request, never a 500."""
    answer = await post(
        authorization_server.device_authorization_endpoint,
        body,
        headers={"Content-Type": content_type},
    )
    assert (400, "invalid_request") == (answer.status, answer.error)
    assert description in answer.data["error_description"]


async def test_oversized_body_is_refused(authorization_server: AuthorizationServer) -> None:
    """A body over 64 KiB is answered 413 invalid_request."""
    answer = await post(
        authorization_server.device_authorization_endpoint,
        {"client_id": CLIENT, "pad": "x" * 70_000},
    )
    assert (413, "invalid_request") == (answer.status, answer.error)


async def test_wait_for_code_hands_out_codes_in_order() -> None:
    """wait_for_code returns each issued user code once, even if issued before the call."""
    async with AuthorizationServer(clock=VirtualClock()) as server:
        first = await start_flow(server)
        waiter = asyncio.create_task(server.wait_for_code(timeout=5 * time_factor()))
        assert first["user_code"] == await waiter
        waiter = asyncio.create_task(server.wait_for_code(timeout=5 * time_factor()))
        await asyncio.sleep(0)
        second = await start_flow(server)
        assert second["user_code"] == await waiter
        with pytest.raises(TimeoutError, match="no device code"):
            await server.wait_for_code(timeout=0.01)


async def test_pending_codes_lists_undecided_codes(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """pending_codes lists codes waiting for a decision, oldest first; decided or expired leave."""
    server = authorization_server
    codes = [(await start_flow(server))["user_code"] for _ in range(4)]
    assert codes == server.pending_codes()
    server.approve(codes[0])
    server.deny(codes[1])
    server.expire(codes[2])
    assert [codes[3]] == server.pending_codes()
    virtual_clock.advance(600)
    assert [] == server.pending_codes()
