"""The pytest plugin's fixtures and marker, as downstream projects use them."""

from __future__ import annotations

import pytest
from server_wire import poll, start_flow

from deviceflow.testing import AuthorizationServer, VirtualClock

pytestmark = pytest.mark.authorization_server(interval=3, code_lifetime=30)


async def test_fixture_is_a_started_server_on_the_virtual_clock(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """authorization_server is running, on the same virtual_clock the test gets."""
    assert virtual_clock is authorization_server.clock
    code = await start_flow(authorization_server)
    virtual_clock.advance(30)
    assert "expired_token" == (await poll(authorization_server, code["device_code"])).error


async def test_module_marker_configures_the_server(
    authorization_server: AuthorizationServer,
) -> None:
    """A module-level authorization_server marker passes its options to the server."""
    code = await start_flow(authorization_server)
    assert (3, 30) == (code["interval"], code["expires_in"])


@pytest.mark.authorization_server(interval=None, auto_approve_after=0)
async def test_closest_marker_wins(authorization_server: AuthorizationServer) -> None:
    """A function marker overrides the module marker for the options it names."""
    code = await start_flow(authorization_server)
    assert "interval" not in code
    assert 30 == code["expires_in"]
    assert 200 == (await poll(authorization_server, code["device_code"])).status


def test_virtual_clock_fixture_is_fresh(virtual_clock: VirtualClock) -> None:
    """virtual_clock starts at the VirtualClock's default origin."""
    assert VirtualClock().monotonic() == virtual_clock.monotonic()
