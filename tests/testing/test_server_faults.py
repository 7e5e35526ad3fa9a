"""Fault injection: errors, Retry-After, odd bodies, delays and dropped connections."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from server_wire import get, poll, post, start_flow

from deviceflow.testing import AuthorizationServer, Fault, VirtualClock


async def test_503_with_retry_after_then_normal(
    authorization_server: AuthorizationServer,
) -> None:
    """A fault answers once with its status and Retry-After; the next request is normal."""
    server = authorization_server
    server.faults.add(Fault(endpoint="device", status=503, retry_after=7))
    faulted = await post(server.device_authorization_endpoint, {"client_id": "c"})
    normal = await post(server.device_authorization_endpoint, {"client_id": "c"})
    assert (503, "7", "injected fault: HTTP 503") == (
        faulted.status,
        faulted.headers["Retry-After"],
        faulted.text,
    )
    assert 200 == normal.status
    assert 0 == len(server.faults)
    assert [503, 200] == [r.status for r in server.requests]
    assert Fault(endpoint="device", status=503, retry_after=7) == server.requests[0].fault


async def test_200_with_an_error_body(authorization_server: AuthorizationServer) -> None:
    """A fault can answer 200 with an OAuth error, as GitHub does."""
    server = authorization_server
    device_code = (await start_flow(server))["device_code"]
    body = '{"error": "authorization_pending"}'
    server.faults.add(
        Fault(endpoint="token", status=200, body=body, content_type="application/json")
    )
    answer = await poll(server, device_code)
    assert (200, "authorization_pending") == (answer.status, answer.error)


async def test_html_body_and_extra_headers(authorization_server: AuthorizationServer) -> None:
    """A fault can serve any bytes with any content type and headers."""
    server = authorization_server
    server.faults.add(
        Fault(
            endpoint="discovery",
            status=200,
            body=b"<html>captive portal</html>",
            content_type="text/html",
            headers={"X-Fault": "yes"},
        )
    )
    answer = await get(server.openid_configuration_url)
    assert (200, "text/html", "<html>captive portal</html>", "yes") == (
        answer.status,
        answer.content_type,
        answer.text,
        answer.headers["X-Fault"],
    )


async def test_dropped_connection(authorization_server: AuthorizationServer) -> None:
    """drop=True closes the connection without an answer; the log shows no status."""
    server = authorization_server
    server.faults.add(Fault(endpoint="token", drop=True))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await poll(server, "dc_x")
    assert (None, True) == (server.requests[-1].status, server.requests[-1].fault is not None)
    assert "invalid_grant" == (await poll(server, "dc_x")).error


async def test_delay_then_normal_answer(authorization_server: AuthorizationServer) -> None:
    """status=None with a delay is a slow server: the real answer comes late."""
    server = authorization_server
    server.faults.add(Fault(endpoint="device", status=None, delay=0.05))
    started = time.monotonic()
    code = await start_flow(server)
    assert time.monotonic() - started >= 0.05
    assert "user_code" in code


async def test_delay_trips_a_client_timeout(authorization_server: AuthorizationServer) -> None:
    """A long delay lets a test exercise a client's read timeout."""
    server = authorization_server
    server.faults.add(Fault(endpoint="token", status=None, delay=2.0))
    timeout = aiohttp.ClientTimeout(total=0.05)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(server.token_endpoint, data={"client_id": "c"})


async def test_times_and_permanent_faults(authorization_server: AuthorizationServer) -> None:
    """times=N applies N times; times=None applies until the faults are cleared."""
    server = authorization_server
    server.faults.add(Fault(endpoint="resource", status=500, times=2))
    server.faults.add(Fault(endpoint="*", status=502, times=None))
    statuses = [(await get(server.resource_url)).status for _ in range(4)]
    assert [500, 500, 502, 502] == statuses
    assert [Fault(endpoint="*", status=502, times=None)] == list(server.faults)
    assert 502 == (await get(server.verification_uri)).status
    server.faults.clear()
    assert 401 == (await get(server.resource_url)).status


async def test_faults_only_hit_their_endpoint(authorization_server: AuthorizationServer) -> None:
    """A token fault leaves the device endpoint alone."""
    server = authorization_server
    server.faults.add(Fault(endpoint="token", status=429, retry_after=3))
    code = await start_flow(server)
    answer = await poll(server, code["device_code"])
    assert (429, "3") == (answer.status, answer.headers["Retry-After"])


async def test_faulted_polls_are_logged_but_not_counted(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """polls() lists faulted polls with their times; stats.polls counts only real answers."""
    server = authorization_server
    device_code = (await start_flow(server))["device_code"]
    server.faults.add(Fault(endpoint="token", status=503))
    start = virtual_clock.monotonic()
    await poll(server, device_code)
    virtual_clock.advance(5)
    await poll(server, device_code)
    assert [start, start + 5] == server.polls(device_code)
    assert 1 == server.stats.polls


def test_fault_arguments_are_checked() -> None:
    """Unknown endpoints, non-HTTP statuses and times below 1 are refused."""
    with pytest.raises(ValueError, match="unknown endpoint"):
        Fault(endpoint="tokens")
    with pytest.raises(ValueError, match="status"):
        Fault(status=99)
    with pytest.raises(ValueError, match="times"):
        Fault(times=0)
