"""DPoP proofs on redirects (RFC 9449 4.2, 7.1): a hop to another origin gets neither the token
nor a proof; a hop the token may go to gets a proof of its own, for its method and URL.

Real loopback servers all the way: the built-in server issues the DPoP token, and two small
resource servers (two origins: two ports, or two host names) redirect and check every proof
they get as a resource server would (signature, ``htm``, ``htu``, ``iat``, ``jti``, ``ath``).
Both integrations are checked: aiohttp's ``BearerAuth`` (aiohttp runs the middleware for every
hop) and httpx's ``DeviceFlowAuth(follow_redirects=True)`` (the auth follows the redirects).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio.to_thread
import attrs
import httpx
import pytest
from aiohttp import web

from deviceflow import DeviceCode, DeviceFlowClient, Provider
from deviceflow.aiohttp import BearerAuth
from deviceflow.httpx import DeviceFlowAuth
from deviceflow.sync import DeviceFlowClient as SyncClient
from deviceflow.testing import AuthorizationServer, VirtualClock
from deviceflow.testing._dpop import DEFAULT_ALGORITHMS, ProofChecker, ProofRefused
from helpers import make_client

pytestmark = pytest.mark.authorization_server(interval=1, auto_approve_after=0, dpop=True)

CLIENTS = pytest.mark.parametrize("kind", ["aiohttp", "httpx"])


def no_op(code: DeviceCode, account: str) -> None:
    """An on_code for a server that approves at once."""


@attrs.frozen
class Seen:
    """One request a resource server got: its method, path, ``Authorization`` and ``DPoP``
    headers and body, and the server's verdict on them: "ok" (a proof that holds, with the
    thumbprint ``jkt`` of its key), "no token", or the error of the proof's refusal."""

    method: str
    path: str
    authorization: str | None
    proof: str | None
    verdict: str
    jkt: str | None = None
    body: bytes = b""


class Api:
    """A loopback resource server that records every request and checks its DPoP proof.

    ``/to?url=U&status=S`` redirects (S, 302 by default) to U; ``/loop`` redirects to itself;
    every path answers 401 ``DPoP error=...`` to a token whose proof does not hold (with
    ``require_nonce``, ``use_dpop_nonce`` and a ``DPoP-Nonce`` to one without the nonce), else
    200 (a request without a token too: a public file).
    """

    def __init__(self, clock: VirtualClock, *, require_nonce: bool = False) -> None:
        self.checker = ProofChecker(
            clock=clock, algorithms=DEFAULT_ALGORITHMS, require_nonce=require_nonce
        )
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, host: str = "127.0.0.1") -> str:
        """This server's origin, named by ``host`` (127.0.0.1 or localhost: both reach it)."""
        return f"http://{host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        proofs = request.headers.getall("DPoP", [])
        verdict, jkt = "no token", None
        if authorization is not None or proofs:
            token = (authorization or "").partition(" ")[2]
            try:
                jkt = self.checker.check(
                    proofs, request.method, str(request.url), access_token=token
                )
                verdict = "ok"
            except ProofRefused as exc:
                verdict = exc.error
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                authorization,
                next(iter(proofs), None),
                verdict,
                jkt,
                body,
            )
        )
        if verdict == "use_dpop_nonce":
            challenge = {"WWW-Authenticate": 'DPoP error="use_dpop_nonce"'}
            return web.Response(status=401, headers={**challenge, "DPoP-Nonce": self.checker.nonce})
        if verdict not in ("ok", "no token"):
            return web.Response(status=401, headers={"WWW-Authenticate": f'DPoP error="{verdict}"'})
        if request.path == "/to":
            status = int(request.query.get("status", "302"))
            return web.Response(status=status, headers={"Location": request.query["url"]})
        if request.path == "/loop":
            return web.Response(status=302, headers={"Location": "/loop"})
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _api(clock: VirtualClock, **kwargs: Any) -> AsyncIterator[Api]:
    server = Api(clock, **kwargs)
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def api(virtual_clock: VirtualClock) -> AsyncIterator[Api]:
    """The API the token is meant for."""
    async for server in _api(virtual_clock):
        yield server


