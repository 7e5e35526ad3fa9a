"""deviceflow.httpx.DeviceFlowAuth with a real httpx, against the built-in server and, for the
rules on where the token goes, httpx's own MockTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import anyio
import anyio.to_thread
import httpx
import pytest

from deviceflow import DeviceFlowClient, Provider, Token
from deviceflow.httpx import DeviceFlowAuth
from deviceflow.sync import DeviceFlowClient as SyncClient
from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import make_client, seed

pytestmark = pytest.mark.authorization_server(interval=1, auto_approve_after=0)


@pytest.fixture
async def client(authorization_server: AuthorizationServer) -> AsyncIterator[DeviceFlowClient]:
    """An asyncio client on the server's clock with a signed-in "default" account."""
    async with make_client(authorization_server) as flows:
        await seed(flows, authorization_server)
        yield flows


@pytest.fixture
def sync_client(authorization_server: AuthorizationServer) -> Iterator[SyncClient]:
    """A blocking client on the server's clock (its loop runs in a thread of its own)."""
    with SyncClient(
        Provider(issuer=authorization_server.issuer),
        client_id="svc",
        clock=authorization_server.clock,
    ) as flows:
        yield flows


async def test_async_client_gets_the_resource(
    client: DeviceFlowClient, authorization_server: AuthorizationServer
) -> None:
    """httpx.AsyncClient with the asyncio client: the resource answers for the token's grant."""
    async with httpx.AsyncClient(auth=DeviceFlowAuth(client)) as http:
        response = await http.get(authorization_server.resource_url)
    assert 200 == response.status_code
    assert "svc" == response.json()["client_id"]


async def test_async_rejected_token_is_refreshed_once_for_all_requests(
    client: DeviceFlowClient, authorization_server: AuthorizationServer
) -> None:
    """After the API stops taking the token, ten requests at once share one refresh and each
    is retried once, successfully."""
    auth = DeviceFlowAuth(client)
    async with httpx.AsyncClient(auth=auth) as http:
        await http.get(authorization_server.resource_url)
        authorization_server.expire_access_tokens()
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await http.get(authorization_server.resource_url)).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(one)
    assert [200] * 10 == statuses
    assert 1 == authorization_server.stats.refreshes


async def test_sync_client_with_httpx_client(
    sync_client: SyncClient, authorization_server: AuthorizationServer
) -> None:
    """httpx.Client with the blocking client: the token is added, and a rejected one is
    refreshed and the request retried."""
    sync_client.save_token("default", _issued(authorization_server))

    def calls() -> list[int]:
        with httpx.Client(auth=DeviceFlowAuth(sync_client)) as http:
            first = http.get(authorization_server.resource_url).status_code
            authorization_server.expire_access_tokens()
            second = http.get(authorization_server.resource_url).status_code
        return [first, second]

    assert [200, 200] == await anyio.to_thread.run_sync(calls)
    assert 1 == authorization_server.stats.refreshes


async def test_sync_client_with_httpx_async_client(
    sync_client: SyncClient, authorization_server: AuthorizationServer
) -> None:
    """The blocking client also serves httpx.AsyncClient (its calls run in a worker thread)."""
    sync_client.save_token("default", _issued(authorization_server))
    async with httpx.AsyncClient(auth=DeviceFlowAuth(sync_client)) as http:
        assert 200 == (await http.get(authorization_server.resource_url)).status_code
        authorization_server.expire_access_tokens()
        assert 200 == (await http.get(authorization_server.resource_url)).status_code
    assert 1 == authorization_server.stats.refreshes


def test_asyncio_client_in_httpx_client_is_refused() -> None:
    """httpx.Client cannot wait on an asyncio client: a TypeError names the one to use."""
    flows = DeviceFlowClient(Provider(issuer="https://idp.example.com"), client_id="svc")
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    with (
        httpx.Client(auth=DeviceFlowAuth(flows), transport=transport) as http,
        pytest.raises(TypeError, match=r"deviceflow\.sync\.DeviceFlowClient"),
    ):
        http.get("https://api.example.com/")


def test_hosts_must_be_a_collection() -> None:
    """hosts="api.example.com" (one string, not a set of names) is refused."""
    flows = DeviceFlowClient(Provider(issuer="https://idp.example.com"), client_id="svc")
    with pytest.raises(TypeError, match="collection of host names"):
        DeviceFlowAuth(flows, hosts="api.example.com")


def test_repr_shows_no_secret() -> None:
    """The repr names the account and hosts only."""
    flows = DeviceFlowClient(Provider(issuer="https://idp.example.com"), client_id="svc")
    auth = DeviceFlowAuth(flows, "tenant-42", hosts={"API.example.com"})
    assert "DeviceFlowAuth(account='tenant-42', hosts=frozenset({'api.example.com'}))" == repr(auth)


# --- where the token goes: httpx's MockTransport plays the servers -----------------------------


