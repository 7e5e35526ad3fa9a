"""ScriptedTransport: answers from a script, records requests, holds answers, delegates."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any

import attrs
import pytest

from deviceflow import (
    AiohttpTransport,
    ClientAuth,
    DeviceFlowClient,
    DeviceFlowError,
    Provider,
    Request,
    RequestKind,
    Response,
    Token,
    TransportError,
)
from deviceflow.testing import (
    AuthorizationServer,
    ScriptedTransport,
    ScriptExhaustedError,
    VirtualClock,
)
from helpers import issued_token, make_client

IDP = "https://idp.example"
PROVIDER = Provider(
    issuer=IDP,
    device_authorization_endpoint=IDP + "/device",
    token_endpoint=IDP + "/token",
    revocation_endpoint=IDP + "/revoke",
)
REFRESH = Request(
    kind=RequestKind.TOKEN,
    method="POST",
    url=IDP + "/token",
    params={"grant_type": "refresh_token", "refresh_token": "secret-refresh-token"},
)
DISCOVERY = Request(
    kind=RequestKind.DISCOVERY, method="GET", url=IDP + "/.well-known/openid-configuration"
)
EXPIRED = Token(
    access_token="old-access-token",
    refresh_token="old-refresh-token",
    expires_at=datetime(2020, 1, 1, tzinfo=timezone.utc),
)


def answer(status: int = 200, **fields: str) -> Response:
    """A JSON answer with ``fields``."""
    return Response(
        status=status,
        headers={"content-type": "application/json"},
        body=json.dumps(fields).encode(),
    )


# --- the script ------------------------------------------------------------------------------


async def test_answers_come_in_order_and_every_request_is_recorded() -> None:
    """Scripted Responses are returned in order; requests lists what was sent, in order."""
    first, second = answer(access_token="a"), answer(access_token="b")
    transport = ScriptedTransport([first, second])
    assert first == await transport.send(REFRESH)
    assert second == await transport.send(DISCOVERY)
    assert [REFRESH, DISCOVERY] == transport.requests


async def test_a_scripted_exception_is_raised() -> None:
    """An exception in the script is raised to the caller, and the next answer follows it."""
    reset = TransportError("connection reset")
    transport = ScriptedTransport([reset, answer()])
    with pytest.raises(TransportError) as raised:
        await transport.send(REFRESH)
    assert reset is raised.value
    assert 200 == (await transport.send(REFRESH)).status


async def test_answer_functions_get_the_request() -> None:
    """A function in the script, plain or async, is called with the request it answers."""
    seen: list[Request] = []

    def plain(request: Request) -> Response:
        seen.append(request)
        return answer(access_token="plain")

    async def coroutine(request: Request) -> Response:
        seen.append(request)
        return answer(access_token="coroutine")

    transport = ScriptedTransport([plain, coroutine])
    assert answer(access_token="plain") == await transport.send(REFRESH)
    assert answer(access_token="coroutine") == await transport.send(DISCOVERY)
    assert [REFRESH, DISCOVERY] == seen


async def test_an_answer_function_that_returns_no_response_is_a_type_error() -> None:
    """A function answering something other than a Response raises TypeError, not garbage."""

    def wrong(request: Request) -> Any:
        return "200 OK"

    transport = ScriptedTransport([wrong])
    with pytest.raises(TypeError, match="str"):
        await transport.send(REFRESH)


async def test_answers_for_the_kind_come_before_answers_for_any_kind() -> None:
    """A request takes its kind's script first, then the script for any kind."""
    for_token, for_any = answer(access_token="token"), answer(issuer=IDP)
    transport = ScriptedTransport({RequestKind.TOKEN: [for_token]})
    transport.add(for_any)
    assert for_any == await transport.send(DISCOVERY)
    transport.add(for_any)
    assert for_token == await transport.send(REFRESH)
    assert for_any == await transport.send(REFRESH)


