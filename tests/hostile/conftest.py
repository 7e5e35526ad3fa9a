"""Fixtures for the hostile-server suite: a hostile server, a second host, a client factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hostile_server import HostileServer

from deviceflow import DeviceCode, DeviceFlowClient, Provider
from deviceflow.testing import VirtualClock


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    async with HostileServer() as server:
        yield server


@pytest.fixture
async def elsewhere() -> AsyncIterator[HostileServer]:
    """Another host: where redirects point; it must never be reached."""
    async with HostileServer() as server:
        yield server


class CodesShown:
    """An on_code callback that records every code it was asked to show."""

    def __init__(self) -> None:
        self.codes: list[DeviceCode] = []

    def __call__(self, code: DeviceCode, account: str) -> None:
        self.codes.append(code)


@pytest.fixture
def shown() -> CodesShown:
    return CodesShown()


@pytest.fixture
def make_client(
    hostile: HostileServer, virtual_clock: VirtualClock, shown: CodesShown
) -> Callable[..., DeviceFlowClient]:
    """A DeviceFlowClient for the hostile server (discovery by default), on the virtual clock."""

    def make(**kwargs: Any) -> DeviceFlowClient:
        provider = kwargs.pop("provider", None) or Provider(issuer=hostile.url)
        kwargs.setdefault("client_id", "hostile-test")
        kwargs.setdefault("clock", virtual_clock)
        kwargs.setdefault("on_code", shown)
        kwargs.setdefault("http_timeout", 2.0)
        kwargs.setdefault("lock_ttl", 5.0)
        return DeviceFlowClient(provider, **kwargs)

    return make
