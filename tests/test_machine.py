"""The sans-IO state machine, driven directly through its inputs and outputs."""

# mypy narrows ``m.state`` at the first comparison and would call later ones unreachable.
# mypy: disable-error-code="comparison-overlap,unreachable"

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from deviceflow import (
    AccessDeniedError,
    DeviceFlowError,
    Dialect,
    DiscoveryError,
    ExpiredTokenError,
    FlowState,
    InsecureEndpointError,
    InvalidClientError,
    OAuthError,
    ProtocolError,
    ProviderMetadata,
    RequestKind,
    Response,
    TransportError,
)
from deviceflow._machine import (
    TRANSITIONS,
    Action,
    DeviceFlowMachine,
    Done,
    Fail,
    Send,
    Signal,
)
from deviceflow._parse import parse_body, parse_interval, parse_metadata
from deviceflow._urls import discovery_urls, is_loopback_host, require_secure_url
from helpers import DEVICE_GRANT

WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
META = ProviderMetadata(
    issuer="https://idp.example",
    device_authorization_endpoint="https://idp.example/device",
    token_endpoint="https://idp.example/token",
)
CODE = {
    "device_code": "dc-secret",
    "user_code": "WDJB-MJHT",
    "verification_uri": "https://idp.example/device",
    "expires_in": 600,
    "interval": 5,
}


def resp(
    status: int = 200,
    body: Mapping[str, Any] | None = None,
    *,
    form: bool = False,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
) -> Response:
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if raw is not None:
        return Response(status=status, headers=hdrs, body=raw)
    if form:
        hdrs.setdefault("content-type", "application/x-www-form-urlencoded")
        data = urllib.parse.urlencode(body or {}).encode()
    else:
        hdrs.setdefault("content-type", "application/json")
        data = json.dumps(body or {}).encode()
    return Response(status=status, headers=hdrs, body=data)


def error(code: str, status: int = 400, **extra: Any) -> Response:
    return resp(status, {"error": code, **extra})


def machine(**kwargs: Any) -> DeviceFlowMachine:
    kwargs.setdefault("metadata", META)
    return DeviceFlowMachine(client_id="cli", scope="openid offline_access", **kwargs)


def started(code: Mapping[str, Any] = CODE, **kwargs: Any) -> tuple[DeviceFlowMachine, Send]:
    m = machine(**kwargs)
    m.start(now=0.0, wall=WALL)
    action = m.receive_response(resp(200, code), now=0.0, wall=WALL)
    assert isinstance(action, Send)
    return m, action


TOKEN = {"access_token": "at-secret", "token_type": "Bearer", "expires_in": 3600}


def test_start_requests_a_device_code_with_client_id_and_scope() -> None:
    """RFC 8628 3.1: the first request is a POST of client_id and scope to the device endpoint."""
    m = machine()
    action = m.start(now=0.0, wall=WALL)
    assert isinstance(action, Send)
    assert RequestKind.DEVICE_AUTHORIZATION == action.request.kind
    assert "POST" == action.request.method
    assert {"client_id": "cli", "scope": "openid offline_access"} == dict(action.request.params)
    assert FlowState.REQUEST_CODE == m.state


def test_code_issued_schedules_first_poll_after_interval() -> None:
    """RFC 8628 3.4/3.5: the first poll waits one interval and carries the device code grant."""
    m, action = started(poll_margin=0.1)
    assert FlowState.PENDING == m.state
    assert pytest.approx(5.1) == action.at
    assert {
        "grant_type": DEVICE_GRANT,  # RFC 8628 3.4, as written in the RFC
        "device_code": "dc-secret",
        "client_id": "cli",
    } == dict(action.request.params)
    assert m.code is not None
    assert WALL + timedelta(seconds=600) == m.code.expires_at