def _issued(server: AuthorizationServer) -> Token:
    issued = server.issue_tokens("svc", scope="openid")
    return Token(
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        expires_at=server.clock.wall() + timedelta(seconds=int(issued["expires_in"])),
    )


class Servers:
    """Every origin at once: records (url, Authorization) and answers by path.

    ``/to?url=U`` redirects to U; ``/reject`` answers 401 invalid_token; anything else 200.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.headers.get("Authorization")))
        if request.url.path == "/to":
            return httpx.Response(302, headers={"Location": request.url.params["url"]})
        if request.url.path == "/reject":
            challenge = 'Bearer error="invalid_token", error_description="revoked"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if request.url.path == "/forbidden":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
        return httpx.Response(200)


@pytest.fixture
async def offline(virtual_clock: VirtualClock) -> AsyncIterator[DeviceFlowClient]:
    """A client holding a fresh token "the-token" for "default" (its server is never called)."""
    async with DeviceFlowClient(
        Provider(issuer="https://idp.example.com"), client_id="svc", clock=virtual_clock
    ) as flows:
        await flows.save_token(
            "default",
            Token(access_token="the-token", expires_at=virtual_clock.wall() + timedelta(hours=1)),
        )
        yield flows


BEARER = "Bearer the-token"


def _http(auth: DeviceFlowAuth, servers: Servers) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        auth=auth, transport=httpx.MockTransport(servers), follow_redirects=True
    )


async def test_redirect_to_another_origin_gets_no_token(offline: DeviceFlowClient) -> None:
    """A redirect to another origin arrives without the token."""
    servers = Servers()
    async with _http(DeviceFlowAuth(offline), servers) as http:
        await http.get("https://api.example.com/to?url=https://cdn.example.net/file")
    assert [BEARER, None] == [header for _, header in servers.seen]
    assert "https://cdn.example.net/file" == servers.seen[-1][0]


async def test_first_origin_binds_the_token(offline: DeviceFlowClient) -> None:
    """Without hosts, requests to origins other than the first one's go without the token,
    redirects followed by hand included."""
    servers = Servers()
    auth = DeviceFlowAuth(offline)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(servers)) as http:
        await http.get("https://api.example.com/a")
        await http.get("https://api.example.com:8443/b")
        moved = await http.get("https://api.example.com/to?url=https://other.example.com/c")
        assert moved.next_request is not None
        await http.send(moved.next_request)
    assert [BEARER, None, BEARER, None] == [header for _, header in servers.seen]


async def test_hosts_lists_where_the_token_goes(offline: DeviceFlowClient) -> None:
    """With hosts, https requests to those names carry it; others and plain http do not."""
    servers = Servers()
    auth = DeviceFlowAuth(offline, hosts={"api.example.com", "files.example.com"})
    async with _http(auth, servers) as http:
        for url in (
            "https://files.example.com/1",
            "https://api.example.com:444/2",
            "https://other.example.com/3",
            "http://api.example.com/4",
        ):
            await http.get(url)
    assert [BEARER, BEARER, None, None] == [header for _, header in servers.seen]


async def test_retry_happens_once(
    client: DeviceFlowClient, authorization_server: AuthorizationServer
) -> None:
    """A second invalid_token answer is returned as it is: one refresh, one retry, with the
    new token."""
    servers = Servers()
    async with _http(DeviceFlowAuth(client), servers) as http:
        response = await http.get("https://api.example.com/reject")
    assert 401 == response.status_code
    assert 1 == authorization_server.stats.refreshes
    first, second = (header for _, header in servers.seen)
    assert first != second
    assert (await client.get_token()).authorization == second


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/forbidden",  # a 401 a new token would not cure
        "https://api.example.com/to?url=https://elsewhere.example.com/reject",  # not ours
    ],
)
async def test_other_rejections_pass_through(offline: DeviceFlowClient, url: str) -> None:
    """A 401 without invalid_token, or from an origin that got no token, is not retried."""
    servers = Servers()
    async with _http(DeviceFlowAuth(offline), servers) as http:
        response = await http.get(url)
    assert 401 == response.status_code
    assert [BEARER] == [header for _, header in servers.seen if header is not None]


def test_blocking_flow_follows_the_same_rules(virtual_clock: VirtualClock) -> None:
    """httpx.Client with the blocking client: other origins get nothing, a rejected token one
    retry."""
    servers = Servers()
    with SyncClient(
        Provider(issuer="https://idp.example.com"), client_id="svc", clock=virtual_clock
    ) as flows:
        flows.save_token(
            "default",
            Token(access_token="the-token", expires_at=virtual_clock.wall() + timedelta(hours=1)),
        )
        auth = DeviceFlowAuth(flows)
        transport = httpx.MockTransport(servers)
        with httpx.Client(auth=auth, transport=transport, follow_redirects=True) as http:
            assert 200 == http.get("https://api.example.com/a").status_code
            assert 200 == http.get("https://other.example.com/b").status_code
    assert [BEARER, None] == [header for _, header in servers.seen]
