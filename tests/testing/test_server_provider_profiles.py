"""The registered provider profiles and the server features they need, on the wire."""

from __future__ import annotations

from typing import Any

import pytest
from server_wire import get, obtain_tokens, poll, post, refresh, start_flow

from deviceflow.testing import PROFILES, AuthorizationServer, Profile, VirtualClock
from helpers import DEVICE_GRANT

PROVIDERS = ["devolutions", "entra", "google", "github", "auth0", "okta", "keycloak", "aws_sso"]


def test_every_provider_profile_is_registered_by_name() -> None:
    """PROFILES holds the rfc profile and one profile per provider preset, by name."""
    assert {"rfc", *PROVIDERS} == set(PROFILES)
    assert all(name == profile.name for name, profile in PROFILES.items())


async def test_metadata_issuer_template() -> None:
    """metadata_issuer puts another issuer in the discovery document (Entra, Auth0)."""
    async with AuthorizationServer(profile="entra", issuer_path="/common/v2.0") as server:
        entra = (await get(server.openid_configuration_url)).data["issuer"]
        host = f"http://127.0.0.1:{server.port}"
    async with AuthorizationServer(profile="auth0") as server:
        auth0 = (await get(server.openid_configuration_url)).data["issuer"]
    assert host + "/{tenantid}/v2.0" == entra
    assert server.issuer + "/" == auth0


async def test_client_secret_required_at_the_token_endpoint() -> None:
    """Google's token endpoint answers invalid_request without a secret, Basic or in the body."""
    async with AuthorizationServer(clock=VirtualClock(), profile="google") as server:
        code = await start_flow(server)
        server.approve(code["user_code"])
        missing = await poll(server, code["device_code"])
        form = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"], "client_id": "bot"}
        granted = await post(server.token_endpoint, {**form, "client_secret": "anything"})
    assert (400, "invalid_request", "client_secret is missing.") == (
        missing.status,
        missing.error,
        missing.data["error_description"],
    )
    assert 200 == granted.status


async def test_request_scope_separator_and_refresh_error_aliases() -> None:
    """GitHub takes spaces, answers commas, and names a bad refresh token its own way."""
    async with AuthorizationServer(clock=VirtualClock(), profile="github") as server:
        tokens = await obtain_tokens(server, scope="repo read:org")
        unknown = await poll(server, "dc_unknown")
        bad = await refresh(server, "rt_unknown")
    assert "repo,read:org" == tokens["scope"]
    assert [(200, "incorrect_device_code"), (200, "bad_refresh_token")] == [
        (answer.status, answer.error) for answer in (unknown, bad)
    ]


async def test_slow_down_control() -> None:
    """server.slow_down() answers the code's next poll with slow_down and a longer interval."""
    profile = Profile(name="with-interval", slow_down_includes_interval=True)
    async with AuthorizationServer(clock=VirtualClock(), profile=profile) as server:
        code = await start_flow(server)
        server.slow_down(code["user_code"])
        slow = await poll(server, code["device_code"])
    assert ("slow_down", 10, "wait 10 s") == (
        slow.error,
        slow.data["interval"],
        slow.data["error_description"],
    )


async def test_renamed_parameters_are_refused_under_their_rfc_names() -> None:
    """A profile with its own parameter names does not know the RFC's (AWS clientId)."""
    async with AuthorizationServer(profile="aws_sso") as server:
        answer = await post(server.device_authorization_endpoint, json_body={"client_id": "c"})
    assert (400, "invalid_request") == (answer.status, answer.error)
    assert "'clientId'" in answer.data["error_description"]


async def register(server: AuthorizationServer, **body: Any) -> Any:
    assert server.registration_endpoint is not None
    return await post(server.registration_endpoint, json_body=body)


async def test_registration_then_client_secret_post() -> None:
    """RegisterClient issues credentials that authenticate, and only while they are valid."""
    clock = VirtualClock()
    async with AuthorizationServer(clock=clock, profile="aws_sso") as server:
        registered = (
            await register(server, clientName="tool", clientType="public", scopes=["a", "b"])
        ).data
        client = {"clientId": registered["clientId"], "clientSecret": registered["clientSecret"]}
        device = await post(server.device_authorization_endpoint, json_body=client)
        wrong = await post(
            server.device_authorization_endpoint, json_body={**client, "clientSecret": "x"}
        )
        unknown = await post(
            server.device_authorization_endpoint,
            json_body={"clientId": "nobody", "clientSecret": "x"},
        )
        clock.advance(PROFILES["aws_sso"].registration_lifetime)
        expired = await post(server.device_authorization_endpoint, json_body=client)
        metadata = server.metadata
    assert {"clientId", "clientSecret", "clientIdIssuedAt", "clientSecretExpiresAt"} == set(
        registered
    )
    lifetime = registered["clientSecretExpiresAt"] - registered["clientIdIssuedAt"]
    assert PROFILES["aws_sso"].registration_lifetime == lifetime
    assert 200 == device.status
    assert [(401, "invalid_client")] * 3 == [(a.status, a.error) for a in (wrong, unknown, expired)]
    assert "has expired" in expired.data["error_description"]
    assert server.registration_endpoint == metadata["registration_endpoint"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [({"clientType": "public"}, "client_name"), ({"clientName": "t", "clientType": "x"}, "public")],
)
async def test_registration_refuses_bad_metadata(body: dict[str, str], problem: str) -> None:
    """A registration without a name, or for a confidential client, is invalid_client_metadata."""
    async with AuthorizationServer(profile="aws_sso") as server:
        answer = await register(server, **body)
    assert (400, "invalid_client_metadata") == (answer.status, answer.error)
    assert problem in answer.data["error_description"]


async def test_registered_scopes_are_the_codes_scopes() -> None:
    """Codes of a registered client that asks for no scope get the scopes it registered."""
    async with AuthorizationServer(clock=VirtualClock(), profile="aws_sso") as server:
        registered = (await register(server, clientName="tool", scopes=["sso:account:access"])).data
        client = {"clientId": registered["clientId"], "clientSecret": registered["clientSecret"]}
        code = (await post(server.device_authorization_endpoint, json_body=client)).data
        server.approve(code["userCode"])
        body = {**client, "grantType": DEVICE_GRANT, "deviceCode": code["deviceCode"]}
        tokens = (await post(server.token_endpoint, json_body=body)).data
    assert "sso:account:access" == tokens["scope"]
    assert {"accessToken", "refreshToken", "tokenType", "expiresIn", "scope"} == set(tokens)