@pytest.mark.parametrize("interval", [None, 0, "garbage", -3, "nan", float("inf"), [], True])
def test_interval_defaults_to_five_seconds(interval: Any) -> None:
    """RFC 8628 3.2: an absent, zero or non-numeric interval means 5 s."""
    code = {k: v for k, v in CODE.items() if k != "interval"}
    if interval is not None:
        code["interval"] = interval
    m, action = started(code, poll_margin=0.0)
    assert 5.0 == m.interval
    assert 5.0 == action.at


def test_numeric_strings_are_accepted() -> None:
    """Servers that send interval and expires_in as strings still work."""
    m, action = started({**CODE, "interval": "7", "expires_in": "900"}, poll_margin=0.0)
    assert 7.0 == action.at
    assert m.code is not None
    assert WALL + timedelta(seconds=900) == m.code.expires_at


def test_pending_waits_interval_then_grants() -> None:
    """authorization_pending keeps polling at the interval; a token ends the flow with Done."""
    m, _ = started(poll_margin=0.0)
    action: Action = m.receive_response(error("authorization_pending"), now=5.0, wall=WALL)
    assert isinstance(action, Send)
    assert 10.0 == action.at
    action = m.receive_response(resp(200, TOKEN), now=10.0, wall=WALL)
    assert isinstance(action, Done)
    assert "at-secret" == action.token.access_token
    assert WALL + timedelta(seconds=3600) == action.token.expires_at
    assert FlowState.GRANTED == m.state


def test_slow_down_adds_five_seconds_for_all_later_polls() -> None:
    """RFC 8628 3.5: slow_down grows the interval by 5 s, kept for every later poll."""
    m, _ = started(poll_margin=0.0)
    action = m.receive_response(error("slow_down"), now=5.0, wall=WALL)
    assert isinstance(action, Send)
    assert FlowState.SLOW_DOWN == m.state
    assert 15.0 == action.at
    action = m.receive_response(error("authorization_pending"), now=15.0, wall=WALL)
    assert isinstance(action, Send)
    assert FlowState.PENDING == m.state
    assert 25.0 == action.at
    action = m.receive_response(error("slow_down"), now=25.0, wall=WALL)
    assert isinstance(action, Send)
    assert 40.0 == action.at


def test_slow_down_with_larger_server_interval_uses_it() -> None:
    """GitHub's slow_down carries the new interval: max(interval + 5, server's) wins."""
    m, _ = started(poll_margin=0.0)
    action = m.receive_response(error("slow_down", interval=17), now=5.0, wall=WALL)
    assert isinstance(action, Send)
    assert 22.0 == action.at
    assert 17.0 == m.interval


def test_slow_down_with_smaller_server_interval_still_adds_five() -> None:
    """A server interval below interval + 5 does not undo the RFC's increase."""
    m, _ = started(poll_margin=0.0)
    m.receive_response(error("slow_down", interval=6), now=5.0, wall=WALL)
    assert 10.0 == m.interval


@pytest.mark.parametrize("status", [400, 200, 401, 403, 428])
def test_errors_are_parsed_whatever_the_status(status: int) -> None:
    """GitHub sends errors with 200, Google with 428 and 403: all are read as OAuth errors."""
    m, _ = started(poll_margin=0.0)
    action = m.receive_response(error("authorization_pending", status), now=5.0, wall=WALL)
    assert isinstance(action, Send)
    assert FlowState.PENDING == m.state


def test_form_encoded_answers_parse() -> None:
    """GitHub answers form-encoded unless asked for JSON; both parse the same."""
    m, _ = started(poll_margin=0.0)
    action = m.receive_response(
        resp(200, {"error": "authorization_pending"}, form=True), now=5.0, wall=WALL
    )
    assert isinstance(action, Send)
    action = m.receive_response(
        resp(200, {"access_token": "t", "token_type": "bearer", "scope": "repo"}, form=True),
        now=10.0,
        wall=WALL,
    )
    assert isinstance(action, Done)
    assert "Bearer" == action.token.token_type
    assert "repo" == action.token.scope


