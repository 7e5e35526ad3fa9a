"""Hostile bodies on every endpoint: too big, too slow, too deep, ambiguous, not JSON at all."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import pytest
from aiohttp import web
from hostile_flows import ENDPOINTS, PATHS, provoke
from hostile_server import HostileServer, answer, drip, oversized

from deviceflow import (
    DeviceFlowClient,
    DeviceFlowError,
    DiscoveryError,
    ProtocolError,
)

TEN_MIB = 10 * 1024 * 1024
#: What a malformed answer ends in (discovery wraps it in DiscoveryError).
MALFORMED = (ProtocolError, DiscoveryError)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_ten_mib_body_is_refused(
    endpoint: str,
    declare_length: bool,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """A 10 MiB answer ends in ProtocolError after at most 1 MiB is read (logout: False)."""
    hostile.on(PATHS[endpoint], oversized(TEN_MIB, declare_length=declare_length))
    error = await provoke(endpoint, hostile, make_client)
    if endpoint != "revoke":
        assert isinstance(error, MALFORMED)
        assert "exceeds" in str(error)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_compression_bomb_is_refused(
    endpoint: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A small gzip body that inflates to 4 MiB is cut off at 1 MiB of inflated bytes."""
    bomb = gzip.compress(b"{" + b" " * (4 * 1024 * 1024), compresslevel=1)

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(
            body=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    hostile.on(PATHS[endpoint], handler)
    error = await provoke(endpoint, hostile, make_client)
    if endpoint != "revoke":
        assert isinstance(error, MALFORMED)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_slow_drip_ends_at_the_http_timeout(
    endpoint: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A body dripping one byte at a time is abandoned at http_timeout; retries stay bounded."""
    hostile.on("/device", answer(hostile.code(expires_in=30)))
    hostile.on(PATHS[endpoint], drip(every=0.02))
    error = await provoke(endpoint, hostile, lambda **kw: make_client(http_timeout=0.15, **kw))
    if endpoint != "revoke":
        assert isinstance(error, DeviceFlowError)
        assert "timed out" in str(error)
    # Each attempt ends at 0.15 s; set-up gives up after 60 s of backoff (7 attempts).
    assert 1 <= hostile.count(PATHS[endpoint]) <= 7


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
    ],
    ids=["lists", "objects"],
)
async def test_deeply_nested_json_is_refused(
    endpoint: str,
    body: bytes,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """JSON nested 200,000 deep ends in ProtocolError, not RecursionError."""
    hostile.on(PATHS[endpoint], answer(body))
    error = await provoke(endpoint, hostile, make_client)
    if endpoint != "revoke":
        assert isinstance(error, MALFORMED)


def _duplicated(endpoint: str, server: HostileServer) -> bytes:
    """A valid answer for ``endpoint`` where one security-relevant name appears twice."""
    if endpoint == "discovery":
        return (
            b'{"issuer": "https://evil.example", "issuer": "%s", '
            b'"device_authorization_endpoint": "%s/device", "token_endpoint": "%s/token"}'
            % ((server.url.encode(),) * 3)
        )
    if endpoint == "device":
        return (
            b'{"device_code": "d", "user_code": "U", "verification_uri": "javascript:alert(1)", '
            b'"verification_uri": "%s/verify", "expires_in": 600}' % server.url.encode()
        )
    return (
        b'{"access_token": "first", "token_type": "Bearer", "access_token": "second", '
        b'"refresh_token": "r1", "refresh_token": "r2"}'
    )


@pytest.mark.parametrize("endpoint", ["discovery", "device", "token", "refresh"])
async def test_duplicate_names_are_refused(
    endpoint: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A JSON answer naming a field twice is ambiguous (parsers differ) and is refused."""
    hostile.on(PATHS[endpoint], answer(_duplicated(endpoint, hostile)))
    error = await provoke(endpoint, hostile, make_client)
    assert isinstance(error, MALFORMED)
    assert "more than once" in str(error)


@pytest.mark.parametrize("endpoint", ["discovery", "device", "token", "refresh"])
async def test_repeated_form_parameter_is_refused(
    endpoint: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A form-encoded answer repeating a parameter is refused like duplicate JSON names."""
    body = b"access_token=a&token_type=bearer&access_token=b&issuer=x&issuer=y&device_code=d"
    hostile.on(PATHS[endpoint], answer(body, content_type="application/x-www-form-urlencoded"))
    error = await provoke(endpoint, hostile, make_client)
    assert isinstance(error, MALFORMED)
    assert "more than once" in str(error)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe{\x00}", "application/json"),
        (b"<html><body>Sign in to the hotel Wi-Fi</body></html>", "text/html"),
        (b"[1, 2, 3]", "application/json"),
        (b"null", "application/json"),
        (b'"a string"', "application/json"),
        (b"{", "application/json"),
        (b"\x00" * 64, "application/octet-stream"),
        (b"", "application/json"),
    ],
    ids=["utf16", "html", "list", "null", "string", "truncated", "binary", "empty"],
)
async def test_bodies_that_are_not_an_answer(
    endpoint: str,
    body: bytes,
    content_type: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """Bodies that are not a JSON object or form data end in a typed error."""
    hostile.on(PATHS[endpoint], answer(body, content_type=content_type))
    error = await provoke(endpoint, hostile, make_client)
    if endpoint != "revoke":
        assert isinstance(error, DeviceFlowError)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_endless_header_is_refused(
    endpoint: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A 64 KiB header line ends in a typed error (aiohttp refuses it; we map the refusal)."""
    hostile.on(
        PATHS[endpoint],
        answer({"error": "authorization_pending"}, headers={"X-Filler": "a" * 65536}),
    )
    error = await provoke(endpoint, hostile, make_client)
    if endpoint != "revoke":
        # Retried as a transport failure; polling then ends when the code expires.
        assert isinstance(error, DeviceFlowError)
        assert "ClientResponseError" in str(error)
