"""Client-side rules of RFC 8628, RFC 6749, OpenID Connect Discovery and RFC 8414.

docs/conformance.md lists every MUST and SHOULD with the tests that check it; this module holds
the checks no other test made. Each test names its rule. Machine tests feed the sans-IO machine
directly; the others run the real client against the built-in server on a virtual clock and
read the server's request log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any

import pytest

from deviceflow import (
    ClientAuth,
    DeviceCode,
    DeviceFlowClient,
    DiscoveryError,
    ExpiredTokenError,
    FlowState,
    OAuthError,
    ProtocolError,
    Provider,
    ProviderMetadata,
    ReauthorizationRequiredError,
    Response,
    TransportError,
)
from deviceflow._machine import DeviceFlowMachine, Done, Fail, Send
from deviceflow._urls import discovery_urls
from deviceflow.testing import AuthorizationServer, Fault, RecordedRequest, VirtualClock
from helpers import DEVICE_GRANT

WALL = datetime(2030, 1, 1, tzinfo=timezone.utc)
META = ProviderMetadata(
    issuer=None,
    device_authorization_endpoint="https://idp.example/device",
    token_endpoint="https://idp.example/token",
)
CODE = {
    "device_code": "dc",
    "user_code": "WDJB-MJHT",
    "verification_uri": "https://idp.example/go",
    "expires_in": 600,
    "interval": 5,
}


def answer(status: int, body: Mapping[str, Any]) -> Response:
    return Response(
        status=status,
        headers={"content-type": "application/json"},
        body=json.dumps(body).encode(),
    )


def polling_machine() -> tuple[DeviceFlowMachine, Send]:
    machine = DeviceFlowMachine(client_id="cli", metadata=META, poll_margin=0.0)
    machine.start(now=0.0, wall=WALL)
    action = machine.receive_response(answer(200, CODE), now=0.0, wall=WALL)
    assert isinstance(action, Send)
    return machine, action


def ignore_code(code: DeviceCode, account: str) -> None:
    """An on_code for flows the server approves by itself."""


def requests_to(server: AuthorizationServer, endpoint: str) -> list[RecordedRequest]:
    return [r for r in server.requests if r.endpoint == endpoint]


@pytest.fixture
async def confidential(virtual_clock: VirtualClock) -> AsyncIterator[AuthorizationServer]:
    async with AuthorizationServer(
        clock=virtual_clock,
        clients={"conf id:1": "s3 cr:et&%é"},
        auto_approve_after=0,
    ) as server:
        yield server


# --- RFC 8628 3.1 ---------------------------------------------------------------------------


@pytest.mark.authorization_server(auto_approve_after=0)
async def test_device_authorization_request_is_a_form_post(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """RFC 8628 3.1: a form-encoded POST with client_id and scope to the device endpoint."""
    provider = Provider(issuer=authorization_server.issuer)
    async with DeviceFlowClient(
        provider, client_id="cli", scope="openid offline_access", clock=virtual_clock
    ) as client:
        async for _ in client.authorize():
            pass
    [request] = requests_to(authorization_server, "device")
    assert "POST" == request.method
    content_type = request.headers["Content-Type"].split(";")[0]
    assert "application/x-www-form-urlencoded" == content_type
    assert {"client_id": "cli", "scope": "openid offline_access"} == request.form
    assert {} == request.query


@pytest.mark.authorization_server(auto_approve_after=None, code_lifetime=30)
async def test_no_device_flow_is_started_unasked_or_restarted_after_expiry(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """RFC 8628 3.1 and 3.5: no request until asked; an expired flow is not restarted by itself."""
    provider = Provider(issuer=authorization_server.issuer)
    async with DeviceFlowClient(
        provider, client_id="cli", clock=virtual_clock, on_code=ignore_code
    ) as client:
        assert [] == authorization_server.requests
        with pytest.raises(ExpiredTokenError):
            await client.get_token()
        virtual_clock.advance(3600)
        await virtual_clock.sleep(0)
    assert 1 == authorization_server.stats.device_authorizations
    async with DeviceFlowClient(provider, client_id="cli", clock=virtual_clock) as quiet:
        with pytest.raises(ReauthorizationRequiredError):
            await quiet.get_token()
    assert 1 == authorization_server.stats.device_authorizations


# --- RFC 8628 3.3 and 3.3.1 -------------------------------------------------------------------


@pytest.mark.authorization_server(auto_approve_after=0)
async def test_on_code_gets_the_user_code_and_both_verification_uris(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """RFC 8628 3.3/3.3.1: what to show (user_code, verification_uri) reaches on_code intact."""
    shown: list[DeviceCode] = []
    async with DeviceFlowClient(
        Provider(issuer=authorization_server.issuer),
        client_id="cli",
        clock=virtual_clock,
        on_code=lambda code, account: shown.append(code),
    ) as client:
        await client.get_token()
    [code] = shown
    [issued] = authorization_server.stats.device_authorizations * [code.user_code]
    assert authorization_server.verification_uri == code.verification_uri
    assert code.verification_uri_complete is not None
    assert code.user_code in code.verification_uri_complete
    assert code.verification_uri_complete == code.link
    assert issued == code.user_code
    assert "user_code" in repr(code)
    assert "device_code" not in repr(code)


def test_a_device_code_answer_without_user_code_is_refused() -> None:
    """RFC 8628 3.2/3.3.1: a code that cannot be shown (no user_code) never starts polling."""
    machine = DeviceFlowMachine(client_id="cli", metadata=META)
    machine.start(now=0.0, wall=WALL)
    body = {k: v for k, v in CODE.items() if k != "user_code"}
    body["verification_uri_complete"] = "https://idp.example/go?code=X"
    action = machine.receive_response(answer(200, body), now=0.0, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, ProtocolError)


# --- RFC 8628 3.4 ---------------------------------------------------------------------------


@pytest.mark.authorization_server(auto_approve_after=1)
async def test_token_request_carries_the_device_code_grant(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """RFC 8628 3.4: grant_type device_code, the device_code and client_id, form-encoded POST."""
    async with DeviceFlowClient(
        Provider(issuer=authorization_server.issuer),
        client_id="cli",
        clock=virtual_clock,
        on_code=ignore_code,
    ) as client:
        await client.get_token()
    polls = requests_to(authorization_server, "token")
    assert 2 == len(polls)
    device_code = authorization_server.requests[-1].form["device_code"]
    for request in polls:
        assert "POST" == request.method
        assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
        assert {
            "grant_type": DEVICE_GRANT,
            "device_code": device_code,
            "client_id": "cli",
        } == request.form


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_confidential_client_authenticates_every_request_one_way(
    confidential: AuthorizationServer, virtual_clock: VirtualClock, method: str
) -> None:
    """RFC 8628 3.1/3.4, RFC 6749 2.3 and 6: device, token and refresh requests authenticate,
    with exactly one method, and never put the secret in the URL."""
    async with DeviceFlowClient(
        Provider(issuer=confidential.issuer),
        client_id="conf id:1",
        client_secret="s3 cr:et&%é",
        client_auth=method,  # type: ignore[arg-type]
        clock=virtual_clock,
        on_code=ignore_code,
    ) as client:
        await client.get_token()
        token = await client.refresh()
    assert confidential.is_valid_access_token(token.access_token)
    authenticated = [r for r in confidential.requests if r.endpoint in ("device", "token")]
    assert {"device", "token"} == {r.endpoint for r in authenticated}
    assert any(r.form.get("grant_type") == "refresh_token" for r in authenticated)
    for request in authenticated:
        assert {} == request.query
        header = request.headers.get("Authorization")
        if method == "client_secret_basic":
            assert header is not None
            assert header.startswith("Basic ")
            assert "client_secret" not in request.form
        else:
            assert header is None
            assert "s3 cr:et&%é" == request.form["client_secret"]
        assert 200 == request.status


# --- RFC 8628 3.5 ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["invalid_request", "unauthorized_client", "invalid_grant"])
async def test_any_other_error_stops_polling(virtual_clock: VirtualClock, code: str) -> None:
    """RFC 8628 3.5: any error but authorization_pending and slow_down stops polling at once,
    and the caller gets the server's error to show."""
    async with AuthorizationServer(clock=virtual_clock) as server:
        body = json.dumps({"error": code, "error_description": "told you"})
        server.faults.add(
            Fault(endpoint="token", status=400, content_type="application/json", body=body)
        )
        async with DeviceFlowClient(
            Provider(issuer=server.issuer),
            client_id="cli",
            clock=virtual_clock,
            on_code=ignore_code,
        ) as client:
            with pytest.raises(OAuthError) as caught:
                await client.get_token()
            virtual_clock.advance(600)
            await virtual_clock.sleep(0)
    assert code == caught.value.error
    assert "told you" == caught.value.description
    assert 1 == len(server.polls())


