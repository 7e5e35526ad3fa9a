"""Fuzzing: raw bodies and headers for every endpoint; nothing but DeviceFlowError comes out.

Each test drives the sans-IO machine or the client (through its ``transport=`` seam, with a
scripted fake transport) with answers from ``fuzz_strategies``. The normal test run tries a few
hundred answers in all; ``nox -s fuzz`` (DEVICEFLOW_FUZZ=1) 10,000 per test.

"Untyped" includes the machine's own safety net: the machine turns an unexpected exception into
``ProtocolError("internal error in the device flow (...)")`` so that it never raises; for the
fuzzer that is still a bug, and is asserted against.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from fuzz_strategies import FUZZ, IDP, VALID, responses
from hypothesis import given
from hypothesis import strategies as st

from deviceflow import (
    DeviceFlowClient,
    DeviceFlowError,
    FlowState,
    Provider,
    ProviderMetadata,
    ReauthorizationRequiredError,
    Request,
    RequestKind,
    Response,
    Token,
    TransportError,
)
from deviceflow._machine import Action, DeviceFlowMachine, Done, Fail, Send
from deviceflow._parse import interpret_token_response
from deviceflow._provider import fetch_metadata
from deviceflow._urls import require_secure_url
from deviceflow.testing import ScriptedTransport, VirtualClock
from helpers import stored_token

WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
META = ProviderMetadata(
    issuer=IDP,
    device_authorization_endpoint=IDP + "/device",
    token_endpoint=IDP + "/token",
    revocation_endpoint=IDP + "/revoke",
)
PROVIDER = Provider(
    issuer=IDP,
    device_authorization_endpoint=IDP + "/device",
    token_endpoint=IDP + "/token",
    revocation_endpoint=IDP + "/revoke",
)
GOOD_CODE = Response(
    status=200,
    headers={"content-type": "application/json"},
    body=b'{"device_code": "d", "user_code": "U", "verification_uri": "https://idp.example/v", '
    b'"expires_in": 600, "interval": 5}',
)
STORED = Token(
    access_token="stored-access-token",
    refresh_token="stored-refresh-token",
    expires_at=datetime(2020, 1, 1, tzinfo=timezone.utc),
)
failures = st.builds(
    TransportError, st.sampled_from(["connection reset", "timed out"]), retryable=st.booleans()
)


def assert_typed(error: BaseException) -> None:
    """A DeviceFlowError, not the machine's wrapper around an unexpected exception, and with a
    message safe to print (no raw control characters from the server)."""
    assert isinstance(error, DeviceFlowError), repr(error)
    assert not str(error).startswith("internal error"), repr(error)
    assert str(error).isprintable(), repr(error)


def check_action(action: Action, now: float) -> None:
    """What any action may look like: a secure request at a finite time, a token, an error."""
    if isinstance(action, Send):
        assert math.isfinite(action.at)
        assert action.at >= now
        require_secure_url(action.request.url, "request")
    elif isinstance(action, Done):
        assert action.token.access_token
        assert "Bearer" == action.token.token_type
        assert action.token.scope is None or action.token.scope.isprintable()
    else:
        assert isinstance(action, Fail)
        assert_typed(action.error)


def drive(
    machine: DeviceFlowMachine, inputs: Sequence[Response | TransportError]
) -> DeviceFlowMachine:
    """Feed ``inputs`` one by one until the machine ends; check every action on the way."""
    now = 0.0
    action = machine.start(now=now, wall=WALL)
    check_action(action, now)
    for item in inputs:
        if not isinstance(action, Send):
            break
        now = action.at
        if isinstance(item, Response):
            action = machine.receive_response(item, now=now, wall=WALL)
        else:
            action = machine.receive_failure(item, now=now, wall=WALL)
        check_action(action, now)
        if machine.code is not None:
            require_secure_url(machine.code.verification_uri, "verification_uri")
            require_secure_url(machine.code.link, "link")
            assert machine.code.user_code.isprintable()
            assert machine.code.message is None or machine.code.message.isprintable()
    if machine.state.is_terminal and machine.state is not FlowState.GRANTED:
        assert machine.error is not None
        assert_typed(machine.error)
    return machine


@FUZZ
@given(st.lists(responses("discovery") | failures, min_size=1, max_size=4))
def test_fuzz_discovery_answers(inputs: list[Response | TransportError]) -> None:
    """Any discovery answer (both well-known URLs) ends in metadata or a typed error."""
    drive(DeviceFlowMachine(client_id="c", scope="openid", issuer=IDP), inputs)


@FUZZ
@given(st.lists(responses("device") | failures, min_size=1, max_size=3))
def test_fuzz_device_authorization_answers(inputs: list[Response | TransportError]) -> None:
    """Any device authorization answer ends in a code with safe links or a typed error."""
    drive(DeviceFlowMachine(client_id="c", scope="openid", metadata=META), inputs)


@FUZZ
@given(st.lists(responses("token") | failures, min_size=1, max_size=6))
def test_fuzz_token_polling_answers(inputs: list[Response | TransportError]) -> None:
    """Any sequence of poll answers ends GRANTED with a Bearer token or in a typed error."""
    drive(DeviceFlowMachine(client_id="c", metadata=META), [GOOD_CODE, *inputs])


@FUZZ
@given(responses("token"))
def test_fuzz_refresh_answers(response: Response) -> None:
    """Any refresh answer gives a Token (keeping the old refresh token if none) or typed error."""
    try:
        token = interpret_token_response(response, None, WALL, previous=STORED)
    except DeviceFlowError as exc:
        assert_typed(exc)
    else:
        assert token.access_token
        assert token.refresh_token


# --- through the client's transport seam ----------------------------------------------------


Script = Mapping[RequestKind, Sequence[Response | TransportError]]


def refuse(request: Request) -> Response:
    """Answers a request its kind's script has no answer left for."""
    raise TransportError("script exhausted", retryable=False)


