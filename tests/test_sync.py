"""deviceflow.sync.DeviceFlowClient: blocking calls on a background event loop, shared by
threads, against the built-in server (itself on a loop of its own, so that tests may block)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import anyio.from_thread
import httpx
import pytest

import deviceflow
from deviceflow import (
    DeviceCode,
    FlowState,
    Identity,
    IdentityError,
    Provider,
    ReauthorizationRequiredError,
    Token,
)
from deviceflow.sync import DeviceFlowClient
from deviceflow.testing import AuthorizationServer, VirtualClock
from helpers import time_factor


class Served:
    """An AuthorizationServer on a blocking portal (its own thread and loop)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, server: AuthorizationServer):
        self.portal = portal
        self.server = server

    def token(self, *, expired: bool = False) -> Token:
        """A token of a new grant the server issues directly (expired an hour ago if asked)."""
        issued = self.portal.call(lambda: self.server.issue_tokens("svc", scope="openid"))
        lifetime = -3600 if expired else int(issued["expires_in"])
        return Token(
            access_token=issued["access_token"],
            refresh_token=issued["refresh_token"],
            expires_at=self.server.clock.wall() + timedelta(seconds=lifetime),
        )

    def client(self, **kwargs: object) -> DeviceFlowClient:
        """A blocking client for the server, on the server's clock."""
        return DeviceFlowClient(
            Provider(issuer=self.server.issuer),
            client_id="svc",
            clock=self.server.clock,
            **kwargs,  # type: ignore[arg-type]
        )


def _served(**options: object) -> Iterator[Served]:
    with anyio.from_thread.start_blocking_portal() as portal:
        server = AuthorizationServer(clock=VirtualClock(), interval=1, **options)  # type: ignore[arg-type]
        portal.call(server.start)
        try:
            yield Served(portal, server)
        finally:
            portal.call(server.aclose)


@pytest.fixture
def served() -> Iterator[Served]:
    """A server that approves nothing by itself."""
    yield from _served()


@pytest.fixture
def approving() -> Iterator[Served]:
    """A server that approves every code after its first poll."""
    yield from _served(auto_approve_after=1)


