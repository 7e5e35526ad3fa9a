"""Hostile values in every field of every answer: wrong types, absurd numbers, unsafe links."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from hostile_flows import (
    BOUND,
    UNSAFE_LINKS,
    expired_token,
    explicit_provider,
    final_error,
    flow_events,
    links_are_safe,
    typed_error,
)
from hostile_server import DISCOVERY, HostileServer, answer

from deviceflow import (
    AccessDeniedError,
    DeviceFlowClient,
    DiscoveryError,
    ExpiredTokenError,
    FlowEvent,
    FlowState,
    InsecureEndpointError,
    ProtocolError,
    Provider,
    Token,
)
from deviceflow._parse import MAX_CODE_LIFETIME, MAX_TOKEN_LIFETIME, parse_token
from deviceflow.testing import VirtualClock

WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
#: A token answer every field of which is right (RFC 6749 5.1).
TOKEN: dict[str, Any] = {
    "access_token": "hostile-access-token",
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": "hostile-refresh-token",
    "scope": "openid",
    "id_token": "hostile-id-token",
}
#: JSON values of the wrong type for a string field (None: the field is sent as null).
NOT_STRINGS: list[Any] = [None, 5, 1.5, True, [], {"a": "b"}]
#: JSON values of the wrong type (or range) for a number of seconds.
NOT_SECONDS: list[Any] = [None, "soon", True, [], {"a": 1}, -5, "-5", "NaN", "1e999"]

ERROR = "error"
OK = "ok"


def _expect_string_field(required: bool) -> Callable[[Any], str]:
    """Required strings fail on any wrong value; optional ones accept null only."""
    return lambda value: ERROR if required or value is not None else OK


# What each field must do with a wrong value: fail with a typed error, or be tolerated where
# the RFC or DESIGN.md says so (interval: 5 s default, RFC 8628 3.2; message and
# error_description/error_uri: informational; revocation_endpoint: optional).
DEVICE_FIELDS: dict[str, tuple[list[Any], Callable[[Any], str]]] = {
    "device_code": (NOT_STRINGS, _expect_string_field(True)),
    "user_code": (NOT_STRINGS, _expect_string_field(True)),
    "verification_uri": (NOT_STRINGS, _expect_string_field(True)),
    "verification_uri_complete": (NOT_STRINGS, _expect_string_field(False)),
    "expires_in": (NOT_SECONDS, lambda value: ERROR),
    "interval": (NOT_SECONDS, lambda value: OK),
    "message": (NOT_STRINGS, lambda value: OK),
}
TOKEN_FIELDS: dict[str, tuple[list[Any], Callable[[Any], str]]] = {
    "access_token": (NOT_STRINGS, _expect_string_field(True)),
    "token_type": (NOT_STRINGS, _expect_string_field(True)),
    "expires_in": (NOT_SECONDS, lambda value: OK if value is None else ERROR),
    "refresh_token": (NOT_STRINGS, _expect_string_field(False)),
    # RFC 6749 3.3 scope is a string; a JSON list of strings is accepted too (joined).
    "scope": (
        [*NOT_STRINGS, [1, 2]],
        lambda value: OK if value is None or value == [] else ERROR,
    ),
    "id_token": (NOT_STRINGS, _expect_string_field(False)),
}
ERROR_FIELDS: dict[str, tuple[list[Any], Callable[[Any], str]]] = {
    "error": ([5, 1.5, True, [], {"a": "b"}, "", "x" * 300], lambda value: ERROR),
    "error_description": (NOT_STRINGS, lambda value: OK),
    "error_uri": ([*NOT_STRINGS, "javascript:alert(1)"], lambda value: OK),
}
DISCOVERY_FIELDS: dict[str, tuple[list[Any], Callable[[Any], str]]] = {
    "issuer": (NOT_STRINGS, lambda value: ERROR),
    "device_authorization_endpoint": (NOT_STRINGS, lambda value: ERROR),
    "token_endpoint": (NOT_STRINGS, lambda value: ERROR),
    "revocation_endpoint": (NOT_STRINGS, lambda value: OK),
}


def _cases(
    table: dict[str, tuple[list[Any], Callable[[Any], str]]],
) -> list[Any]:
    return [
        pytest.param(field, value, expect(value), id=f"{field}={value!r}"[:60])
        for field, (values, expect) in table.items()
        for value in values
    ]


def _with(document: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """``document`` with ``field`` set to ``value`` (JSON null when value is None)."""
    return {**document, field: value}


async def _granted_or_error(client: DeviceFlowClient, expect: str) -> list[FlowEvent]:
    events = await flow_events(client)
    if expect == ERROR:
        error = final_error(events)
        assert isinstance(error, (ProtocolError, DiscoveryError)), repr(error)
    else:
        assert FlowState.GRANTED == events[-1].state, events[-1]
    return events


@pytest.mark.parametrize(("field", "value", "expect"), _cases(DEVICE_FIELDS))
async def test_device_authorization_field_of_wrong_type(
    field: str,
    value: Any,
    expect: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    shown: Any,
) -> None:
    """A wrong device authorization field fails typed, or is tolerated where the RFC says."""
    hostile.on("/device", answer(_with(hostile.code(), field, value)))
    hostile.on("/token", answer(TOKEN))
    async with make_client(provider=explicit_provider(hostile)) as client:
        events = await _granted_or_error(client, expect)
    assert links_are_safe([event.code for event in events if event.code is not None])


@pytest.mark.parametrize(("field", "value", "expect"), _cases(TOKEN_FIELDS))
async def test_token_field_of_wrong_type(
    field: str,
    value: Any,
    expect: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """A wrong field in the token answer to a poll fails typed, or is tolerated when optional."""
    hostile.on("/token", answer(_with(TOKEN, field, value)))
    async with make_client(provider=explicit_provider(hostile)) as client:
        await _granted_or_error(client, expect)


@pytest.mark.parametrize(("field", "value", "expect"), _cases(TOKEN_FIELDS))
async def test_refresh_field_of_wrong_type(
    field: str,
    value: Any,
    expect: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """A wrong field in a refresh answer raises typed; a null refresh_token keeps the old one."""
    hostile.on("/token", answer(_with(TOKEN, field, value)))
    async with make_client(provider=explicit_provider(hostile), on_code=None) as client:
        await client.save_token("hostile", expired_token())
        if expect == ERROR:
            error, _ = await typed_error(client.get_token("hostile"))
            assert isinstance(error, ProtocolError), repr(error)
            return
        with anyio.fail_after(BOUND):
            token = await client.get_token("hostile")
    if field == "refresh_token":
        assert "stored-refresh-token" == token.refresh_token  # RFC 6749 6: keep the old one


@pytest.mark.parametrize(("field", "value", "expect"), _cases(ERROR_FIELDS))
async def test_error_field_of_wrong_type(
    field: str,
    value: Any,
    expect: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """A wrong ``error`` is a ProtocolError; wrong description or uri still give the denial."""
    body = _with({"error": "access_denied", "error_description": "no"}, field, value)
    hostile.on("/token", answer(body, status=400))
    async with make_client(provider=explicit_provider(hostile)) as client:
        error = final_error(await flow_events(client))
    if expect == ERROR:
        assert isinstance(error, ProtocolError)
    else:
        assert isinstance(error, AccessDeniedError)


@pytest.mark.parametrize(("field", "value", "expect"), _cases(DISCOVERY_FIELDS))
async def test_discovery_field_of_wrong_type(
    field: str,
    value: Any,
    expect: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """A wrong discovery field is a DiscoveryError; a wrong revocation_endpoint is dropped."""
    hostile.on(DISCOVERY, answer(_with(hostile.metadata(), field, value)))
    hostile.on("/token", answer(TOKEN))
    async with make_client() as client:
        await _granted_or_error(client, expect)


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [-1, 0, "-1", "1e999", "NaN", -(10**400)])
async def test_negative_or_absurd_interval_means_five_seconds(
    interval: Any,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """Negative, zero, infinite or NaN intervals poll every 5 s (RFC 8628 3.2 default)."""
    polls: list[float] = []
    pending = answer({"error": "authorization_pending"}, status=400)

    async def token(request: Any) -> Any:
        polls.append(virtual_clock.monotonic())
        return await pending(request)

    hostile.on("/device", answer(hostile.code(interval=interval, expires_in=30)))
    hostile.on("/token", token)
    async with make_client(provider=explicit_provider(hostile)) as client:
        error = final_error(await flow_events(client))
    assert isinstance(error, ExpiredTokenError)
    # 5 s plus the client's default poll margin of 0.1 s.
    assert [5.1] * (len(polls) - 1) == [round(b - a, 3) for a, b in itertools.pairwise(polls)]


@pytest.mark.parametrize("interval", [10**9, 1e308, 2**70, "1e300"])
async def test_huge_interval_ends_without_polling(
    interval: Any, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """An interval longer than the code's life ends the flow at once: no poll, no wait."""
    hostile.on("/device", answer(hostile.code(interval=interval)))
    async with make_client(provider=explicit_provider(hostile)) as client:
        error = final_error(await flow_events(client))
    assert isinstance(error, ExpiredTokenError)
    assert 0 == hostile.count("/token")