async def test_remaining_counts_the_unused_answers() -> None:
    """remaining() counts every unused answer, or one kind's with a kind."""
    transport = ScriptedTransport({RequestKind.TOKEN: [answer(), answer()]})
    transport.add(answer())
    transport.add(answer(), kind=RequestKind.DISCOVERY)
    assert (4, 2, 1, 0) == (
        transport.remaining(),
        transport.remaining(RequestKind.TOKEN),
        transport.remaining(RequestKind.DISCOVERY),
        transport.remaining(RequestKind.REVOCATION),
    )
    await transport.send(REFRESH)
    assert (3, 1) == (transport.remaining(), transport.remaining(RequestKind.TOKEN))


async def test_an_exhausted_script_raises_an_assertion_naming_the_request() -> None:
    """With no answer left and no fallback, the request raises ScriptExhaustedError (no secret)."""
    transport = ScriptedTransport([answer()])
    await transport.send(DISCOVERY)
    with pytest.raises(ScriptExhaustedError) as raised:
        await transport.send(REFRESH)
    error = raised.value
    assert REFRESH is error.request
    assert isinstance(error, AssertionError)
    assert not isinstance(error, DeviceFlowError)
    assert "request #2 (token: POST https://idp.example/token)" in str(error)
    assert "secret-refresh-token" not in str(error)
    assert [DISCOVERY, REFRESH] == transport.requests


async def test_an_exhausted_script_is_not_taken_for_a_network_failure() -> None:
    """A client whose refresh finds the script empty fails with ScriptExhaustedError."""
    transport = ScriptedTransport()
    async with DeviceFlowClient(
        PROVIDER, client_id="bot", transport=transport, clock=VirtualClock(), on_code=None
    ) as client:
        await client.save_token("bot", EXPIRED)
        with pytest.raises(ScriptExhaustedError):
            await client.get_token("bot")


# --- the fallback ----------------------------------------------------------------------------


async def test_a_fallback_function_answers_what_the_script_does_not() -> None:
    """Once the script is used up, every request goes to the fallback function."""
    scripted, fallen_back = answer(access_token="scripted"), answer(access_token="fallback")
    seen: list[Request] = []

    def fallback(request: Request) -> Response:
        seen.append(request)
        return fallen_back

    transport = ScriptedTransport([scripted], fallback=fallback)
    assert scripted == await transport.send(REFRESH)
    assert fallen_back == await transport.send(REFRESH)
    assert fallen_back == await transport.send(DISCOVERY)
    assert [REFRESH, DISCOVERY] == seen


async def test_a_fallback_transport_answers_from_a_real_server(
    authorization_server: AuthorizationServer,
) -> None:
    """Unscripted requests go to the fallback transport; scripted ones never reach it."""
    server = authorization_server
    real = AiohttpTransport(auth=ClientAuth(client_id="bot"))
    transport = ScriptedTransport({RequestKind.TOKEN: [answer(503)]}, fallback=real)
    discovery = Request(
        kind=RequestKind.DISCOVERY, method="GET", url=server.openid_configuration_url
    )
    token = Request(kind=RequestKind.TOKEN, method="POST", url=server.token_endpoint)
    try:
        assert 503 == (await transport.send(token)).status
        discovered = await transport.send(discovery)
        assert server.issuer == json.loads(discovered.body)["issuer"]
        assert 400 == (await transport.send(token)).status  # the server's: no grant_type
    finally:
        await transport.aclose()
    assert ["discovery", "token"] == [record.endpoint for record in server.requests]


async def test_aclose_closes_the_fallback_transport() -> None:
    """aclose() marks the transport closed and closes its fallback transport."""
    inner = ScriptedTransport()
    transport = ScriptedTransport(fallback=inner)
    assert (False, False) == (transport.closed, inner.closed)
    await transport.aclose()
    assert (True, True) == (transport.closed, inner.closed)


# --- holding answers -------------------------------------------------------------------------