@pytest.mark.parametrize(
    ("code", "state", "exc"),
    [
        ("access_denied", FlowState.DENIED, AccessDeniedError),
        ("authorization_declined", FlowState.DENIED, AccessDeniedError),
        ("expired_token", FlowState.EXPIRED, ExpiredTokenError),
        ("code_expired", FlowState.EXPIRED, ExpiredTokenError),
        ("token_expired", FlowState.EXPIRED, ExpiredTokenError),
        ("invalid_client", FlowState.FAILED, InvalidClientError),
        ("unsupported_grant_type", FlowState.FAILED, OAuthError),
    ],
)
def test_terminal_errors(code: str, state: FlowState, exc: type[OAuthError]) -> None:
    """Denial, expiry and any other error end polling with a typed error (RFC 8628 3.5)."""
    m, _ = started()
    action = m.receive_response(
        error(code, error_description="why", error_uri="https://idp.example/e"),
        now=5.0,
        wall=WALL,
    )
    assert isinstance(action, Fail)
    assert state == m.state
    assert type(action.error) is exc
    assert "why" == action.error.description
    assert "https://idp.example/e" == action.error.uri
    assert 400 == action.error.status
    assert code == action.error.server_error


def test_provider_error_aliases_come_from_the_dialect() -> None:
    """A dialect maps a provider's own error code onto the RFC one."""
    m, _ = started(dialect=Dialect(error_aliases={"user_said_no": "access_denied"}))
    action = m.receive_response(error("user_said_no"), now=5.0, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, AccessDeniedError)


def test_extra_error_fields_are_kept() -> None:
    """Entra's error_codes stay on the error."""
    m, _ = started()
    action = m.receive_response(error("invalid_scope", error_codes=[70011]), now=5, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, OAuthError)
    assert [70011] == action.error.extra["error_codes"]


@pytest.mark.parametrize("state_input", ["granted", "denied"])
def test_no_input_accepted_after_a_terminal_state(state_input: str) -> None:
    """Never a poll after GRANTED (or any terminal state): further input is refused."""
    m, _ = started()
    final = resp(200, TOKEN) if state_input == "granted" else error("access_denied")
    m.receive_response(final, now=5.0, wall=WALL)
    with pytest.raises(ProtocolError):
        m.receive_response(error("authorization_pending"), now=10.0, wall=WALL)
    with pytest.raises(ProtocolError):
        m.receive_failure(TransportError("boom"), now=10.0, wall=WALL)


def test_transport_failures_back_off_exponentially_never_below_interval() -> None:
    """RFC 8628 3.5: connection failures back off exponentially from the current interval."""
    m, _ = started(poll_margin=0.0, max_backoff=60.0)
    times = []
    now = 5.0
    for _ in range(5):
        action = m.receive_failure(TransportError("reset"), now=now, wall=WALL)
        assert isinstance(action, Send)
        times.append(action.at - now)
        now = action.at
    assert [10.0, 20.0, 40.0, 60.0, 60.0] == times
    action = m.receive_response(error("authorization_pending"), now=now, wall=WALL)
    assert isinstance(action, Send)
    assert 5.0 == action.at - now


def test_backoff_keeps_the_slow_down_interval() -> None:
    """After slow_down, a network error never brings polling below the raised interval."""
    m, _ = started(poll_margin=0.0, max_backoff=5.0)
    m.receive_response(error("slow_down"), now=5.0, wall=WALL)
    # max_backoff below the raised interval: the interval still wins.
    action = m.receive_failure(TransportError("reset"), now=15.0, wall=WALL)
    assert isinstance(action, Send)
    assert 10.0 == action.at - 15.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_5xx_and_429_are_retried_honouring_retry_after(status: int) -> None:
    """A 5xx or 429 is retried; Retry-After (seconds) is honoured when longer than backoff."""
    m, _ = started(poll_margin=0.0)
    action = m.receive_response(
        resp(status, raw=b"<html>busy</html>", headers={"Retry-After": "42"}), now=5.0, wall=WALL
    )
    assert isinstance(action, Send)
    assert 47.0 == action.at


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date is honoured too."""
    m, _ = started(poll_margin=0.0)
    when = "Tue, 01 Jan 2030 00:00:30 GMT"
    action = m.receive_response(
        resp(503, {"error": "temporarily_unavailable"}, headers={"Retry-After": when}),
        now=5.0,
        wall=WALL,
    )
    assert isinstance(action, Send)
    assert 35.0 == action.at


def test_local_deadline_ends_the_flow() -> None:
    """The code's expires_in is a local deadline: no poll is scheduled past it."""
    m, _ = started({**CODE, "expires_in": 12}, poll_margin=0.0)
    action = m.receive_response(error("authorization_pending"), now=5.0, wall=WALL)
    assert isinstance(action, Send)
    action = m.receive_response(error("authorization_pending"), now=10.0, wall=WALL)
    assert isinstance(action, Fail)
    assert FlowState.EXPIRED == m.state
    assert isinstance(action.error, ExpiredTokenError)


