"""BearerAuth sends the token only to the origin it is meant for, redirects included."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web

from deviceflow import DeviceFlowClient, Provider, Token
from deviceflow._bearer import TokenScope
from deviceflow.aiohttp import BearerAuth
from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import time_factor


class Recorder:
    """A loopback web server that records the Authorization header of every request it gets.

    ``/to?url=...`` redirects (302) to ``url``; every other path answers 200.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers.get("Authorization")))
        if request.path == "/to":
            raise web.HTTPFound(request.query["url"])
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def api() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    await recorder.start()
    yield recorder
    await recorder.aclose()


@pytest.fixture
async def elsewhere() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    await recorder.start()
    yield recorder
    await recorder.aclose()


@pytest.fixture
async def client(virtual_clock: VirtualClock) -> AsyncIterator[DeviceFlowClient]:
    """A client holding a fresh token for account "api"."""
    async with (
        AuthorizationServer(clock=virtual_clock) as server,
        DeviceFlowClient(
            Provider(issuer=server.issuer), client_id="svc", clock=virtual_clock
        ) as flows,
    ):
        token = Token(
            access_token="the-access-token",
            expires_at=virtual_clock.wall() + timedelta(hours=1),
        )
        await flows.save_token("api", token)
        yield flows


BEARER = "Bearer the-access-token"


async def get(session: aiohttp.ClientSession, url: str) -> int:
    """GET ``url`` (following redirects) and return the final status."""
    async with session.get(url) as response:
        return response.status


async def test_redirect_to_another_origin_gets_no_token(
    client: DeviceFlowClient, api: Recorder, elsewhere: Recorder
) -> None:
    """By default the token goes to the first request's origin; a redirect elsewhere has none."""
    auth = BearerAuth(client, "api")
    async with aiohttp.ClientSession(middlewares=(auth,)) as session:
        assert 200 == await get(session, f"{api.url}/to?url={elsewhere.url}/landing")
    assert [("/to", BEARER)] == api.seen
    assert [("/landing", None)] == elsewhere.seen


async def test_redirect_within_the_origin_keeps_the_token(
    client: DeviceFlowClient, api: Recorder
) -> None:
    """A redirect to another path of the same origin still carries the token."""
    auth = BearerAuth(client, "api")
    async with aiohttp.ClientSession(middlewares=(auth,)) as session:
        assert 200 == await get(session, f"{api.url}/to?url={api.url}/landing")
    assert [("/to", BEARER), ("/landing", BEARER)] == api.seen


async def test_later_requests_to_another_origin_get_no_token(
    client: DeviceFlowClient, api: Recorder, elsewhere: Recorder
) -> None:
    """Once bound to an origin, the middleware sends no token to others, and keeps it there."""
    auth = BearerAuth(client, "api")
    async with aiohttp.ClientSession(middlewares=(auth,)) as session:
        await get(session, f"{api.url}/first")
        await get(session, f"{elsewhere.url}/other")
        await get(session, f"{api.url}/again")
    assert [("/first", BEARER), ("/again", BEARER)] == api.seen
    assert [("/other", None)] == elsewhere.seen


async def test_hosts_widens_where_the_token_goes(
    client: DeviceFlowClient, api: Recorder, elsewhere: Recorder
) -> None:
    """With hosts, every listed host name gets the token, on any port, redirects included."""
    auth = BearerAuth(client, "api", hosts={"127.0.0.1"})
    async with aiohttp.ClientSession(middlewares=(auth,)) as session:
        assert 200 == await get(session, f"{api.url}/to?url={elsewhere.url}/landing")
    assert [("/to", BEARER)] == api.seen
    assert [("/landing", BEARER)] == elsewhere.seen


async def test_hosts_keeps_the_token_from_unlisted_redirect_targets(
    client: DeviceFlowClient, api: Recorder, elsewhere: Recorder
) -> None:
    """With hosts, a redirect to a host name not listed gets no token."""
    auth = BearerAuth(client, "api", hosts={"127.0.0.1"})
    target = elsewhere.url.replace("127.0.0.1", "localhost")
    async with aiohttp.ClientSession(middlewares=(auth,)) as session:
        assert 200 == await get(session, f"{api.url}/to?url={target}/landing")
    assert [("/landing", None)] == elsewhere.seen


class Contended(TokenScope):
    """A TokenScope that holds open the race of two first requests: a thread that finds no
    origin bound waits (a moment) for the other to find the same, and the second binding
    waits until the first binder has compared. Without a compare-and-set both would carry."""

    def __init__(self) -> None:
        self._both_read = threading.Barrier(2, timeout=time_factor())
        self._compared = threading.Event()
        self._bindings = 0
        super().__init__()

    @property
    def _origin(self) -> tuple[str, str, int | None] | None:
        value: tuple[str, str, int | None] | None = self.__dict__.get("_bound")
        if value is None:
            with contextlib.suppress(threading.BrokenBarrierError):
                self._both_read.wait()  # with a lock, the other thread cannot get here
        else:
            self._compared.set()
        return value

    @_origin.setter
    def _origin(self, value: tuple[str, str, int | None] | None) -> None:
        if value is not None:
            self._bindings += 1
            if self._bindings == 2:
                self._compared.wait(timeout=time_factor())
        self.__dict__["_bound"] = value


def test_first_requests_in_two_threads_bind_one_origin() -> None:
    """Two threads' first requests to different origins: exactly one origin carries the
    token, and it stays the one bound."""
    scope = Contended()
    carried: dict[str, bool] = {}

    def first_request(host: str) -> None:
        carried[host] = scope.carries_token("https", host, None)

    threads = [threading.Thread(target=first_request, args=(h,)) for h in ("a.test", "b.test")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10 * time_factor())
    assert [True] == [v for v in carried.values() if v]
    (winner,) = [h for h, v in carried.items() if v]
    assert {winner} == {h for h in ("a.test", "b.test") if scope.carries_token("https", h, None)}


def test_a_first_request_in_cleartext_binds_the_https_origin_of_its_host() -> None:
    """It carries no token, and it binds: a redirect answering it cannot pick the origin (an
    https hop to another host gets nothing), the https origin of the same host can."""
    scope = TokenScope()
    assert not scope.carries_token("http", "api.example.com", None)
    assert not scope.carries_token("https", "attacker.example", 443)
    assert not scope.carries_token("http", "api.example.com", 80)
    assert scope.carries_token("https", "API.example.com", None)
    assert scope.carries_token("https", "api.example.com", 443)  # aiohttp names default ports
    assert not scope.carries_token("https", "api.example.com", 8443)

    on_a_port = TokenScope()
    assert not on_a_port.carries_token("http", "api.example.com", 8080)
    assert on_a_port.carries_token("https", "api.example.com", 8080)
    assert not on_a_port.carries_token("https", "api.example.com", None)
