"""Hypothesis strategies for raw server answers: status, headers and body, per endpoint.

Bodies are drawn from a mix: a valid answer for the endpoint with fields dropped, retyped or
replaced by hostile values (so the fuzzer reaches deep into validation), JSON of any shape,
form data, truncated or duplicated JSON, deep nesting, and plain bytes.

These stay here rather than in tests/strategies.py: they exist to break parsers (hostile strings,
numbers past float range, JSON nested 3,000 deep, 5,000-character fields) and are only fit to
run under the fuzz profiles below, which lift Hypothesis' limits on data size. They build on the
shared ``json_values`` and ``error_codes``.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import strategies
from deviceflow import Response

__all__ = ["FUZZ", "FUZZ_EXAMPLES", "responses"]

#: DEVICEFLOW_FUZZ=1 (the ``fuzz`` nox session) runs 10,000 examples per test; the normal test
#: run a few hundred in all.
settings.register_profile(
    "deviceflow-fuzz-quick",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deviceflow-fuzz",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_FULL = os.environ.get("DEVICEFLOW_FUZZ") == "1"
_PROFILE = "deviceflow-fuzz" if _FULL else "deviceflow-fuzz-quick"
#: Apply to each fuzz test (not loaded globally: other property tests keep their own settings).
FUZZ = settings(settings.get_profile(_PROFILE))
FUZZ_EXAMPLES = FUZZ.max_examples

IDP = "https://idp.example"

HOSTILE_STRINGS = [
    "",
    " ",
    "5",
    "-1",
    "0",
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "javascript:alert(1)",
    "data:text/html,x",
    "file:///etc/passwd",
    "http://evil.example/x",
    "//evil.example",
    "https://idp.example/\r\nx",
    IDP,
    IDP + "/",
    IDP + "/device",
    "http://127.0.0.1:1/x",
    "Bearer",
    "bearer",
    "mac",
    "DPoP",
    "authorization_pending",
    "slow_down",
    "access_denied",
    "authorization_declined",
    "expired_token",
    "invalid_grant",
    "invalid_client",
    "server_error",
    "temporarily_unavailable",
    "\x00",
    "\u202e",
    "\ud7ff",
]
#: Long strings, built on demand (their repr would flood hypothesis' statistics).
long_strings = st.builds(
    lambda text, n: text * n,
    st.sampled_from(["9", "x", "https://" + "a"]),
    st.integers(300, 5000),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([10**400, -(10**400), 2**1100]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(HOSTILE_STRINGS),
    long_strings,
)
json_values = strategies.json_values(scalars)

VALID: dict[str, dict[str, Any]] = {
    "discovery": {
        "issuer": IDP,
        "device_authorization_endpoint": IDP + "/device",
        "token_endpoint": IDP + "/token",
        "revocation_endpoint": IDP + "/revoke",
    },
    "device": {
        "device_code": "fuzz-device-code",
        "user_code": "WDJB-MJHT",
        "verification_uri": IDP + "/verify",
        "verification_uri_complete": IDP + "/verify?user_code=WDJB-MJHT",
        "verification_url": IDP + "/verify",
        "expires_in": 600,
        "interval": 5,
        "message": "Go to the link and enter the code",
    },
    "token": {
        "access_token": "fuzz-access-token",
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "fuzz-refresh-token",
        "scope": "openid",
        "id_token": "fuzz-id-token",
    },
    "error": {
        "error": "authorization_pending",
        "error_description": "wait",
        "error_uri": IDP + "/help",
        "interval": 5,
    },
    "revocation": {},
}
#: Which answers each endpoint may get (an error body fits every endpoint).
SHAPES = {
    "discovery": ["discovery", "error"],
    "device": ["device", "error"],
    "token": ["token", "error"],
    "revocation": ["revocation", "error"],
}


@st.composite
def field_dicts(draw: st.DrawFn, endpoint: str) -> dict[str, Any]:
    """A valid answer for ``endpoint`` with some fields dropped, retyped or replaced."""
    shape = draw(st.sampled_from(SHAPES[endpoint]))
    fields = dict(VALID[shape])
    if shape == "error":
        fields["error"] = draw(strategies.error_codes)
    for name in list(fields):
        action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "replace", "hostile"]))
        if action == "drop":
            del fields[name]
        elif action == "replace":
            fields[name] = draw(json_values)
        elif action == "hostile":
            fields[name] = draw(st.sampled_from(HOSTILE_STRINGS) | long_strings)
    extra = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2))
    return {**extra, **fields}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def bodies(draw: st.DrawFn, endpoint: str) -> bytes:
    """A raw body an endpoint might get, from plausible to absurd."""
    kind = draw(
        st.sampled_from(
            [
                "fields",
                "fields",
                "fields",
                "form",
                "duplicate",
                "truncated",
                "json",
                "nested",
                "bytes",
                "text",
            ]
        )
    )
    if kind == "fields":
        return _dumps(draw(field_dicts(endpoint)))
    if kind == "form":
        fields = draw(field_dicts(endpoint))
        pairs = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()]
        return urllib.parse.urlencode(pairs).encode()
    if kind == "duplicate":
        fields = draw(field_dicts(endpoint))
        name = draw(st.sampled_from(sorted(fields) or ["x"]))
        text = _dumps(fields)
        return text[:-1] + b", " + _dumps(name) + b": " + _dumps(draw(json_values)) + b"}"
    if kind == "truncated":
        text = _dumps(draw(field_dicts(endpoint)))
        return text[: draw(st.integers(0, len(text)))]
    if kind == "json":
        return _dumps(draw(json_values))
    if kind == "nested":
        depth = draw(st.integers(1, 3_000))  # json gives up at about 1,000
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        return opener * depth
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded",
            "text/html",
            "text/plain",
            "application/problem+json",
            "",
        ]
    ),
    st.text(max_size=30),
)
RETRY_AFTER = st.one_of(
    st.sampled_from(
        [
            "0",
            "5",
            "-5",
            "1e999",
            "NaN",
            "99999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wed, 99 Foo 2015 99:99:99 GMT",
            "Wed, 21 Oct 2015 07:28:00 +9999",
        ]
    ),
    st.text(max_size=40),
)
STATUSES = st.one_of(
    st.sampled_from([200, 200, 200, 201, 204, 302, 400, 401, 403, 404, 408, 428, 429, 500, 503]),
    st.integers(100, 599),
)


@st.composite
def responses(draw: st.DrawFn, endpoint: str) -> Response:
    """A raw HTTP answer for ``endpoint``: status, lower-case headers and body."""
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["content-type"] = draw(CONTENT_TYPES)
    if draw(st.integers(0, 3)) == 0:
        headers["retry-after"] = draw(RETRY_AFTER)
    for name, value in draw(
        st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=30), max_size=2)
    ).items():
        headers.setdefault(name.lower(), value)
    return Response(status=draw(STATUSES), headers=headers, body=draw(bodies(endpoint)))