def test_huge_retry_after_expires_instead_of_waiting() -> None:
    """A Retry-After beyond the code's life ends the flow at once, never a hang."""
    m, _ = started(poll_margin=0.0)
    action = m.receive_response(resp(503, headers={"Retry-After": "99999"}), now=5.0, wall=WALL)
    assert isinstance(action, Fail)
    assert FlowState.EXPIRED == m.state


def test_tls_failure_is_not_retried() -> None:
    """A failure that a retry cannot cure (TLS) ends the flow."""
    m, _ = started()
    action = m.receive_failure(TransportError("tls", retryable=False), now=5.0, wall=WALL)
    assert isinstance(action, Fail)
    assert FlowState.FAILED == m.state


def test_device_request_failures_retry_until_setup_timeout() -> None:
    """Failures before a code exists are retried with backoff, then give up with TransportError."""
    m = machine(setup_timeout=5.0)
    action = m.start(now=0.0, wall=WALL)
    now = 0.0
    while isinstance(action, Send):
        now = action.at
        action = m.receive_failure(TransportError("refused"), now=now, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, TransportError)
    assert FlowState.FAILED == m.state
    assert now <= 5.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**CODE, "verification_uri": "javascript:alert(1)"}, "scheme"),
        ({**CODE, "verification_uri_complete": "data:text/html,x"}, "scheme"),
        ({k: v for k, v in CODE.items() if k != "device_code"}, "device_code"),
        ({**CODE, "user_code": 42}, "user_code"),
        ({**CODE, "expires_in": "soon"}, "expires_in"),
        ({**CODE, "expires_in": -1}, "expires_in"),
    ],
)
def test_malformed_device_code_answers_fail_with_protocol_error(
    body: dict[str, Any], message: str
) -> None:
    """A device code answer with bad fields ends in FAILED with a ProtocolError naming them."""
    m = machine()
    m.start(now=0.0, wall=WALL)
    action = m.receive_response(resp(200, body), now=0.0, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, ProtocolError)
    assert message in str(action.error)
    assert FlowState.FAILED == m.state


def test_plain_http_verification_uri_is_refused() -> None:
    """A verification link that is plain http on a public host is never offered."""
    m = machine()
    m.start(now=0.0, wall=WALL)
    body = {**CODE, "verification_uri": "http://evil.example/device"}
    action = m.receive_response(resp(200, body), now=0.0, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, InsecureEndpointError)


def test_non_bearer_token_is_refused() -> None:
    """RFC 6749 7.1: a token of a type the client does not understand is not used."""
    m, _ = started()
    action = m.receive_response(resp(200, {**TOKEN, "token_type": "mac"}), now=5, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, ProtocolError)


def test_html_answer_is_a_protocol_error() -> None:
    """An HTML page where JSON was expected is a typed ProtocolError, not a crash."""
    m, _ = started()
    action = m.receive_response(
        resp(200, raw=b"<html>login</html>", headers={"content-type": "text/html"}),
        now=5,
        wall=WALL,
    )
    assert isinstance(action, Fail)
    assert isinstance(action.error, ProtocolError)


