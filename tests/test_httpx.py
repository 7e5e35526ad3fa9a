"""deviceflow.httpx.DeviceFlowAuth with a real httpx, against the built-in server and, for the
rules on where the token goes, httpx's own MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from deviceflow import DeviceCode, DeviceFlowClient, Provider, Token
from deviceflow._dpop import DPoPKey
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


def test_follow_redirects_must_be_a_bool() -> None:
    """follow_redirects="yes" is refused."""
    flows = DeviceFlowClient(Provider(issuer="https://idp.example.com"), client_id="svc")
    with pytest.raises(TypeError, match="follow_redirects must be True or False"):
        DeviceFlowAuth(flows, follow_redirects="yes")  # type: ignore[arg-type]


def test_repr_shows_no_secret() -> None:
    """The repr names the account, hosts and follow_redirects only."""
    flows = DeviceFlowClient(Provider(issuer="https://idp.example.com"), client_id="svc")
    auth = DeviceFlowAuth(flows, "tenant-42", hosts={"API.example.com"})
    expected = (
        "DeviceFlowAuth(account='tenant-42', hosts=frozenset({'api.example.com'}), "
        "follow_redirects=False)"
    )
    assert expected == repr(auth)


# --- where the token goes: httpx's MockTransport plays the servers -----------------------------


def _issued(server: AuthorizationServer) -> Token:
    issued = server.issue_tokens("svc", scope="openid")
    return Token(
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        expires_at=server.clock.wall() + timedelta(seconds=int(issued["expires_in"])),
    )


class Servers:
    """Every origin at once: records (url, Authorization), and the DPoP proofs, and answers by
    path.

    ``/to?url=U`` redirects to U; ``/reject`` answers 401 invalid_token; ``/nonce`` 401
    use_dpop_nonce with the nonce "n-2"; ``/forbidden`` 401 without an error; anything else
    200, with the nonce "n-1".
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.proofs: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.headers.get("Authorization")))
        self.proofs.append(request.headers.get("DPoP"))
        if request.url.path == "/to":
            return httpx.Response(302, headers={"Location": request.url.params["url"]})
        if request.url.path == "/reject":
            challenge = 'Bearer error="invalid_token", error_description="revoked"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if request.url.path == "/nonce":
            challenge = 'DPoP error="use_dpop_nonce", algs="ES256"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge, "DPoP-Nonce": "n-2"})
        if request.url.path == "/forbidden":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
        return httpx.Response(200, headers={"DPoP-Nonce": "n-1"})


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


# --- DPoP (RFC 9449) -------------------------------------------------------------------------

DPOP = pytest.mark.authorization_server(dpop=True, dpop_nonce=True)


def no_op(code: DeviceCode, account: str) -> None:
    """An on_code for a server that approves at once."""


def proof_claims(proof: str) -> dict[str, Any]:
    """The claims of a DPoP proof, read without checking it (the server does)."""
    from joserfc import jws

    return dict(json.loads(jws.extract_compact(proof.encode()).payload))


def check_dpop_rounds(server: AuthorizationServer, statuses: list[int], nonce: str) -> None:
    """Three requests, the second after the server changed its nonce to ``nonce``, the third
    after it stopped taking the token: each answered 200 in the end, after one retry with the
    nonce, then one refresh; every send had a proof of its own."""
    assert [200, 200, 200] == statuses
    resource = [r for r in server.requests if r.endpoint == "resource"]
    assert [200, 401, 200, 401, 200] == [r.status for r in resource]
    assert 1 == server.stats.refreshes
    assert all(r.headers["Authorization"].startswith("DPoP ") for r in resource)
    proofs = [r.headers["DPoP"] for r in resource]
    assert len(proofs) == len(set(proofs))
    assert nonce == proof_claims(proofs[2])["nonce"]