def scripted(script: Script) -> ScriptedTransport:
    """A fake Transport: answers each request kind from its own script, in order.

    When a kind's script runs out, the request fails with a non-retryable TransportError, so
    every run ends.
    """
    return ScriptedTransport(script, fallback=refuse)


def client(transport: ScriptedTransport, provider: Provider = PROVIDER) -> DeviceFlowClient:
    return DeviceFlowClient(
        provider, client_id="c", transport=transport, clock=VirtualClock(), on_code=None
    )


@FUZZ
@given(
    discovery=st.lists(responses("discovery") | failures, max_size=3),
    device=st.lists(responses("device") | failures, max_size=2),
    token=st.lists(responses("token") | failures, max_size=4),
)
async def test_fuzz_client_device_flow(
    discovery: list[Response | TransportError],
    device: list[Response | TransportError],
    token: list[Response | TransportError],
) -> None:
    """authorize() over any answers to discovery, device and token requests ends typed."""
    good_discovery = Response(
        status=200,
        headers={"content-type": "application/json"},
        body=json.dumps(VALID["discovery"]).encode(),
    )
    transport = scripted(
        {
            RequestKind.DISCOVERY: [*discovery, good_discovery],
            RequestKind.DEVICE_AUTHORIZATION: [*device, GOOD_CODE],
            RequestKind.TOKEN: token,
        }
    )
    async with client(transport, Provider(issuer=IDP)) as flow:
        events = [event async for event in flow.authorize("fuzz")]
    last = events[-1]
    assert last.state.is_terminal
    if last.state is FlowState.GRANTED:
        assert last.token is not None
        assert last.token == await flow.get_token("fuzz")
    else:
        assert last.error is not None
        assert_typed(last.error)


@FUZZ
@given(st.lists(responses("token") | failures, min_size=1, max_size=4))
async def test_fuzz_client_refresh(answers: list[Response | TransportError]) -> None:
    """get_token() refreshing through any answers returns a token or raises typed."""
    transport = scripted({RequestKind.TOKEN: answers})
    async with client(transport) as flow:
        await flow.save_token("fuzz", STORED)
        try:
            token = await flow.get_token("fuzz")
        except DeviceFlowError as exc:
            assert_typed(exc)
            if isinstance(exc, ReauthorizationRequiredError):
                return
            # Anything but a rejected grant keeps the stored token for the next try.
            stored = await flow.store.get(flow.store_key("fuzz"))
            assert stored is not None
        else:
            assert "Bearer" == token.token_type
            assert token.refresh_token  # a rotated one, or the one it had
    assert 1 <= len(transport.requests)  # the expired token was sent for a refresh
    assert all(r.kind is RequestKind.TOKEN for r in transport.requests)


@FUZZ
@given(st.lists(responses("revocation") | failures, min_size=1, max_size=2))
async def test_fuzz_client_revocation(answers: list[Response | TransportError]) -> None:
    """logout() over any revocation answer returns a bool, never raises, and forgets the token."""
    transport = scripted({RequestKind.REVOCATION: answers})
    async with client(transport) as flow:
        await flow.save_token("fuzz", STORED)
        revoked = await flow.logout("fuzz")
        assert isinstance(revoked, bool)
        assert await stored_token(flow, "fuzz") is None


@FUZZ
@given(st.lists(responses("discovery") | failures, min_size=1, max_size=4))
async def test_fuzz_fetch_metadata(answers: list[Response | TransportError]) -> None:
    """Provider discovery (fetch_metadata) over any answers gives metadata or raises typed."""
    transport = scripted({RequestKind.DISCOVERY: answers})
    try:
        metadata = await fetch_metadata(transport, Provider(issuer=IDP), clock=VirtualClock())
    except DeviceFlowError as exc:
        assert_typed(exc)
    else:
        assert IDP == metadata.issuer
        require_secure_url(metadata.token_endpoint, "token_endpoint")