def test_sixteen_threads_share_one_refresh(served: Served) -> None:
    """Sixteen threads asking at once for one expired account cause exactly one refresh, and
    all get its token."""
    with served.client() as client:
        client.save_token("default", served.token(expired=True))
        limit = 30 * time_factor()
        start = threading.Barrier(16, timeout=limit)
        tokens: list[Token] = []

        def ask() -> None:
            start.wait()
            tokens.append(client.get_token())

        threads = [threading.Thread(target=ask, daemon=True) for _ in range(16)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + limit
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        assert [] == [t.name for t in threads if t.is_alive()], f"still asking after {limit:g} s"
    assert 16 == len(tokens)
    assert 1 == len({token.access_token for token in tokens})
    assert 1 == served.server.stats.refreshes
    assert served.server.is_valid_access_token(tokens[0].access_token)


async def test_works_inside_a_running_event_loop(served: Served) -> None:
    """Called from the thread of a running event loop (a Jupyter cell), a blocking call works:
    the client's own loop does the work while this one waits."""
    asyncio.get_running_loop()  # there is one
    with served.client() as client:
        client.save_token("default", served.token(expired=True))
        token = client.get_token()
        assert served.server.is_valid_access_token(token.access_token)
        assert 1 == served.server.stats.refreshes


def test_works_from_a_thread_running_its_own_loop(served: Served) -> None:
    """A thread with an event loop of its own (asyncio.run) may call the blocking client."""
    with served.client() as client:
        client.save_token("default", served.token())

        async def main() -> Token:
            return client.get_token()

        token = asyncio.run(main())
    assert served.server.is_valid_access_token(token.access_token)


def test_plain_on_code_runs_in_a_worker_thread(approving: Served) -> None:
    """A plain on_code is called once, in a worker thread (neither the caller's nor the
    client's loop thread), and the device flow ends with a stored token."""
    seen: list[tuple[str, str, threading.Thread]] = []

    def on_code(code: DeviceCode, account: str) -> None:
        seen.append((code.user_code, account, threading.current_thread()))

    with approving.client(on_code=on_code) as client:
        token = client.get_token("bot")
        assert token == client.get_token("bot")
    assert 1 == len(seen)
    assert "bot" == seen[0][1]
    assert threading.current_thread() is not seen[0][2]
    assert approving.server.is_valid_access_token(token.access_token)


def test_async_on_code_is_awaited(approving: Served) -> None:
    """A coroutine function as on_code is awaited."""
    seen: list[str] = []

    async def on_code(code: DeviceCode, account: str) -> None:
        await asyncio.sleep(0)
        seen.append(account)

    with approving.client(on_code=on_code) as client:
        client.get_token("bot")
    assert ["bot"] == seen


def test_on_code_returning_an_awaitable_is_awaited(approving: Served) -> None:
    """A plain callable that returns an awaitable (a lambda around a coroutine function) has
    it awaited on the client's loop."""
    seen: list[str] = []

    async def record(account: str) -> None:
        seen.append(account)

    with approving.client(on_code=lambda code, account: record(account)) as client:
        client.get_token("bot")
    assert ["bot"] == seen


def test_errors_keep_their_types(served: Served) -> None:
    """No token and no on_code: the asyncio client's ReauthorizationRequiredError, as is."""
    with served.client() as client, pytest.raises(ReauthorizationRequiredError):
        client.get_token("nobody")


def test_refresh_logout_and_the_rest(served: Served) -> None:
    """refresh, save_token, logout, flush, unsaved_accounts and store_key block and answer
    as the asyncio client's do."""
    with served.client(scope="openid") as client:
        first = served.token()
        client.save_token("a", first)
        refreshed = client.refresh("a")
        assert refreshed.access_token != first.access_token
        assert refreshed == client.refresh("a", stale=first)  # already replaced: no refresh
        assert 1 == served.server.stats.refreshes
        assert client.flush()
        assert frozenset() == client.unsaved_accounts()
        assert client.store_key("a").endswith("a")
        assert client.logout("a")
        assert not served.server.is_valid_access_token(refreshed.access_token)
        assert ("svc", "openid") == (client.client_id, client.scope)
        assert served.server.issuer == client.provider.issuer
        assert client.store is not None


def test_authorize_yields_every_event(approving: Served) -> None:
    """authorize() is a blocking iterator of the flow's events, GRANTED last."""
    with approving.client() as client:
        states = [event.state for event in client.authorize("bot")]
        assert FlowState.PENDING in states
        assert FlowState.GRANTED == states[-1]
        assert client.get_token("bot").access_token


def test_leaving_authorize_early_stops_the_flow(served: Served) -> None:
    """authorize() runs in step with its reader: breaking out at the code stops the flow
    before its first poll, and close() returns."""
    with served.client() as client:
        for event in client.authorize("bot"):
            if event.state is FlowState.PENDING:
                break
    assert 1 == served.server.stats.device_authorizations
    assert 0 == served.server.stats.polls


def test_an_abandoned_authorize_iterator_does_not_block_close(served: Served) -> None:
    """close() returns while an authorize() iterator is held mid-flow, unread; the flow
    stops, and the iterator then says the client is closed."""
    client = served.client()
    gen = client.authorize("bot")
    next(gen)
    next(gen)
    closer = threading.Thread(target=client.close, daemon=True)
    closer.start()
    closer.join(timeout=10 * time_factor())
    assert not closer.is_alive()
    assert client.closed
    with pytest.raises(RuntimeError, match="closed"):
        next(gen)
    assert 0 == served.server.stats.polls


def test_close_is_idempotent_and_final(served: Served) -> None:
    """close() twice is fine; any call afterwards raises a RuntimeError that says why."""
    client = served.client()
    assert "open" in repr(client)
    client.close()
    client.close()
    assert client.closed
    assert "closed" in repr(client)
    with pytest.raises(RuntimeError, match="closed"):
        client.get_token()
    with pytest.raises(RuntimeError, match="closed"):
        list(client.authorize())
    with pytest.raises(RuntimeError, match="closed"):
        client.unsaved_accounts()


def test_bad_arguments_leave_no_thread_behind() -> None:
    """A refused argument raises the asyncio client's error, and the loop's thread is gone."""
    before = threading.active_count()
    with pytest.raises(ValueError, match="client_id"):
        DeviceFlowClient(Provider(issuer="https://idp.example.com"), client_id="")
    with pytest.raises(TypeError, match="on_code"):
        DeviceFlowClient(
            Provider(issuer="https://idp.example.com"),
            client_id="svc",
            on_code="print",  # type: ignore[arg-type]
        )
    assert before == threading.active_count()


# --- the same client ------------------------------------------------------------------------


def test_constructor_mirrors_the_asyncio_client() -> None:
    """The constructor takes the asyncio client's parameters (names, kinds, defaults and
    types), all but ``session``, in the same order."""
    asyncio_side = inspect.signature(deviceflow.DeviceFlowClient.__init__).parameters
    expected = [p for name, p in asyncio_side.items() if name != "session"]
    assert expected == list(inspect.signature(DeviceFlowClient.__init__).parameters.values())


def test_methods_mirror_the_asyncio_client() -> None:
    """Every public method of the asyncio client has a blocking twin with the same parameters
    (aclose is close), and every public attribute a counterpart."""
    provider = Provider(issuer="https://idp.example.com")
    asyncio_client = deviceflow.DeviceFlowClient(provider, client_id="svc")
    public = {name for name in dir(asyncio_client) if not name.startswith("_")}
    assert {"provider", "client_id", "scope", "store", "on_code", "identity"} <= public
    twin = {"aclose": "close"}
    with DeviceFlowClient(provider, client_id="svc") as blocking_client:
        for name in sorted(public):
            blocking = getattr(blocking_client, twin.get(name, name))
            if inspect.ismethod(asyncio_method := getattr(asyncio_client, name)):
                expected = inspect.signature(asyncio_method).parameters
                assert expected == inspect.signature(blocking).parameters, name
            else:
                assert not inspect.ismethod(blocking), name


def test_identity_of_who_signed_in(approving: Served) -> None:
    """identity() blocks and gives the verified identity of the account's id_token; an account
    that is not signed in has none."""
    with approving.client(scope="openid", on_code=lambda code, account: None) as client:
        client.get_token("bot")
        identity = client.identity("bot")
        with pytest.raises(IdentityError, match="'nobody' is not signed in"):
            client.identity("nobody")
    assert ("user", approving.server.issuer) == (identity.subject, identity.issuer)
    assert "alice@example.com" == identity.email


def running_loop() -> bool:
    """True when the calling thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_plain_verify_identity_refusal(approving: Served) -> None:
    """A plain verify_identity runs in a worker thread (no event loop there); when it says no,
    get_token() raises IdentityError, the grant is revoked and nothing is stored."""
    seen: list[tuple[str, str, bool]] = []

    def check(identity: Identity, account: str) -> bool:
        seen.append((identity.subject, account, running_loop()))
        return False

    with approving.client(
        scope="openid", on_code=lambda code, account: None, verify_identity=check
    ) as client:
        with pytest.raises(IdentityError, match="account 'tenant-42': verify_identity refused"):
            client.get_token("tenant-42")
        with pytest.raises(IdentityError, match="not signed in"):
            client.identity("tenant-42")
    assert [("user", "tenant-42", False)] == seen
    assert 1 == approving.server.stats.grants_revoked


def test_async_verify_identity_accepts(approving: Served) -> None:
    """A coroutine function as verify_identity is awaited; True keeps the grant."""
    seen: list[str] = []

    async def check(identity: Identity, account: str) -> bool:
        await asyncio.sleep(0)
        seen.append(account)
        return identity.email == "alice@example.com"

    with approving.client(
        scope="openid", on_code=lambda code, account: None, verify_identity=check
    ) as client:
        token = client.get_token("tenant-42")
        assert "user" == client.identity("tenant-42").subject
    assert ["tenant-42"] == seen
    assert approving.server.is_valid_access_token(token.access_token)
    assert 0 == approving.server.stats.grants_revoked


def test_verify_identity_must_be_callable() -> None:
    """A verify_identity that cannot be called is a TypeError, and no thread is left."""
    before = threading.active_count()
    with pytest.raises(TypeError, match="verify_identity must be a callable"):
        DeviceFlowClient(
            Provider(issuer="https://idp.example.com"),
            client_id="svc",
            verify_identity=True,  # type: ignore[arg-type]
        )
    assert before == threading.active_count()


@pytest.fixture
def dpop_server() -> Iterator[Served]:
    """A server that approves at once, issues DPoP tokens and wants its nonce in proofs."""
    yield from _served(auto_approve_after=0, dpop=True, dpop_nonce=True)


def test_dpop_tokens_and_request_headers(dpop_server: Served) -> None:
    """dpop=True: the token is a DPoP token; request_headers() blocks and gives DPoP headers
    the resource takes, and headers with the nonce of the resource's use_dpop_nonce."""
    server = dpop_server.server
    with dpop_server.client(dpop=True, on_code=lambda code, account: None) as client:
        token = client.get_token()
        assert ("DPoP", True) == (token.token_type, token.dpop_key is not None)
        headers = client.request_headers("GET", server.resource_url)
        assert f"DPoP {token.access_token}" == headers["Authorization"]
        assert 200 == httpx.get(server.resource_url, headers=headers).status_code
        nonce = dpop_server.portal.call(server.rotate_dpop_nonce)
        refused = httpx.get(
            server.resource_url, headers=client.request_headers("GET", server.resource_url)
        )
        assert (401, nonce) == (refused.status_code, refused.headers["DPoP-Nonce"])
        retry = client.request_headers("GET", server.resource_url, dpop_nonce=nonce)
        assert 200 == httpx.get(server.resource_url, headers=retry).status_code
