"""pytest fixtures for testing device-flow clients: ``virtual_clock`` and ``authorization_server``.

The plugin registers itself through the ``pytest11`` entry point when deviceflow is installed::

    async def test_bot_signs_in(authorization_server, virtual_clock):
        client = make_my_client(issuer=authorization_server.issuer, clock=virtual_clock)
        ...

    @pytest.mark.authorization_server(interval=None, auto_approve_after=0)
    async def test_without_interval(authorization_server): ...

    @pytest.mark.authorization_server(dpop=True, dpop_nonce=True)  # DPoP, RFC 9449
    async def test_sender_constrained(authorization_server): ...

The ``authorization_server`` marker passes keyword arguments to
:class:`~deviceflow.testing.AuthorizationServer` (the closest marker wins for each argument).
The server runs on the ``virtual_clock`` unless the marker passes another ``clock``.
deviceflow is imported only when a fixture is used, so the plugin costs nothing otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from deviceflow.testing import AuthorizationServer, VirtualClock

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - other async plugins (anyio) run async fixtures too
    _async_fixture = pytest.fixture  # type: ignore[assignment]

__all__ = ["authorization_server", "virtual_clock"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``authorization_server`` marker (needed under ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        "authorization_server(**options): keyword arguments for the authorization_server "
        "fixture (see deviceflow.testing.AuthorizationServer)",
    )


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """A fresh :class:`~deviceflow.testing.VirtualClock` (shared with ``authorization_server``)."""
    from deviceflow.testing import VirtualClock

    return VirtualClock()


@_async_fixture
async def authorization_server(
    request: pytest.FixtureRequest, virtual_clock: VirtualClock
) -> AsyncIterator[AuthorizationServer]:
    """A started :class:`~deviceflow.testing.AuthorizationServer` on ``virtual_clock``.

    Configure it with ``@pytest.mark.authorization_server(**options)``.
    """
    from deviceflow.testing import AuthorizationServer

    options: dict[str, Any] = {"clock": virtual_clock}
    # iter_markers yields the closest marker first; apply the farthest first so closer ones win.
    for marker in reversed(list(request.node.iter_markers("authorization_server"))):
        if marker.args:
            raise pytest.UsageError("the authorization_server marker takes keyword arguments only")
        options.update(marker.kwargs)
    async with AuthorizationServer(**options) as server:
        yield server