def test_redirect_is_not_followed() -> None:
    """A 3xx answer is an error: redirects to other hosts are never followed."""
    m, _ = started()
    action = m.receive_response(resp(302, headers={"Location": "https://evil"}), now=5, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, ProtocolError)


def test_unknown_fields_are_kept() -> None:
    """Unknown fields in answers are kept in ``extra``, never fatal (RFC 6749 5.1)."""
    m, _ = started({**CODE, "x_custom": 1})
    assert m.code is not None
    assert {"x_custom": 1} == dict(m.code.extra)
    action = m.receive_response(resp(200, {**TOKEN, "x_more": "y"}), now=5, wall=WALL)
    assert isinstance(action, Done)
    assert "y" == action.token.extra["x_more"]


def test_google_verification_url_alias() -> None:
    """Google's verification_url is read as verification_uri."""
    body = {k: v for k, v in CODE.items() if k != "verification_uri"}
    body["verification_url"] = "https://www.google.com/device"
    m, _ = started(body)
    assert m.code is not None
    assert "https://www.google.com/device" == m.code.verification_uri


def test_discovery_then_device_code() -> None:
    """Without metadata the machine discovers first, then requests a code (DISCOVER state)."""
    m = DeviceFlowMachine(client_id="cli", issuer="https://idp.example")
    action = m.start(now=0.0, wall=WALL)
    assert isinstance(action, Send)
    assert FlowState.DISCOVER == m.state
    assert "https://idp.example/.well-known/openid-configuration" == action.request.url
    action = m.receive_response(resp(404, raw=b""), now=0.0, wall=WALL)
    assert isinstance(action, Send)
    assert "https://idp.example/.well-known/oauth-authorization-server" == action.request.url
    doc = {
        "issuer": "https://idp.example",
        "device_authorization_endpoint": "https://idp.example/d",
        "token_endpoint": "https://idp.example/t",
    }
    action = m.receive_response(resp(200, doc), now=0.0, wall=WALL)
    assert isinstance(action, Send)
    assert FlowState.REQUEST_CODE == m.state
    assert "https://idp.example/d" == action.request.url


def test_discovery_issuer_mismatch_fails() -> None:
    """OpenID Connect Discovery 4.3: a document naming another issuer is not used."""
    m = DeviceFlowMachine(client_id="cli", issuer="https://idp.example")
    m.start(now=0.0, wall=WALL)
    doc = {
        "issuer": "https://evil.example",
        "device_authorization_endpoint": "https://evil.example/d",
        "token_endpoint": "https://evil.example/t",
    }
    action = m.receive_response(resp(200, doc), now=0.0, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, DiscoveryError)


def test_parse_metadata_names_the_missing_field() -> None:
    """A discovery document without the device endpoint is a DiscoveryError naming it."""
    with pytest.raises(DiscoveryError, match="device_authorization_endpoint"):
        parse_metadata(
            {"issuer": "https://a.example", "token_endpoint": "https://a.example/t"},
            expected_issuer="https://a.example",
        )


def test_parse_metadata_opt_out_of_issuer_check() -> None:
    """check_issuer=False accepts a document whose issuer differs."""
    meta = parse_metadata(
        {
            "issuer": "https://other.example",
            "device_authorization_endpoint": "https://a.example/d",
            "token_endpoint": "https://a.example/t",
        },
        expected_issuer="https://a.example",
        check_issuer=False,
    )
    assert "https://a.example/t" == meta.token_endpoint


