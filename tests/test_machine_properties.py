"""Property tests: whatever the server says, the machine ends in a defined state."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from deviceflow import (
    DeviceFlowError,
    FlowState,
    ProtocolError,
    ProviderMetadata,
    RequestKind,
    Response,
    TransportError,
)
from deviceflow._machine import DeviceFlowMachine, Done, Fail, Send
from strategies import code_bodies, poll_inputs

WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
META = ProviderMetadata(
    issuer=None,
    device_authorization_endpoint="https://idp.example/device",
    token_endpoint="https://idp.example/token",
)


@settings(max_examples=300)
@given(code=code_bodies, script=poll_inputs, lateness=st.lists(st.floats(0, 3), max_size=40))
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
