"""Drive a client against a hostile server and judge how it ended."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import anyio
from hostile_server import DISCOVERY, HostileServer

from deviceflow import (
    DeviceCode,
    DeviceFlowClient,
    DeviceFlowError,
    FlowEvent,
    FlowState,
    Provider,
    ReauthorizationRequiredError,
    Token,
)
from deviceflow._urls import require_secure_url
from helpers import time_factor

__all__ = [
    "BOUND",
    "ENDPOINTS",
    "PATHS",
    "UNSAFE_LINKS",
    "expired_token",
    "explicit_provider",
    "final_error",
    "flow_events",
    "links_are_safe",
    "provoke",
    "typed_error",
]

#: Real seconds any one hostile exchange may take before the test calls it a hang.
BOUND = 10.0 * time_factor()


async def flow_events(client: DeviceFlowClient, account: str = "hostile") -> list[FlowEvent]:
    """Every FlowEvent of one authorize() run, which must end within BOUND real seconds."""
    events: list[FlowEvent] = []
    with anyio.fail_after(BOUND):
        async for event in client.authorize(account):
            events.append(event)
    return events


def final_error(events: list[FlowEvent]) -> DeviceFlowError:
    """The typed error the flow ended with (it must have ended, and not with a token)."""
    last = events[-1]
    assert last.state in (FlowState.FAILED, FlowState.EXPIRED, FlowState.DENIED), last
    assert last.token is None
    assert isinstance(last.error, DeviceFlowError), repr(last.error)
    return last.error


async def typed_error(call: object) -> tuple[DeviceFlowError, float]:
    """Await ``call`` (an awaitable), expecting a DeviceFlowError; returns it and real seconds."""
    start = time.monotonic()
    with anyio.fail_after(BOUND):
        try:
            await call  # type: ignore[misc]
        except DeviceFlowError as exc:
            return exc, time.monotonic() - start
    raise AssertionError("expected a DeviceFlowError, got a result")


def links_are_safe(codes: list[DeviceCode]) -> bool:
    """True when every link a user could be shown or sent to is https (or loopback http)."""
    for code in codes:
        for link in (code.verification_uri, code.verification_uri_complete, code.link):
            if link is None:
                continue
            try:
                require_secure_url(link, "link")
            except DeviceFlowError:
                return False
    return True


def expired_token() -> Token:
    """A stored token that is due for refresh (the virtual clock starts in 2030)."""
    return Token(
        access_token="stored-access-token",
        refresh_token="stored-refresh-token",
        expires_at=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )


def explicit_provider(server: HostileServer) -> Provider:
    """The hostile server's endpoints, given by hand (no discovery)."""
    return Provider(
        device_authorization_endpoint=server.url + "/device",
        token_endpoint=server.url + "/token",
        revocation_endpoint=server.url + "/revoke",
    )


#: Links a hostile server might offer as verification_uri(_complete): none may reach a person.
UNSAFE_LINKS = [
    "javascript:alert(document.cookie)",
    "JavaScript:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "http://evil.example/device",
    "HTTP://evil.example/device",
    "http://127.0.0.1.evil.example/device",
    "http://localhost.evil.example/device",
    "http://evil.localhost/device",
    "//evil.example/device",
    "/device",
    "https:///no-host",
    "https://evil.example/\r\nSet-Cookie: a=b",
    " https://evil.example/leading-space",
    "https://evil.example/\x00",
    "https://evil.example/\x1b[2K",
    "https://idp.example/\x9b2J",
    "https://evil.example/\u202egnp.exe",
    "https://idp\u200b.example/",
    "https://idp.example/\u00a0x",
    "https://" + "a" * 5000 + ".example/",
]

#: Where each endpoint lives on the hostile server.
PATHS = {
    "discovery": DISCOVERY,
    "device": "/device",
    "token": "/token",
    "refresh": "/token",
    "revoke": "/revoke",
}
ENDPOINTS = list(PATHS)


async def provoke(
    endpoint: str, server: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> DeviceFlowError | None:
    """Run the operation that reaches ``endpoint`` and return the typed error it ended with.

    ``discovery``, ``device`` and ``token`` run a device flow (authorize()); ``refresh`` calls
    get_token() for a stored, expired token; ``revoke`` calls logout(), which never raises
    (RFC 7009 2.2: any 200 is a success, whatever the body; anything else is logged and gives
    False) and must delete the local copy whatever the server did (then None is returned).
    """
    if endpoint == "discovery":
        async with make_client() as client:
            return final_error(await flow_events(client))
    provider = explicit_provider(server)
    if endpoint in ("device", "token"):
        async with make_client(provider=provider) as client:
            return final_error(await flow_events(client))
    async with make_client(provider=provider, on_code=None) as client:
        await client.save_token("hostile", expired_token())
        if endpoint == "refresh":
            error, _ = await typed_error(client.get_token("hostile"))
            return error
        assert "revoke" == endpoint
        with anyio.fail_after(BOUND):
            await client.logout("hostile")
        error, _ = await typed_error(client.get_token("hostile"))
        assert isinstance(error, ReauthorizationRequiredError)  # the local copy is gone
        return None