def test_discovery_urls_follow_rfc8414_path_insertion() -> None:
    """RFC 8414 3: the well-known suffix goes before the issuer's path."""
    assert [
        "https://h.example/tenant/v2.0/.well-known/openid-configuration",
        "https://h.example/.well-known/oauth-authorization-server/tenant/v2.0",
    ] == discovery_urls("https://h.example/tenant/v2.0")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://127.255.0.9/x",
        "http://localhost/x",
        "http://LocalHost:1/x",
        "http://[::1]:1/x",
        "https://a.example/",
        "https://evil.localhost/x",
    ],
)
def test_secure_urls_accepted(url: str) -> None:
    """https anywhere, plain http only on loopback hosts."""
    assert url == require_secure_url(url, "endpoint")


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.localhost/x",
        "http://localhost.localhost:8080/x",
        "http://LOCALHOST.evil.example/x",
        "http://localhost./x",
        "http://127.0.0.1.nip.io/x",
        "http://127.1/x",
        "http://[::2]/x",
        "http://0.0.0.0/x",
    ],
)
def test_plain_http_only_to_localhost_and_literal_loopback_addresses(url: str) -> None:
    """Names other than localhost itself (``*.localhost`` too) are not loopback: no plain http."""
    with pytest.raises(InsecureEndpointError):
        require_secure_url(url, "endpoint")


def test_endpoints_given_by_hand_win_and_discovery_fills_in_the_rest() -> None:
    """A machine given a device endpoint uses it; the token endpoint comes from discovery."""
    machine = DeviceFlowMachine(
        client_id="c",
        issuer="https://idp.example",
        endpoints={"device_authorization_endpoint": "https://idp.example/by-hand"},
    )
    machine.start(now=0.0, wall=WALL)
    document = {
        "issuer": "https://idp.example",
        "device_authorization_endpoint": "https://idp.example/listed",
        "token_endpoint": "https://idp.example/token",
    }
    action = machine.receive_response(resp(200, document), now=0.0, wall=WALL)
    assert isinstance(action, Send)
    assert "https://idp.example/by-hand" == action.request.url
    assert machine.metadata is not None
    assert "https://idp.example/token" == machine.metadata.token_endpoint


def test_metadata_without_device_endpoint_names_it_and_how_to_give_it() -> None:
    """No device endpoint listed: DiscoveryError naming it and Provider's argument for it."""
    document = {"issuer": "https://idp.example", "token_endpoint": "https://idp.example/t"}
    with pytest.raises(DiscoveryError) as caught:
        parse_metadata(document, expected_issuer="https://idp.example")
    assert "no device_authorization_endpoint" in str(caught.value)
    assert "device_authorization_endpoint=..." in str(caught.value)
    given = {"device_authorization_endpoint": "https://idp.example/d"}
    metadata = parse_metadata(document, expected_issuer="https://idp.example", given=given)
    assert ("https://idp.example/d", "https://idp.example/t") == (
        metadata.device_authorization_endpoint,
        metadata.token_endpoint,
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("evil.localhost", False),
        ("localhost.", False),
        ("[::2]", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_hosts_are_localhost_and_loopback_addresses(
    host: str | None, expected: bool
) -> None:
    """is_loopback_host: localhost itself and literal loopback addresses, bracketed or not."""
    assert expected == is_loopback_host(host)


def test_parse_body_rejects_deep_json() -> None:
    """Deeply nested JSON is a ProtocolError, not a RecursionError."""
    deep = b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ProtocolError):
        parse_body(Response(status=200, headers={"content-type": "application/json"}, body=deep))


def test_parse_interval_accepts_floats() -> None:
    """Fractional intervals are kept as they are."""
    assert 2.5 == parse_interval("2.5")


def test_every_nonterminal_state_has_an_error_row() -> None:
    """The table sends every live state to FAILED on ERROR and has no rows for terminal ones."""
    for state in FlowState:
        if state.is_terminal:
            assert state not in TRANSITIONS
        else:
            assert FlowState.FAILED == TRANSITIONS[state][Signal.ERROR]


def test_internal_error_poisons_the_machine() -> None:
    """A bug inside the machine turns into FAILED with a ProtocolError, and it refuses input."""
    m, _ = started()

    class Exploding(Response):
        def header(self, name: str) -> str | None:
            raise KeyError(name)

    action = m.receive_response(Exploding(status=200, body=b"{}"), now=5.0, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, DeviceFlowError)
    assert FlowState.FAILED == m.state
    with pytest.raises(ProtocolError):
        m.receive_response(error("authorization_pending"), now=10.0, wall=WALL)