async def dpop_rounds(server: AuthorizationServer, http: httpx.AsyncClient) -> None:
    """The three requests of :func:`check_dpop_rounds` through ``http``, then the checks."""
    statuses = [(await http.get(server.resource_url)).status_code]
    nonce = server.rotate_dpop_nonce()
    statuses.append((await http.get(server.resource_url)).status_code)
    server.expire_access_tokens()
    statuses.append((await http.get(server.resource_url)).status_code)
    check_dpop_rounds(server, statuses, nonce)


def dpop_sync_client(server: AuthorizationServer) -> SyncClient:
    """A blocking DPoP client of ``server``, signed in by its first request."""
    return SyncClient(
        Provider(issuer=server.issuer),
        client_id="svc",
        clock=server.clock,
        dpop=True,
        on_code=no_op,
    )


@DPOP
async def test_dpop_with_httpx_async_client(authorization_server: AuthorizationServer) -> None:
    """httpx.AsyncClient with a DPoP client: a new proof for every send, one retry with the
    resource's nonce on use_dpop_nonce, one refresh on DPoP error="invalid_token"."""
    server = authorization_server
    async with (
        make_client(server, dpop=True, on_code=no_op) as flows,
        httpx.AsyncClient(auth=DeviceFlowAuth(flows)) as http,
    ):
        await dpop_rounds(server, http)


@DPOP
async def test_dpop_with_httpx_client(authorization_server: AuthorizationServer) -> None:
    """httpx.Client with a blocking DPoP client: the same proofs, nonce retry and refresh."""
    server = authorization_server

    def calls() -> tuple[list[int], str]:
        with dpop_sync_client(server) as flows, httpx.Client(auth=DeviceFlowAuth(flows)) as http:
            statuses = [http.get(server.resource_url).status_code]
            nonce = server.rotate_dpop_nonce()
            statuses.append(http.get(server.resource_url).status_code)
            server.expire_access_tokens()
            statuses.append(http.get(server.resource_url).status_code)
        return statuses, nonce

    statuses, nonce = await anyio.to_thread.run_sync(calls)
    check_dpop_rounds(server, statuses, nonce)


@DPOP
async def test_dpop_with_sync_client_in_httpx_async_client(
    authorization_server: AuthorizationServer,
) -> None:
    """httpx.AsyncClient with a blocking DPoP client (its calls in a worker thread): the same."""
    server = authorization_server
    with dpop_sync_client(server) as flows:
        async with httpx.AsyncClient(auth=DeviceFlowAuth(flows)) as http:
            await dpop_rounds(server, http)


@pytest.fixture
async def offline_dpop(virtual_clock: VirtualClock) -> AsyncIterator[DeviceFlowClient]:
    """A DPoP client holding a fresh DPoP token "the-token" for "default" (its server is never
    called)."""
    async with DeviceFlowClient(
        Provider(issuer="https://idp.example.com"),
        client_id="svc",
        clock=virtual_clock,
        dpop=True,
    ) as flows:
        token = Token(
            access_token="the-token",
            token_type="DPoP",
            expires_at=virtual_clock.wall() + timedelta(hours=1),
            dpop_key=DPoPKey.generate(),
        )
        await flows.save_token("default", token)
        yield flows


async def test_nonce_of_an_answer_goes_into_the_next_proof(offline_dpop: DeviceFlowClient) -> None:
    """A DPoP-Nonce on a successful answer is kept: the next request's proof carries it."""
    servers = Servers()
    async with _http(DeviceFlowAuth(offline_dpop), servers) as http:
        await http.get("https://api.example.com/a")
        await http.get("https://api.example.com/b")
    first, second = (proof_claims(p or "") for p in servers.proofs)
    assert (None, "n-1") == (first.get("nonce"), second.get("nonce"))
    assert "DPoP the-token" == servers.seen[1][1]