def test_a_connection_failure_reduces_the_polling_rate_at_once() -> None:
    """RFC 8628 3.5: after a connection timeout the next poll waits longer than the interval."""
    machine, first = polling_machine()
    action = machine.receive_failure(TransportError("timed out"), now=first.at, wall=WALL)
    assert isinstance(action, Send)
    assert action.at - first.at > machine.interval


# --- RFC 6749 5.1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["access_token", "token_type"])
def test_a_token_answer_without_a_required_field_is_refused(missing: str) -> None:
    """RFC 6749 5.1: access_token and token_type are required; without one there is no token."""
    machine, first = polling_machine()
    body = {"access_token": "at", "token_type": "Bearer", "expires_in": 60}
    del body[missing]
    action = machine.receive_response(answer(200, body), now=first.at, wall=WALL)
    assert isinstance(action, Fail)
    assert isinstance(action.error, ProtocolError)
    assert FlowState.FAILED == machine.state


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_token_type_is_case_insensitive(token_type: str) -> None:
    """RFC 6749 5.1: token_type is case-insensitive."""
    machine, first = polling_machine()
    body = {"access_token": "at", "token_type": token_type}
    action = machine.receive_response(answer(200, body), now=first.at, wall=WALL)
    assert isinstance(action, Done)
    assert "Bearer at" == action.token.authorization


