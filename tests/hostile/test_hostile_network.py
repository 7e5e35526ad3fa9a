"""Hostile behaviour on the wire: redirects, silence, TLS failures, endless slow_down."""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aioresponses import aioresponses
from hostile_flows import (
    BOUND,
    ENDPOINTS,
    PATHS,
    expired_token,
    explicit_provider,
    final_error,
    flow_events,
    provoke,
    typed_error,
)
from hostile_server import DISCOVERY, HostileServer, answer, hang, redirect, self_signed_context

from deviceflow import (
    AiohttpTransport,
    ClientAuth,
    DeviceFlowClient,
    DeviceFlowError,
    DiscoveryError,
    ExpiredTokenError,
    FlowState,
    ProtocolError,
    Provider,
    Request,
    RequestKind,
    TransportError,
)
from deviceflow._provider import fetch_metadata
from deviceflow.testing import VirtualClock
from helpers import time_factor


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_to_another_host_is_not_followed(
    endpoint: str,
    status: int,
    hostile: HostileServer,
    elsewhere: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """A redirect is an error, never followed: the other host gets no code, secret or token."""
    path = PATHS[endpoint]
    hostile.on(path, redirect(elsewhere.url + path, status=status))
    error = await provoke(endpoint, hostile, make_client)
    if endpoint != "revoke":
        assert isinstance(error, (ProtocolError, DiscoveryError)), repr(error)
    assert [] == elsewhere.requests


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_server_that_never_answers(
    endpoint: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A server that accepts the request and never answers ends in TransportError, no hang."""
    hostile.on("/device", answer(hostile.code(expires_in=30)))
    hostile.on(PATHS[endpoint], hang())
    error = await provoke(endpoint, hostile, lambda **kw: make_client(http_timeout=0.15, **kw))
    if endpoint != "revoke":
        assert isinstance(error, (TransportError, ExpiredTokenError, DiscoveryError)), repr(error)
        assert "timed out" in str(error)
    # Each attempt ends at http_timeout; set-up gives up after 60 s of backoff (7 attempts),
    # polling at the code's expiry, a refresh at http_timeout.
    assert 1 <= hostile.count(PATHS[endpoint]) <= 7


async def test_never_answering_refresh_ends_within_http_timeout(
    hostile: HostileServer,
) -> None:
    """On the real clock, a refresh with all its retries ends by http_timeout (no hang)."""
    hostile.on("/token", hang())
    client = DeviceFlowClient(
        explicit_provider(hostile), client_id="c", http_timeout=0.5, lock_ttl=1.0
    )
    async with client:
        await client.save_token("a", expired_token())
        with anyio.fail_after(5.0 * time_factor()):  # the refresh itself gives up at 0.5 s
            error, _ = await typed_error(client.get_token("a"))
    assert isinstance(error, TransportError)
    assert "timed out" in str(error)


async def test_never_answering_discovery_gives_up_after_its_attempts(
    hostile: HostileServer,
) -> None:
    """Discovery (as Provider.discover runs it) against a silent server backs off until its
    set-up time is spent, then gives up, typed (the machine's DISCOVER state decides)."""
    hostile.on(DISCOVERY, hang())
    clock = VirtualClock()
    transport = AiohttpTransport(auth=ClientAuth(client_id=""), timeout=0.2)
    try:
        provider = Provider(issuer=hostile.url)
        call = fetch_metadata(transport, provider, clock=clock, setup_timeout=10.0)
        error, _ = await typed_error(call)
    finally:
        await transport.aclose()
    assert isinstance(error, TransportError)
    assert (False, True) == (error.retryable, "timed out" in str(error))
    assert 5 == hostile.count(DISCOVERY)  # backoff 0.5, 1, 2, 4 s; the next would pass 10 s
    assert 1000.0 + 0.5 + 1.0 + 2.0 + 4.0 == clock.monotonic()


async def test_get_token_timeout_bounds_a_silent_server(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """get_token(timeout=) is a hard bound whatever the server does (TimeoutError, not a hang)."""
    hostile.on("/device", hang())
    client = make_client(provider=explicit_provider(hostile), http_timeout=30.0, lock_ttl=60.0)
    async with client:
        with anyio.fail_after(BOUND), pytest.raises(TimeoutError):
            await client.get_token(timeout=0.3)
    assert 1 == hostile.count("/device")


async def test_endless_slow_down_ends_when_the_code_expires(
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """Every poll answered slow_down: the interval grows by 5 s each time, then EXPIRED."""
    polls: list[float] = []
    slow = answer({"error": "slow_down"}, status=400)

    async def token(request: Any) -> Any:
        polls.append(virtual_clock.monotonic())
        return await slow(request)

    hostile.on("/token", token)
    start = virtual_clock.monotonic()
    async with make_client(provider=explicit_provider(hostile)) as client:
        events = await flow_events(client)
    error = final_error(events)
    assert isinstance(error, ExpiredTokenError)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(polls)]
    assert [10.1 + 5 * i for i in range(len(gaps))] == gaps  # 5 s more after every slow_down
    assert virtual_clock.monotonic() - start <= 600  # never past the code's expires_in
    assert [5.0 * i for i in range(2, len(gaps) + 3)] == sorted(
        {e.interval for e in events if e.interval is not None} - {5.0}
    )


@pytest.mark.parametrize("endpoint", ["discovery", "device", "token"])
async def test_endless_retry_after_is_bounded(
    endpoint: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """503 with a Retry-After of a billion seconds, or a date in 9999, ends at once."""
    for retry_after in ("1000000000", "Fri, 31 Dec 9999 23:59:59 GMT"):
        hostile.on(
            PATHS[endpoint], answer(b"busy", status=503, headers={"Retry-After": retry_after})
        )
        start = virtual_clock.monotonic()
        error = await provoke(endpoint, hostile, make_client)
        assert isinstance(error, (TransportError, ExpiredTokenError)), repr(error)
        assert virtual_clock.monotonic() - start <= 600


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[HostileServer]:
    async with HostileServer(ssl_context=self_signed_context(tmp_path)) as server:
        yield server


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_self_signed_certificate_is_refused_at_once(
    endpoint: str,
    tls_server: HostileServer,
    virtual_clock: VirtualClock,
) -> None:
    """An https endpoint whose certificate does not verify: TransportError, not retried."""

    def make(**kwargs: Any) -> DeviceFlowClient:
        provider = kwargs.pop("provider", None) or Provider(issuer=tls_server.url)
        return DeviceFlowClient(provider, client_id="c", clock=virtual_clock, **kwargs)

    start = virtual_clock.monotonic()
    error = await provoke(endpoint, tls_server, make)
    if endpoint != "revoke":
        assert isinstance(error, TransportError), repr(error)
        assert error.retryable is False
        assert virtual_clock.monotonic() == start  # no backoff: a retry would not help
    assert [] == tls_server.requests  # the handshake failed: no request was ever sent


async def test_self_signed_certificate_refused_by_discover(tls_server: HostileServer) -> None:
    """Provider.discover() fails fast, typed, on a certificate that does not verify."""
    error, _ = await typed_error(Provider.discover(tls_server.url))
    assert isinstance(error, TransportError)
    assert error.retryable is False


async def test_trusted_certificate_works(tls_server: HostileServer, tmp_path: Path) -> None:
    """Control: the same server with its certificate trusted answers, so the refusal was TLS."""
    context = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        provider = await Provider.discover(tls_server.url, session=session)
    assert tls_server.url + "/token" == provider.token_endpoint


async def test_https_to_a_plain_http_port_is_refused(hostile: HostileServer) -> None:
    """Speaking TLS to a server that does not is a typed error, without retry storms."""
    url = hostile.url.replace("http://", "https://")
    error, _ = await typed_error(Provider.discover(url, timeout=1.0))
    assert isinstance(error, (TransportError, DiscoveryError))
    assert [] == hostile.requests  # no request got through


# --- failures a real server cannot easily produce (aioresponses) ---------------------------------


ODD_FAILURES: list[tuple[BaseException, bool]] = [
    (aiohttp.ClientPayloadError("connection reset mid-body"), True),
    (aiohttp.ServerDisconnectedError(), True),
    (aiohttp.ClientOSError(104, "Connection reset by peer"), True),
    (ConnectionResetError(104, "reset"), True),
    (asyncio.TimeoutError(), True),
    (aiohttp.ServerTimeoutError("read timeout"), True),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), False),
    (ssl.SSLError(1, "decryption failed or bad record mac"), False),
    (aiohttp.InvalidURL("https://[bad"), False),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), True),
    (ValueError("Invalid header value"), True),
]


@pytest.mark.parametrize(
    ("failure", "retryable"), ODD_FAILURES, ids=[type(f).__name__ for f, _ in ODD_FAILURES]
)
async def test_odd_transport_failures_are_typed(failure: BaseException, retryable: bool) -> None:
    """Whatever aiohttp raises comes out as TransportError, retryable only when it may help."""
    transport = AiohttpTransport(auth=ClientAuth(client_id="c"))
    url = "https://idp.example/token"
    try:
        with aioresponses() as mocked:
            mocked.post(url, exception=failure)
            request = Request(kind=RequestKind.TOKEN, method="POST", url=url, params={"a": "b"})
            with anyio.fail_after(BOUND):
                with pytest.raises(DeviceFlowError) as caught:
                    await transport.send(request)
    finally:
        await transport.aclose()
    assert isinstance(caught.value, TransportError)
    assert retryable == caught.value.retryable


async def test_odd_failure_during_polling_ends_typed(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A poll failing with mid-body resets until expiry ends EXPIRED, not with an exception."""
    hostile.on("/device", answer(hostile.code(expires_in=60)))
    provider = Provider(
        device_authorization_endpoint=hostile.url + "/device",
        token_endpoint="https://idp.example/token",
    )
    # aioresponses answers the token endpoint; the device endpoint is the real hostile server.
    with aioresponses(passthrough=[hostile.url]) as mocked:
        mocked.post(
            "https://idp.example/token", exception=aiohttp.ClientPayloadError("reset"), repeat=True
        )
        async with make_client(provider=provider) as client:
            events = await flow_events(client)
    assert FlowState.EXPIRED == events[-1].state
    assert isinstance(final_error(events), ExpiredTokenError)
    assert "ClientPayloadError" in str(final_error(events))


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_discovery_of_a_stopped_server_fails_fast_in_plain_words() -> None:
    """Connection refused: discovery gives up after three quick tries (not a minute of backoff)
    and says so in plain words, without aiohttp's class names."""
    clock = VirtualClock()
    transport = AiohttpTransport(auth=ClientAuth(client_id=""))
    try:
        provider = Provider(issuer=f"http://127.0.0.1:{_closed_port()}")
        error, _ = await typed_error(fetch_metadata(transport, provider, clock=clock))
    finally:
        await transport.aclose()
    assert isinstance(error, TransportError)
    assert (False, True) == (error.retryable, error.unreachable)
    assert "connection refused" in str(error)
    assert "Client" not in str(error)
    assert 1000.0 + 0.5 + 1.0 == clock.monotonic()  # two short backoffs, virtual


@pytest.mark.parametrize(
    ("raised", "words"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "host not found"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "host unreachable"),
    ],
)
async def test_unreachable_servers_are_named_in_plain_words(raised: OSError, words: str) -> None:
    """A server nothing answers for is reported in plain words, as unreachable."""
    transport = AiohttpTransport(auth=ClientAuth(client_id=""))
    request = Request(kind=RequestKind.DISCOVERY, method="GET", url="https://idp.test/x")
    try:
        with aioresponses() as mocked:
            mocked.get(request.url, exception=raised)
            error, _ = await typed_error(transport.send(request))
    finally:
        await transport.aclose()
    assert isinstance(error, TransportError)
    assert error.unreachable
    assert f"https://idp.test/x failed: {words}" in str(error)