async def test_a_held_answer_reaches_its_caller_only_after_release() -> None:
    """hold(kind) keeps answers to that kind from their callers; other kinds pass."""
    transport = ScriptedTransport([answer(access_token="held"), answer(issuer=IDP)])
    transport.hold(RequestKind.TOKEN)
    sending = asyncio.ensure_future(transport.send(REFRESH))
    assert [REFRESH] == await transport.wait_held()
    assert answer(issuer=IDP) == await transport.send(DISCOVERY)
    await asyncio.sleep(0.01)
    assert not sending.done()
    assert [REFRESH] == transport.held
    transport.release()
    assert answer(access_token="held") == await sending
    assert [] == transport.held


async def test_hold_without_kinds_holds_every_kind() -> None:
    """hold() with no kinds holds the answers to every request; wait_held(n) waits for n."""
    transport = ScriptedTransport([answer(), answer()])
    transport.hold()
    sending = [asyncio.ensure_future(transport.send(r)) for r in (DISCOVERY, REFRESH)]
    assert [DISCOVERY, REFRESH] == await transport.wait_held(2)
    transport.release()
    assert [200, 200] == [response.status for response in await asyncio.gather(*sending)]


async def test_a_held_exception_is_raised_on_release() -> None:
    """A failure is held like an answer and raised once released."""
    transport = ScriptedTransport([TransportError("connection reset")])
    transport.hold(RequestKind.TOKEN)
    sending = asyncio.ensure_future(transport.send(REFRESH))
    await transport.wait_held()
    transport.release()
    with pytest.raises(TransportError, match="connection reset"):
        await sending


async def test_release_stops_holding() -> None:
    """After release(), later answers are not held until hold() is called again."""
    transport = ScriptedTransport([answer(), answer(), answer()])
    transport.hold(RequestKind.TOKEN)
    transport.release()
    assert 200 == (await transport.send(REFRESH)).status
    transport.hold(RequestKind.TOKEN)
    sending = asyncio.ensure_future(transport.send(REFRESH))
    assert [REFRESH] == await transport.wait_held()
    transport.release()
    assert 200 == (await sending).status


async def test_a_cancelled_caller_leaves_nothing_held() -> None:
    """Cancelling a request whose answer is held removes it from held."""
    transport = ScriptedTransport([answer()])
    transport.hold()
    sending = asyncio.ensure_future(transport.send(REFRESH))
    await transport.wait_held()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert [] == transport.held


async def test_wait_held_times_out_when_nothing_is_held() -> None:
    """wait_held() raises TimeoutError when too few answers are held in time."""
    transport = ScriptedTransport()
    with pytest.raises(TimeoutError, match="fewer than 1 answers"):
        await transport.wait_held(timeout=0.01)


# --- through the client ----------------------------------------------------------------------


async def test_client_retries_a_scripted_failure_then_refreshes() -> None:
    """The class docstring's example: a reset, then a token answer, gives the new token."""
    token = Response(
        status=200,
        headers={"content-type": "application/json"},
        body=b'{"access_token": "at", "token_type": "Bearer"}',
    )
    transport = ScriptedTransport({RequestKind.TOKEN: [TransportError("reset"), token]})
    async with DeviceFlowClient(
        PROVIDER, client_id="bot", transport=transport, clock=VirtualClock()
    ) as client:
        await client.save_token("bot", EXPIRED)
        assert "at" == (await client.get_token("bot")).access_token
    assert [RequestKind.TOKEN] * 2 == [r.kind for r in transport.requests]
    assert transport.closed  # the client closed its transport


async def test_a_held_refresh_has_reached_the_server_before_release(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """With a real server behind it, a held refresh is done on the server, not yet returned."""
    server = authorization_server
    transport = ScriptedTransport(fallback=AiohttpTransport(auth=ClientAuth(client_id="svc")))
    transport.hold(RequestKind.TOKEN)
    async with make_client(server, transport=transport) as client:
        issued = issued_token(server, client.client_id, scope=None)
        expired = datetime(2020, 1, 1, tzinfo=timezone.utc)
        await client.save_token("a", attrs.evolve(issued, expires_at=expired))
        refreshing = asyncio.ensure_future(client.get_token("a"))
        await transport.wait_held()
        assert 1 == server.stats.refreshes
        assert not refreshing.done()
        transport.release()
        assert server.is_valid_access_token((await refreshing).access_token)
