"""Hypothesis strategies shared by the property tests (import as ``from strategies import ...``).

Values of the package's own types (tokens, envelope payloads), JSON of any shape, and the raw
answers a token endpoint may give a polling client. The fuzzer's hostile answers per endpoint
stay in ``fuzz/fuzz_strategies.py``: they exist to break parsers and run under its own profile.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from hypothesis import strategies as st

from deviceflow import Response, Token, TransportError
from deviceflow._crypto import Payload

__all__ = [
    "code_bodies",
    "error_codes",
    "json_scalars",
    "json_values",
    "loose_numbers",
    "payloads",
    "poll_answers",
    "poll_inputs",
    "tokens",
]

#: JSON scalars that equal themselves (no NaN), so that whatever holds them can round-trip.
json_scalars: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
)


def json_values(leaves: st.SearchStrategy[Any] = json_scalars) -> st.SearchStrategy[Any]:
    """Values of any JSON shape: ``leaves`` nested in small lists and objects."""
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=8,
    )


_optional_text = st.none() | st.text()

#: Any Token, including odd text and an ``extra`` of any JSON.
tokens = st.builds(
    Token,
    access_token=st.text(),
    token_type=st.text(),
    expires_at=st.none()
    | st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 1, 1),
        timezones=st.just(timezone.utc),
    ),
    refresh_token=_optional_text,
    scope=_optional_text,
    id_token=_optional_text,
    extra=st.dictionaries(st.text(), json_values(), max_size=4),
)

#: What an encrypted store seals: a version, an optional expiry, and any bytes.
payloads = st.builds(
    Payload,
    version=st.integers(min_value=1, max_value=2**63),
    expires_at=st.none() | st.floats(min_value=1.0, max_value=1e10),
    value=st.binary(max_size=4096),
)

#: OAuth error codes a device flow meets: RFC 6749 5.2, RFC 8628 3.5, providers' own, unknown.
error_codes = st.sampled_from(
    [
        "authorization_pending",
        "slow_down",
        "access_denied",
        "authorization_declined",
        "expired_token",
        "code_expired",
        "invalid_grant",
        "invalid_client",
        "server_error",
        "temporarily_unavailable",
        "unsupported_grant_type",
        "something_new",
    ]
)

#: A number as a server might send one: missing, negative, huge, NaN, a string, a boolean.
loose_numbers = st.one_of(
    st.none(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["5", "0", "-1", "1e9", "nan", "x", ""]),
    st.booleans(),
)

#: JSON of any shape, NaN and infinities included (servers send them; json reads them).
_any_json = json_values(json_scalars | st.just(math.nan))


@st.composite
def _poll_bodies(draw: st.DrawFn) -> bytes:
    """The body of a token endpoint's answer to a poll: an error, a token, or anything else."""
    kind = draw(st.sampled_from(["error", "token", "garbage", "json", "form"]))
    if kind == "error":
        body: dict[str, Any] = {"error": draw(error_codes)}
        if draw(st.booleans()):
            body["interval"] = draw(loose_numbers)
        if draw(st.booleans()):
            body["error_description"] = draw(_any_json)
        return json.dumps(body, allow_nan=True).encode()
    if kind == "token":
        token: dict[str, Any] = {
            "access_token": draw(st.one_of(st.just("at"), _any_json)),
            "token_type": draw(st.sampled_from(["Bearer", "bearer", "mac", 7])),
        }
        if draw(st.booleans()):
            token["expires_in"] = draw(loose_numbers)
        if draw(st.booleans()):
            token["refresh_token"] = draw(st.one_of(st.just("rt"), _any_json))
        return json.dumps(token, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(_any_json), allow_nan=True).encode()
    if kind == "form":
        return b"error=" + draw(error_codes).encode() + b"&interval=" + draw(st.binary(max_size=5))
    return draw(st.binary(max_size=40))


@st.composite
def poll_answers(draw: st.DrawFn) -> Response:
    """A token endpoint's answer to a poll: any status, content type, Retry-After and body."""
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
    return Response(status=status, headers=headers, body=draw(_poll_bodies()))


#: What a polling client may meet, in order: answers, and failures to get one.
poll_inputs = st.lists(
    st.one_of(
        poll_answers(),
        st.builds(TransportError, st.just("boom"), retryable=st.booleans()),
    ),
    max_size=40,
)

#: A device authorization answer (RFC 8628 3.2) with any lifetime and any interval.
code_bodies = st.fixed_dictionaries(
    {
        "device_code": st.just("dc"),
        "user_code": st.just("ABCD-EFGH"),
        "verification_uri": st.just("https://idp.example/device"),
        "expires_in": st.one_of(st.integers(1, 2000), st.just("900")),
    },
    optional={"interval": loose_numbers},
)