async def test_nonce_retry_happens_once(offline_dpop: DeviceFlowClient) -> None:
    """use_dpop_nonce: sent once more with a new proof carrying the server's nonce; a second
    use_dpop_nonce is returned as it is."""
    servers = Servers()
    async with _http(DeviceFlowAuth(offline_dpop), servers) as http:
        response = await http.get("https://api.example.com/nonce")
    assert 401 == response.status_code
    first, second = (proof_claims(p or "") for p in servers.proofs)
    assert (None, "n-2") == (first.get("nonce"), second.get("nonce"))
    assert first["jti"] != second["jti"]


async def test_bearer_token_is_not_retried_for_a_nonce(offline: DeviceFlowClient) -> None:
    """A bearer token has no proof to put a nonce in: use_dpop_nonce is returned as it is."""
    servers = Servers()
    async with _http(DeviceFlowAuth(offline), servers) as http:
        assert 401 == (await http.get("https://api.example.com/nonce")).status_code
    assert [BEARER] == [header for _, header in servers.seen]


async def test_stray_proof_goes_no_further(offline_dpop: DeviceFlowClient) -> None:
    """A redirect followed by hand to another origin loses the first hop's proof along with
    its token."""
    servers = Servers()
    auth = DeviceFlowAuth(offline_dpop)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(servers)) as http:
        moved = await http.get("https://api.example.com/to?url=https://other.example.com/c")
        assert moved.next_request is not None
        assert "DPoP" in moved.next_request.headers  # httpx copies it
        await http.send(moved.next_request)
    assert ["DPoP the-token", None] == [header for _, header in servers.seen]
    assert [True, False] == [proof is not None for proof in servers.proofs]


async def test_followed_upgrade_to_https_leaves_the_token_behind(
    offline: DeviceFlowClient,
) -> None:
    """httpx keeps Authorization on a redirect from http to https on the same host; when the
    auth follows it, the hop is another origin than the one bound, and goes without it."""
    servers = Servers()
    auth = DeviceFlowAuth(offline, follow_redirects=True)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(servers)) as http:
        await http.get("http://127.0.0.1/to?url=https://127.0.0.1/landing")
    assert [BEARER, None] == [header for _, header in servers.seen]


async def test_a_first_request_in_cleartext_cannot_let_a_redirect_choose_the_origin(
    offline: DeviceFlowClient,
) -> None:
    """A first request in cleartext carries no token, and binds the https origin of its host:
    a redirect answering it (forged on the way) to another host gets nothing, and neither does
    its upgrade to https (the hops after one without the token go without it); the app's own
    https requests to the host get it."""
    servers = Servers()
    auth = DeviceFlowAuth(offline, follow_redirects=True)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(servers)) as http:
        await http.get("http://api.example.com/to?url=https://attacker.example/steal")
        await http.get("https://api.example.com/a")
    assert [None, None, BEARER] == [header for _, header in servers.seen]
    assert "https://attacker.example/steal" == servers.seen[1][0]

    upgraded = Servers()
    auth = DeviceFlowAuth(offline, follow_redirects=True)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(upgraded)) as http:
        await http.get("http://api.example.com/to?url=https://api.example.com/landing")
        await http.get("https://api.example.com/b")
    assert [None, None, BEARER] == [header for _, header in upgraded.seen]


async def test_a_redirect_chain_that_left_the_origin_does_not_bring_the_token_back(
    offline: DeviceFlowClient,
) -> None:
    """Once a hop went without the token, the hops after it do too: another origin's redirect
    to the API (say a 307 that replays a POST) is that origin's request, not the app's."""
    servers = Servers()
    auth = DeviceFlowAuth(offline, follow_redirects=True)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(servers)) as http:
        await http.get("https://api.example.com/a")
        await http.post(
            "https://third.example/to?url=https://api.example.com/admin/delete", content=b"x"
        )
    assert [BEARER, None, None] == [header for _, header in servers.seen]
    assert "https://api.example.com/admin/delete" == servers.seen[-1][0]