def test_optional_token_fields_may_be_absent() -> None:
    """RFC 6749 5.1: without expires_in the token has no expiry; refresh_token is optional."""
    machine, first = polling_machine()
    body = {"access_token": "at", "token_type": "Bearer"}
    action = machine.receive_response(answer(200, body), now=first.at, wall=WALL)
    assert isinstance(action, Done)
    assert action.token.expires_at is None
    assert action.token.refresh_token is None
    assert action.token.expires_within(10**9, now=WALL) is False


# --- RFC 6749 6 -----------------------------------------------------------------------------


@pytest.mark.authorization_server(auto_approve_after=0)
async def test_refresh_request_is_a_form_post_of_the_refresh_token(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """RFC 6749 6: grant_type=refresh_token and the refresh token, form-encoded, no wider scope."""
    async with DeviceFlowClient(
        Provider(issuer=authorization_server.issuer),
        client_id="cli",
        scope="openid offline_access",
        clock=virtual_clock,
        on_code=ignore_code,
    ) as client:
        token = await client.get_token()
        await client.refresh()
    [request] = [
        r
        for r in requests_to(authorization_server, "token")
        if r.form["grant_type"] != DEVICE_GRANT
    ]
    assert "POST" == request.method
    assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert {
        "grant_type": "refresh_token",
        "refresh_token": token.refresh_token,
        "client_id": "cli",
    } == request.form


@pytest.mark.authorization_server(auto_approve_after=0, rotate_refresh_tokens=False)
async def test_refresh_without_a_new_refresh_token_keeps_the_old_one(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """RFC 6749 6: the server MAY issue a new refresh token; when it does not, keep the old."""
    async with DeviceFlowClient(
        Provider(issuer=authorization_server.issuer),
        client_id="cli",
        clock=virtual_clock,
        on_code=ignore_code,
    ) as client:
        first = await client.get_token()
        second = await client.refresh()
        third = await client.refresh()
    assert first.refresh_token is not None
    assert first.refresh_token == second.refresh_token == third.refresh_token
    assert first.access_token != second.access_token != third.access_token
    assert 2 == authorization_server.stats.refreshes


# --- RFC 6749 2.3.1 -------------------------------------------------------------------------


def test_client_secret_basic_form_encodes_id_and_secret_before_base64() -> None:
    """RFC 6749 2.3.1: id and secret are form-urlencoded, joined with ':', then base64."""
    auth = ClientAuth.choose("conf id:1", "s3 cr:et&%é", "client_secret_basic")
    params: dict[str, str] = {"client_id": "conf id:1"}
    headers: dict[str, str] = {}
    auth.apply(params, headers)
    expected = base64.b64encode(b"conf+id%3A1:s3+cr%3Aet%26%25%C3%A9").decode()
    assert f"Basic {expected}" == headers["Authorization"]
    assert "client_secret" not in params


# --- OpenID Connect Discovery 4.3 and RFC 8414 3.3 ------------------------------------------


@pytest.mark.authorization_server(metadata_overrides={"issuer": "https://other.example"})
async def test_discovery_refuses_a_document_for_another_issuer(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """OIDC Discovery 4.3: a document naming another issuer MUST NOT be used: no other request."""
    with pytest.raises(DiscoveryError, match="not the issuer asked for"):
        await Provider.discover(authorization_server.issuer)
    async with DeviceFlowClient(
        Provider(issuer=authorization_server.issuer),
        client_id="cli",
        clock=virtual_clock,
        on_code=ignore_code,
    ) as client:
        with pytest.raises(DiscoveryError):
            await client.get_token()
    assert {"discovery"} == {r.endpoint for r in authorization_server.requests}


@pytest.mark.parametrize("issuer_matches", [True, False])
async def test_rfc8414_document_is_used_only_for_its_issuer(
    virtual_clock: VirtualClock, issuer_matches: bool
) -> None:
    """RFC 8414 3 and 3.3: the well-known part goes before the issuer's path, and the document
    is used only if its issuer is the one it was fetched for."""
    overrides = {} if issuer_matches else {"issuer": "https://other.example/tenant"}
    async with AuthorizationServer(
        clock=virtual_clock, issuer_path="/tenant", metadata_overrides=overrides
    ) as server:
        # No OpenID Connect document: the client falls back to RFC 8414's location.
        server.faults.add(Fault(endpoint="discovery", status=404, body="not here"))
        if issuer_matches:
            provider = await Provider.discover(server.issuer)
            assert server.token_endpoint == provider.token_endpoint
        else:
            with pytest.raises(DiscoveryError):
                await Provider.discover(server.issuer)
        paths = [r.path for r in requests_to(server, "discovery")]
    assert [
        "/tenant/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/tenant",
    ] == paths


def test_a_terminating_slash_is_removed_before_the_well_known_part() -> None:
    """OIDC Discovery 4 and RFC 8414 3: a trailing "/" of the issuer is dropped first."""
    assert [
        "https://idp.example/tenant/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server/tenant",
    ] == discovery_urls("https://idp.example/tenant/")


async def test_discovery_with_a_trailing_slash_expects_that_exact_issuer(
    virtual_clock: VirtualClock,
) -> None:
    """OIDC Discovery 4.3: the issuer compared is exactly the one asked for, slash and all."""
    async with AuthorizationServer(clock=virtual_clock, issuer_path="/tenant") as server:
        with pytest.raises(DiscoveryError):
            await Provider.discover(server.issuer + "/")
        [request] = requests_to(server, "discovery")
    assert "/tenant/.well-known/openid-configuration" == request.path