@pytest.mark.parametrize("expires_in", [-1, 0, "0", -(2**70), 2**1100, "1e999", "NaN"])
async def test_negative_or_unusable_code_lifetime_is_refused(
    expires_in: Any, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A device code whose expires_in is not a positive finite number is a ProtocolError."""
    hostile.on("/device", answer(hostile.code(expires_in=expires_in)))
    async with make_client(provider=explicit_provider(hostile)) as client:
        error = final_error(await flow_events(client))
    assert isinstance(error, ProtocolError)
    assert 0 == hostile.count("/token")


@pytest.mark.parametrize("expires_in", [10**9, 1e308, "1e300"])
async def test_huge_code_lifetime_is_capped(
    expires_in: Any,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """A device code claiming to live for ages is kept at most 24 hours."""
    hostile.on("/device", answer(hostile.code(expires_in=expires_in)))
    hostile.on("/token", answer({"error": "access_denied"}, status=400))
    async with make_client(provider=explicit_provider(hostile)) as client:
        events = await flow_events(client)
    code = events[-1].code
    assert code is not None
    assert code.expires_at - virtual_clock.wall() <= timedelta(seconds=MAX_CODE_LIFETIME)


@pytest.mark.parametrize(("expires_in", "usable"), [(-1, False), (1e308, True), (2**1100, False)])
async def test_token_lifetime_negative_or_huge(
    expires_in: Any,
    usable: bool,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    virtual_clock: VirtualClock,
) -> None:
    """A negative token lifetime is refused; a huge one is capped at ten years."""
    hostile.on("/token", answer(_with(TOKEN, "expires_in", expires_in)))
    async with make_client(provider=explicit_provider(hostile)) as client:
        events = await flow_events(client)
    if not usable:
        assert isinstance(final_error(events), ProtocolError)
        return
    token = events[-1].token
    assert isinstance(token, Token)
    assert token.expires_at is not None
    assert token.expires_at - virtual_clock.wall() <= timedelta(seconds=MAX_TOKEN_LIFETIME)


# --- links ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["verification_uri", "verification_uri_complete"])
@pytest.mark.parametrize("link", UNSAFE_LINKS)
async def test_unsafe_verification_link_is_never_shown(
    field: str,
    link: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    shown: Any,
) -> None:
    """A code whose link is not https (or loopback http) is refused before anyone sees it."""
    hostile.on("/device", answer(hostile.code(**{field: link})))
    async with make_client(provider=explicit_provider(hostile)) as client:
        events = await flow_events(client)
        error, _ = await typed_error(client.get_token())
    assert isinstance(final_error(events), (ProtocolError, InsecureEndpointError))
    assert isinstance(error, (ProtocolError, InsecureEndpointError))
    assert [] == shown.codes  # on_code (get_token) was never asked to show it
    assert all(event.code is None for event in events)  # nor did authorize() yield it
    assert 0 == hostile.count("/token")


@pytest.mark.parametrize(
    "link",
    [
        "https://example.com/device",
        "HTTPS://EXAMPLE.COM/",
        "http://127.0.0.1:1/v",
        "http://[::1]/v",
    ],
)
async def test_safe_verification_links_are_shown(
    link: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
    shown: Any,
) -> None:
    """https links, and http ones to loopback, reach on_code unchanged."""
    hostile.on("/device", answer(hostile.code(verification_uri_complete=link)))
    hostile.on("/token", answer(TOKEN))
    async with make_client(provider=explicit_provider(hostile)) as client:
        with anyio.fail_after(BOUND):
            token = await client.get_token()  # on_code is called from get_token()
    assert isinstance(token, Token)
    assert [link] == [code.link for code in shown.codes]


# --- token_type and issuer --------------------------------------------------------------------


@pytest.mark.parametrize("token_type", ["mac", "DPoP", "N_A", "Bearer2", "bearer ", "Basic", ""])
async def test_token_type_other_than_bearer_is_refused(
    token_type: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A token whose type is not Bearer is never used: the poll and the refresh both fail."""
    hostile.on("/token", answer({**TOKEN, "token_type": token_type}))
    async with make_client(provider=explicit_provider(hostile), on_code=None) as client:
        error = final_error(await flow_events(client))
        assert isinstance(error, ProtocolError)
        await client.save_token("refresh", expired_token())
        error, _ = await typed_error(client.get_token("refresh"))
        assert isinstance(error, ProtocolError)


async def test_token_type_is_case_insensitive(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """RFC 6749 5.1: ``BEARER`` is Bearer."""
    hostile.on("/token", answer({**TOKEN, "token_type": "BEARER"}))
    async with make_client(provider=explicit_provider(hostile)) as client:
        events = await flow_events(client)
    assert events[-1].token is not None
    assert "Bearer" == events[-1].token.token_type


#: Access tokens outside RFC 6750's b64token: each could inject or split a header.
NOT_B64TOKENS = [
    "at\r\nX-Injected: yes",
    "at\n",
    "at\x00",
    "a t",
    " at",
    "at\t",
    "tok\u00e9n",
    "\u202eat",
    "=abc",
    "a=b",
    "tok;en",
    '"at"',
    "at,bt",
]


@pytest.mark.parametrize("access_token", NOT_B64TOKENS)
async def test_access_token_outside_b64token_is_refused(
    access_token: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """An access token that is not an RFC 6750 b64token is never returned: poll and refresh."""
    hostile.on("/token", answer({**TOKEN, "access_token": access_token}))
    async with make_client(provider=explicit_provider(hostile), on_code=None) as client:
        error = final_error(await flow_events(client))
        assert isinstance(error, ProtocolError)
        assert "b64token" in str(error)
        await client.save_token("refresh", expired_token())
        error, _ = await typed_error(client.get_token("refresh"))
        assert isinstance(error, ProtocolError)


@pytest.mark.parametrize(
    "access_token",
    [
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln-_",
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",
        "abc+/def==",
        "a~b.c-d_e",
        "x",
    ],
)
async def test_access_token_in_b64token_syntax_is_used(
    access_token: str, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """JWTs, GitHub tokens and base64 with padding are b64tokens: granted and sent as they are."""
    hostile.on("/token", answer({**TOKEN, "access_token": access_token}))
    async with make_client(provider=explicit_provider(hostile)) as client:
        events = await flow_events(client)
    assert events[-1].token is not None
    assert f"Bearer {access_token}" == events[-1].token.authorization


@pytest.mark.parametrize("access_token", NOT_B64TOKENS)
def test_token_outside_b64token_never_becomes_a_header(access_token: str) -> None:
    """A token stored or saved by other means is not put into an Authorization header either."""
    with pytest.raises(ProtocolError, match="b64token"):
        _ = Token(access_token=access_token).authorization


def test_refresh_of_another_token_type_is_refused() -> None:
    """A refresh must give a token of the grant's type: Bearer for a DPoP grant is refused."""
    from deviceflow._dpop import DPoPKey, check_token_type

    grant = Token(
        access_token="dpop-bound",
        token_type="DPoP",
        refresh_token="rt",
        dpop_key=DPoPKey.generate(),
    )
    answered = parse_token(TOKEN, WALL, previous=grant)  # read, so the refresh token is kept
    with pytest.raises(ProtocolError, match="type"):
        check_token_type(answered, grant.dpop_key, "svc", previous=grant)


@pytest.mark.parametrize(
    "issuer",
    ["https://evil.example", "{url}/", "{url}/tenant", "{upper}", "", None, " {url}"],
)
async def test_discovery_issuer_that_does_not_match_is_refused(
    issuer: str | None, hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """OpenID Connect Discovery 4.3: a document naming another issuer is not used at all."""
    value = None if issuer is None else issuer.format(url=hostile.url, upper=hostile.url.upper())
    hostile.on(DISCOVERY, answer({**hostile.metadata(), "issuer": value}))
    async with make_client() as client:
        error = final_error(await flow_events(client))
    assert isinstance(error, DiscoveryError)
    assert 0 == hostile.count("/device")


@pytest.mark.parametrize("endpoint", ["device_authorization_endpoint", "token_endpoint"])
@pytest.mark.parametrize(
    "url", ["http://evil.example/x", "javascript:alert(1)", "file:///etc/passwd", "/relative"]
)
async def test_discovered_endpoint_that_is_not_https_is_refused(
    endpoint: str,
    url: str,
    hostile: HostileServer,
    make_client: Callable[..., DeviceFlowClient],
) -> None:
    """Discovered endpoints must be https (or loopback http): nothing is sent to others."""
    hostile.on(DISCOVERY, answer(hostile.metadata(**{endpoint: url})))
    async with make_client() as client:
        error = final_error(await flow_events(client))
    assert isinstance(error, (DiscoveryError, InsecureEndpointError))
    assert 0 == hostile.count("/device")


# --- endpoints given by hand, the rest discovered ---------------------------------------------


async def test_missing_device_endpoint_error_says_how_to_give_it(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """Metadata without a device endpoint: the error names it and how to pass it by hand."""
    hostile.on(DISCOVERY, answer(hostile.metadata(device_authorization_endpoint=None)))
    async with make_client() as client:
        error = final_error(await flow_events(client))
    assert isinstance(error, DiscoveryError)
    assert "no device_authorization_endpoint" in str(error)
    assert "Provider.discover(issuer, device_authorization_endpoint=...)" in str(error)
    assert "does not offer" not in str(error)
    with pytest.raises(DiscoveryError, match=r"Provider\(issuer=\.\.\., device_authoriz"):
        await Provider.discover(hostile.url)


async def test_discover_keeps_a_device_endpoint_given_by_hand(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """Provider.discover(X, device_authorization_endpoint=Y) uses Y and discovers the rest."""
    hostile.on(DISCOVERY, answer(hostile.metadata(device_authorization_endpoint=None)))
    hostile.on("/by-hand/device", answer(hostile.code()))
    hostile.on("/token", answer(TOKEN))
    given = hostile.url + "/by-hand/device"
    provider = await Provider.discover(hostile.url, device_authorization_endpoint=given)
    assert (given, hostile.url + "/token") == (
        provider.device_authorization_endpoint,
        provider.token_endpoint,
    )
    async with make_client(provider=provider) as client:
        events = await flow_events(client)
    assert FlowState.GRANTED is events[-1].state
    assert (1, 0) == (hostile.count("/by-hand/device"), hostile.count("/device"))


async def test_endpoints_given_by_hand_win_over_discovered_ones(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """A token endpoint given by hand is used even where the metadata names another one."""
    hostile.on("/by-hand/token", answer(TOKEN))
    given = hostile.url + "/by-hand/token"
    provider = await Provider.discover(hostile.url, token_endpoint=given)
    assert given == provider.token_endpoint
    async with make_client(provider=provider) as client:
        await client.save_token("refresh", expired_token())
        token = await client.get_token("refresh")
    assert "hostile-access-token" == token.access_token
    assert (1, 0) == (hostile.count("/by-hand/token"), hostile.count("/token"))


async def test_half_specified_provider_refreshes_with_the_discovered_rest(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """Provider(issuer=X, device_authorization_endpoint=Y): a refresh discovers the rest."""
    hostile.on(DISCOVERY, answer(hostile.metadata(device_authorization_endpoint=None)))
    hostile.on("/token", answer(TOKEN))
    provider = Provider(issuer=hostile.url, device_authorization_endpoint=hostile.url + "/x")
    async with make_client(provider=provider) as client:
        await client.save_token("refresh", expired_token())
        token = await client.get_token("refresh")
    assert "hostile-access-token" == token.access_token


async def test_half_specified_provider_runs_the_device_flow(
    hostile: HostileServer, make_client: Callable[..., DeviceFlowClient]
) -> None:
    """Provider(issuer=X, device_authorization_endpoint=Y): the flow uses Y, discovers the rest."""
    hostile.on(DISCOVERY, answer(hostile.metadata(device_authorization_endpoint=None)))
    hostile.on("/by-hand/device", answer(hostile.code()))
    hostile.on("/token", answer(TOKEN))
    provider = Provider(
        issuer=hostile.url, device_authorization_endpoint=hostile.url + "/by-hand/device"
    )
    async with make_client(provider=provider) as client:
        events = await flow_events(client)
    assert FlowState.GRANTED is events[-1].state
    assert 1 == hostile.count("/by-hand/device")