@pytest.fixture
async def elsewhere(virtual_clock: VirtualClock) -> AsyncIterator[Api]:
    """Another origin (another port): a CDN, a presigned URL, an open redirect's target."""
    async for server in _api(virtual_clock):
        yield server


@pytest.fixture
async def flows(authorization_server: AuthorizationServer) -> AsyncIterator[DeviceFlowClient]:
    """A dpop=True client, signed in: its "default" account holds a DPoP token."""
    async with make_client(authorization_server, dpop=True, on_code=no_op) as client:
        await client.get_token()
        yield client


async def jkt_of(flows: DeviceFlowClient) -> str:
    """The thumbprint of the key the account's token is bound to."""
    key = (await flows.get_token()).dpop_key
    assert key is not None
    return key.jkt


async def fetch(
    kind: str,
    flows: DeviceFlowClient,
    method: str,
    url: str,
    *,
    hosts: set[str] | None = None,
) -> int:
    """``method url`` (with a body for POST) through ``kind``'s integration, redirects
    followed the way it follows them; the final status."""
    data = b"payload" if method == "POST" else None
    if kind == "aiohttp":
        auth = BearerAuth(flows, hosts=hosts)
        async with (
            aiohttp.ClientSession(middlewares=(auth,)) as session,
            session.request(method, url, data=data) as response,
        ):
            return response.status
    dfa = DeviceFlowAuth(flows, hosts=hosts, follow_redirects=True)
    async with httpx.AsyncClient(auth=dfa) as http:
        return (await http.request(method, url, content=data)).status_code


@CLIENTS
async def test_redirect_to_another_origin_gets_neither_token_nor_proof(
    kind: str, flows: DeviceFlowClient, api: Api, elsewhere: Api
) -> None:
    """The API redirects to another origin: the target gets no Authorization and no DPoP."""
    target = f"{elsewhere.url()}/landing"
    assert 200 == await fetch(kind, flows, "GET", f"{api.url()}/to?url={target}")
    assert [("/to", "ok")] == [(s.path, s.verdict) for s in api.seen]
    assert [Seen("GET", "/landing", None, None, "no token")] == elsewhere.seen


@CLIENTS
@pytest.mark.parametrize(
    ("status", "method", "then"), [(302, "GET", "GET"), (303, "POST", "GET"), (307, "POST", "POST")]
)
async def test_redirect_within_the_origin_gets_a_proof_of_its_own(
    kind: str, status: int, method: str, then: str, flows: DeviceFlowClient, api: Api
) -> None:
    """A redirect to another path of the API: the hop carries the token and a new proof for
    its own method and URL (303 turns a POST into a GET, 307 keeps it and its body), which the
    API accepts; both proofs are of the token's key."""
    url = f"{api.url()}/to?status={status}&url=/landing"
    assert 200 == await fetch(kind, flows, method, url)
    first, hop = api.seen
    assert (method, "/to", "ok") == (first.method, first.path, first.verdict)
    assert (then, "/landing", "ok") == (hop.method, hop.path, hop.verdict)
    assert (b"payload" if then == "POST" else b"") == hop.body
    assert first.proof != hop.proof
    assert first.authorization == hop.authorization
    jkt = await jkt_of(flows)
    assert [jkt, jkt] == [first.jkt, hop.jkt]


@CLIENTS
async def test_redirect_to_a_listed_host_gets_a_proof_for_it(
    kind: str, flows: DeviceFlowClient, api: Api, elsewhere: Api
) -> None:
    """With hosts, a redirect to another origin of a listed host carries the token with a proof
    made for that origin's URL; a further redirect to a host name not listed carries neither."""
    unlisted = f"{api.url('127.0.0.1')}/outside"
    listed = f"{elsewhere.url('localhost')}/to?url={unlisted}"
    url = f"{api.url('localhost')}/to?url={listed}"
    assert 200 == await fetch(kind, flows, "GET", url, hosts={"localhost"})
    assert [("/to", "ok"), ("/outside", "no token")] == [(s.path, s.verdict) for s in api.seen]
    assert [("/to", "ok")] == [(s.path, s.verdict) for s in elsewhere.seen]
    assert (None, None) == (api.seen[1].authorization, api.seen[1].proof)
    assert elsewhere.seen[0].authorization == api.seen[0].authorization


