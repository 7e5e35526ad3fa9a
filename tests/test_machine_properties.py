"""Property tests: whatever the server says, the machine ends in a defined state."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceflow import DeviceFlowError, FlowState, ProtocolError, ProviderMetadata, TransportError
from deviceflow._machine import DeviceFlowMachine, Done, Fail, Send
from deviceflow._models import RequestKind, Response

WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
META = ProviderMetadata(
    issuer=None,
    device_authorization_endpoint="https://idp.example/device",
    token_endpoint="https://idp.example/token",
)

numbers = st.one_of(
    st.none(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["5", "0", "-1", "1e9", "nan", "x", ""]),
    st.booleans(),
)
error_codes = st.sampled_from(
    [
        "authorization_pending",
        "slow_down",
        "access_denied",
        "authorization_declined",
        "expired_token",
        "invalid_grant",
        "server_error",
        "temporarily_unavailable",
        "invalid_client",
        "something_new",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["error", "token", "garbage", "json", "form"]))
    if kind == "error":
        body: dict[str, Any] = {"error": draw(error_codes)}
        if draw(st.booleans()):
            body["interval"] = draw(numbers)
        if draw(st.booleans()):
            body["error_description"] = draw(json_values)
        return json.dumps(body, allow_nan=True).encode()
    if kind == "token":
        token: dict[str, Any] = {
            "access_token": draw(st.one_of(st.just("at"), json_values)),
            "token_type": draw(st.sampled_from(["Bearer", "bearer", "mac", 7])),
        }
        if draw(st.booleans()):
            token["expires_in"] = draw(numbers)
        if draw(st.booleans()):
            token["refresh_token"] = draw(st.one_of(st.just("rt"), json_values))
        return json.dumps(token, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    if kind == "form":
        return b"error=" + draw(error_codes).encode() + b"&interval=" + draw(st.binary(max_size=5))
    return draw(st.binary(max_size=40))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["content-type"] = draw(
            st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/html"])
        )
    if draw(st.booleans()):
        headers["retry-after"] = draw(
            st.sampled_from(["1", "30", "100000", "-5", "Wed, 21 Oct 2015 07:28:00 GMT", "x"])
        )
    status = draw(st.sampled_from([200, 200, 400, 400, 401, 403, 428, 429, 302, 404, 500, 503]))
    return Response(status=status, headers=headers, body=draw(bodies()))


inputs = st.lists(
    st.one_of(
        responses(),
        st.builds(TransportError, st.just("boom"), retryable=st.booleans()),
    ),
    max_size=40,
)
code_bodies = st.fixed_dictionaries(
    {
        "device_code": st.just("dc"),
        "user_code": st.just("ABCD-EFGH"),
        "verification_uri": st.just("https://idp.example/device"),
        "expires_in": st.one_of(st.integers(1, 2000), st.just("900")),
    },
    optional={"interval": numbers},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(code=code_bodies, script=inputs, lateness=st.lists(st.floats(0, 3), max_size=40))
def test_machine_ends_in_a_defined_state(
    code: dict[str, Any], script: list[Response | TransportError], lateness: list[float]
) -> None:
    """Any sequence of answers and failures: typed errors only, polls spaced, deadline kept."""
    m = DeviceFlowMachine(client_id="cli", metadata=META, poll_margin=0.0)
    action = m.start(now=0.0, wall=WALL)
    assert isinstance(action, Send)
    action = m.receive_response(
        Response(status=200, headers={}, body=json.dumps(code).encode()), now=0.0, wall=WALL
    )
    if not isinstance(action, Send):
        assert isinstance(action, Fail)
        return
    deadline = (m.code.expires_at - WALL).total_seconds() if m.code else math.inf
    now = 0.0
    for i, item in enumerate(script):
        assert isinstance(action, Send)
        assert RequestKind.TOKEN == action.request.kind
        # Never sooner than the interval in force, never past the code's deadline.
        assert action.at - now >= m.interval - 1e-9
        assert action.at <= deadline + 1e-9
        now = action.at + (lateness[i] if i < len(lateness) else 0.0)
        if isinstance(item, TransportError):
            action = m.receive_failure(item, now=now, wall=WALL)
        else:
            action = m.receive_response(item, now=now, wall=WALL)
        if isinstance(action, Done):
            assert FlowState.GRANTED == m.state
            break
        if isinstance(action, Fail):
            assert isinstance(action.error, DeviceFlowError)
            assert m.state in (FlowState.EXPIRED, FlowState.DENIED, FlowState.FAILED)
            break
    if not isinstance(action, Send):
        # Terminal: every later input is refused with a typed error, never a poll.
        try:
            m.receive_failure(TransportError("late"), now=now + 100, wall=WALL)
        except ProtocolError:
            pass
        else:  # pragma: no cover
            raise AssertionError("a terminal machine accepted input")