@CLIENTS
async def test_each_hop_gets_the_nonce_its_server_asks_for(
    kind: str, flows: DeviceFlowClient, virtual_clock: VirtualClock
) -> None:
    """A server that wants nonces: the first hop is sent again once with its nonce, and the
    hop after the redirect carries it from the start."""
    async for strict in _api(virtual_clock, require_nonce=True):
        assert 200 == await fetch(kind, flows, "GET", f"{strict.url()}/to?url=/landing")
        seen = [(s.path, s.verdict) for s in strict.seen]
    assert [("/to", "use_dpop_nonce"), ("/to", "ok"), ("/landing", "ok")] == seen


# --- httpx: who follows the redirects ----------------------------------------------------------


async def test_redirect_followed_by_hand_gets_a_proof_of_its_own(
    flows: DeviceFlowClient, api: Api, elsewhere: Api
) -> None:
    """Without follow_redirects, the redirect is the answer; sent by hand, a hop within the
    API gets a new proof, and a hop to another origin neither the token nor a proof."""
    async with httpx.AsyncClient(auth=DeviceFlowAuth(flows)) as http:
        moved = await http.get(f"{api.url()}/to?url=/to?url={elsewhere.url()}/landing")
        assert 302 == moved.status_code
        assert moved.next_request is not None
        again = await http.send(moved.next_request)
        assert again.next_request is not None
        assert 200 == (await http.send(again.next_request)).status_code
    assert [("/to", "ok"), ("/to", "ok")] == [(s.path, s.verdict) for s in api.seen]
    assert [Seen("GET", "/landing", None, None, "no token")] == elsewhere.seen


async def test_redirects_httpx_follows_by_itself_carry_the_first_proof(
    flows: DeviceFlowClient, api: Api, elsewhere: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx's own follow_redirects calls no auth for the hops: the target gets the first
    request's proof (httpx drops only Authorization). What DeviceFlowAuth can do is say so: one
    warning, naming the account and the remedy."""
    caplog.set_level(logging.WARNING, logger="deviceflow")
    auth = DeviceFlowAuth(flows)
    async with httpx.AsyncClient(auth=auth, follow_redirects=True) as http:
        for _ in range(2):
            await http.get(f"{api.url()}/to?url={elsewhere.url()}/landing")
    assert [None, None] == [s.authorization for s in elsewhere.seen]
    assert [s.proof for s in api.seen] == [s.proof for s in elsewhere.seen]
    (warning,) = [r.getMessage() for r in caplog.records if "redirect" in r.getMessage()]
    assert "account='default'" in warning
    assert "follow_redirects=True to DeviceFlowAuth" in warning


async def test_redirect_loop_ends_at_max_redirects(flows: DeviceFlowClient, api: Api) -> None:
    """The hops the auth follows count against httpx's max_redirects."""
    auth = DeviceFlowAuth(flows, follow_redirects=True)
    async with httpx.AsyncClient(auth=auth, max_redirects=3) as http:
        with pytest.raises(httpx.TooManyRedirects):
            await http.get(f"{api.url()}/loop")
    assert ["ok"] * 4 == [s.verdict for s in api.seen]


async def test_blocking_httpx_client_follows_with_a_proof_per_hop(
    authorization_server: AuthorizationServer, api: Api, elsewhere: Api
) -> None:
    """httpx.Client with the blocking client: the same hops, the same proofs."""
    server = authorization_server

    def calls() -> int:
        with (
            SyncClient(
                Provider(issuer=server.issuer),
                client_id="svc",
                clock=server.clock,
                dpop=True,
                on_code=no_op,
            ) as blocking,
            httpx.Client(auth=DeviceFlowAuth(blocking, follow_redirects=True)) as http,
        ):
            url = f"{api.url()}/to?status=307&url=/to?url={elsewhere.url()}/landing"
            return http.post(url, content=b"payload").status_code

    assert 200 == await anyio.to_thread.run_sync(calls)
    assert [("POST", "ok"), ("POST", "ok")] == [(s.method, s.verdict) for s in api.seen]
    assert [(None, None)] == [(s.authorization, s.proof) for s in elsewhere.seen]
