"""Each provider's own quirks, against its server profile, plus the presets' arguments."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from provider_cases import CASES, START_URL, Case, base, deciding

from deviceflow import (
    AccessDeniedError,
    DeviceCode,
    DeviceFlowClient,
    DiscoveryError,
    InsecureEndpointError,
    InvalidGrantError,
    OAuthError,
    Provider,
)
from deviceflow.stores import MemoryStore
from deviceflow.testing import PROFILES, AuthorizationServer, Fault, VirtualClock

CASE = {case.name: case for case in CASES}


def shown(server: AuthorizationServer, codes: list[DeviceCode]) -> Any:
    """An on_code callback that records the code and approves it."""

    def on_code(code: DeviceCode, account: str) -> None:
        codes.append(code)
        server.approve(code.user_code)

    return on_code


def json_fault(endpoint: str, status: int, body: dict[str, Any]) -> Fault:
    return Fault(
        endpoint=endpoint,
        status=status,
        body=json.dumps(body),
        content_type="application/json",
    )


def statuses(server: AuthorizationServer, endpoint: str) -> list[int | None]:
    return [r.status for r in server.requests if r.endpoint == endpoint]


# --- Devolutions Server -------------------------------------------------------------------------


async def test_devolutions_discovers_below_the_instance_path(virtual_clock: VirtualClock) -> None:
    """Discovery is fetched below /dvls and the code's complete link is offered."""
    case, codes = CASE["devolutions"], list[DeviceCode]()
    async with (
        case.running(virtual_clock) as server,
        case.client_for(server, virtual_clock, on_code=shown(server, codes)) as client,
    ):
        await client.get_token()
    assert "/dvls/.well-known/openid-configuration" == server.requests[0].path
    assert "openid offline_access" == server.requests[1].form["scope"]
    assert codes[0].verification_uri_complete is not None
    assert codes[0].verification_uri_complete == codes[0].link


def test_devolutions_keeps_the_issuer_as_given() -> None:
    """The base URL is the issuer, instance path and trailing slash included."""
    assert "https://dvls.example.com/dvls/" == Provider.devolutions("dvls.example.com/dvls/").issuer


# --- Microsoft Entra ID -------------------------------------------------------------------------


async def test_entra_shows_its_message_and_has_no_complete_link(
    virtual_clock: VirtualClock,
) -> None:
    """Entra's message is kept on the code, and the link is the plain verification URI."""
    case, codes = CASE["entra"], list[DeviceCode]()
    async with (
        case.running(virtual_clock) as server,
        case.client_for(server, virtual_clock, on_code=shown(server, codes)) as client,
    ):
        await client.get_token()
    code = codes[0]
    assert code.message is not None
    assert code.user_code in code.message
    assert (None, code.verification_uri) == (code.verification_uri_complete, code.link)


async def test_entra_declined_is_a_denial_with_its_error_codes(
    virtual_clock: VirtualClock,
) -> None:
    """authorization_declined becomes AccessDeniedError, keeping error_codes and trace ids."""
    case = CASE["entra"]
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server, server.deny))
        async with client:
            with pytest.raises(AccessDeniedError) as caught:
                await client.get_token()
    error = caught.value
    assert ("access_denied", "authorization_declined") == (error.error, error.server_error)
    assert [70000] == error.extra["error_codes"]
    assert "trace_id" in error.extra


async def test_entra_bad_verification_code_is_invalid_grant(virtual_clock: VirtualClock) -> None:
    """bad_verification_code (an unknown device code) ends the flow as invalid_grant."""
    case = CASE["entra"]
    async with case.running(virtual_clock) as server:
        server.faults.add(
            json_fault("token", 400, {"error": "bad_verification_code", "error_codes": [70000]})
        )
        async with case.client_for(server, virtual_clock, on_code=deciding(server)) as client:
            with pytest.raises(InvalidGrantError) as caught:
                await client.get_token()
    assert "bad_verification_code" == caught.value.server_error


@pytest.mark.parametrize(
    ("tenant", "document_issuer", "accepted"),
    [
        ("organizations", "{base}/{{tenantid}}/v2.0", True),
        ("common", "{base}/{{tenantid}}/v2.0", True),
        ("consumers", "{base}/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0", True),
        ("consumers", "{base}/{{tenantid}}/v2.0", False),
        ("organizations", "{base}/organizations/v2.0/", False),
        ("8eaef023-2b34-4da1-9baa-8bc8c9d6a490", None, True),
        ("8eaef023-2b34-4da1-9baa-8bc8c9d6a490", "{base}/{{tenantid}}/v2.0", False),
    ],
)
async def test_entra_issuer_check_is_relaxed_only_for_the_aliases(
    virtual_clock: VirtualClock, tenant: str, document_issuer: str | None, accepted: bool
) -> None:
    """Only common/organizations accept the {tenantid} placeholder; consumers its own tenant id."""
    profile = attrs.evolve(PROFILES["entra"], metadata_issuer=document_issuer)
    case = CASE["entra"]
    async with case.running(
        virtual_clock, profile=profile, issuer_path=f"/{tenant}/v2.0"
    ) as server:
        provider = Provider.entra(tenant.upper(), authority=base(server))
        client = DeviceFlowClient(
            provider, client_id="cli", clock=virtual_clock, on_code=deciding(server)
        )
        async with client:
            if accepted:
                token = await client.get_token()
                assert server.is_valid_access_token(token.access_token)
            else:
                with pytest.raises(DiscoveryError, match="issuer"):
                    await client.get_token()


async def test_entra_tenant_by_domain_uses_the_documented_endpoints(
    virtual_clock: VirtualClock,
) -> None:
    """A tenant named by its domain skips discovery: its document names a tenant id."""
    profile = attrs.evolve(PROFILES["entra"], metadata_issuer=None)
    async with AuthorizationServer(
        clock=virtual_clock, profile=profile, issuer_path="/contoso.example"
    ) as server:
        provider = Provider.entra("contoso.example", authority=base(server))
        client = DeviceFlowClient(
            provider, client_id="cli", clock=virtual_clock, on_code=deciding(server)
        )
        async with client:
            await client.get_token()
    assert ["device", "token"] == [r.endpoint for r in server.requests]
    assert "/contoso.example/oauth2/v2.0/devicecode" == server.requests[0].path


def test_entra_national_cloud_authority() -> None:
    """The authority argument moves every URL to a national cloud."""
    provider = Provider.entra("common", authority="https://login.microsoftonline.us/")
    assert "https://login.microsoftonline.us/common/v2.0" == provider.issuer
    assert "https://login.microsoftonline.us/{tenantid}/v2.0" == provider.expected_issuer


# --- Google -------------------------------------------------------------------------------------


def test_google_needs_a_client_secret() -> None:
    """The client refuses to start without the secret Google's token endpoint requires."""
    with pytest.raises(ValueError, match="client_secret"):
        DeviceFlowClient(Provider.google(), client_id="cli")


async def test_google_token_endpoint_refuses_a_missing_secret(
    virtual_clock: VirtualClock,
) -> None:
    """Without the secret Google answers invalid_request, and the flow fails with it."""
    case = CASE["google"]
    async with case.running(virtual_clock, clients=None) as server:
        provider = attrs.evolve(case.provider(server), requires_client_secret=False)
        client = DeviceFlowClient(
            provider, client_id="cli", clock=virtual_clock, on_code=deciding(server)
        )
        async with client:
            with pytest.raises(OAuthError) as caught:
                await client.get_token()
    assert ("invalid_request", "client_secret is missing.") == (
        caught.value.error,
        caught.value.description,
    )


async def test_google_statuses_and_verification_url(virtual_clock: VirtualClock) -> None:
    """verification_url is read as the URI; 428 (pending) and 403 (slow_down) keep polling."""
    case, codes = CASE["google"], list[DeviceCode]()
    async with case.running(virtual_clock, auto_approve_after=2) as server:

        def on_code(code: DeviceCode, account: str) -> None:
            codes.append(code)
            server.slow_down(code.user_code)

        async with case.client_for(server, virtual_clock, on_code=on_code) as client:
            token = await client.get_token()
    assert server.verification_uri == codes[0].verification_uri
    assert [403, 428, 200] == statuses(server, "token")
    assert "gsecret" == server.requests[-1].form["client_secret"]
    assert server.is_valid_access_token(token.access_token)


async def test_google_denial_is_403(virtual_clock: VirtualClock) -> None:
    """A denial answered 403 is still a denial."""
    case = CASE["google"]
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server, server.deny))
        async with client:
            with pytest.raises(AccessDeniedError) as caught:
                await client.get_token()
    assert 403 == caught.value.status


# --- GitHub -------------------------------------------------------------------------------------


async def test_github_scopes_errors_and_token_type(virtual_clock: VirtualClock) -> None:
    """Scopes go out space-separated and come back comma-separated; errors come with 200."""
    case = CASE["github"]
    async with (
        case.running(virtual_clock, auto_approve_after=2) as server,
        case.client_for(server, virtual_clock, on_code=lambda code, account: None) as client,
    ):
        token = await client.get_token()
    assert "repo read:org" == server.requests[0].form["scope"]
    assert ("repo,read:org", "Bearer") == (token.scope, token.token_type)
    assert [200, 200, 200] == statuses(server, "token")
    assert {"/login/device/code", "/login/oauth/access_token"} == {r.path for r in server.requests}


async def test_github_form_encoded_answers(virtual_clock: VirtualClock) -> None:
    """Form-encoded answers (GitHub without Accept: application/json) parse as well."""
    case = CASE["github"]
    profile = attrs.evolve(PROFILES["github"], response_format="form")
    async with (
        case.running(virtual_clock, profile=profile, auto_approve_after=1) as server,
        case.client_for(server, virtual_clock, on_code=lambda code, account: None) as client,
    ):
        token = await client.get_token()
    assert server.is_valid_access_token(token.access_token)
    assert token.expires_at is not None


async def test_github_device_flow_disabled(virtual_clock: VirtualClock) -> None:
    """device_flow_disabled (HTTP 200) fails the flow as unauthorized_client."""
    case = CASE["github"]
    async with case.running(virtual_clock) as server:
        server.faults.add(json_fault("device", 200, {"error": "device_flow_disabled"}))
        async with case.client_for(server, virtual_clock, on_code=deciding(server)) as client:
            with pytest.raises(OAuthError) as caught:
                await client.get_token()
    error = caught.value
    assert ("unauthorized_client", "device_flow_disabled", 200) == (
        error.error,
        error.server_error,
        error.status,
    )


async def test_github_bad_refresh_token_starts_a_new_flow(virtual_clock: VirtualClock) -> None:
    """bad_refresh_token (HTTP 200) is invalid_grant: the grant is dropped and a person asked."""
    case = CASE["github"]
    async with (
        case.running(virtual_clock) as server,
        case.client_for(server, virtual_clock, on_code=deciding(server)) as client,
    ):
        first = await client.get_token()
        server.revoke_all()
        second = await client.refresh()
    refreshes = [r for r in server.requests if r.form.get("grant_type") == "refresh_token"]
    assert [200] == [r.status for r in refreshes]
    assert 2 == server.stats.device_authorizations
    assert first.access_token != second.access_token
    assert server.is_valid_access_token(second.access_token)


def test_github_enterprise_server_host() -> None:
    """base_url points the preset at a GitHub Enterprise Server."""
    provider = Provider.github(base_url="https://ghe.example.com/")
    assert "https://ghe.example.com/login/device/code" == provider.device_authorization_endpoint
    assert "https://ghe.example.com/login/oauth/access_token" == provider.token_endpoint


# --- Auth0 --------------------------------------------------------------------------------------


async def test_auth0_audience_and_statuses(virtual_clock: VirtualClock) -> None:
    """audience is sent; 429 slow_down and 403 pending keep polling, not retrying."""
    case = CASE["auth0"]
    async with case.running(virtual_clock, auto_approve_after=2) as server:

        def on_code(code: DeviceCode, account: str) -> None:
            server.slow_down(code.user_code)

        async with case.client_for(server, virtual_clock, on_code=on_code) as client:
            await client.get_token()
    assert "https://api.example.com" == server.requests[0].form["audience"]
    assert "openid profile offline_access" == server.requests[0].form["scope"]
    assert [429, 403, 200] == statuses(server, "token")
    assert 1 == server.stats.slow_downs


async def test_auth0_expired_token_is_answered_once(virtual_clock: VirtualClock) -> None:
    """expired_token (403) ends the flow at once: the client never draws the later invalid_grant."""
    case = CASE["auth0"]
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server, server.expire))
        async with client:
            with pytest.raises(OAuthError) as caught:
                await client.get_token()
    assert ("expired_token", 403) == (caught.value.error, caught.value.status)
    assert (1, 0) == (len(statuses(server, "token")), server.stats.invalid_grants)


# --- Okta and Keycloak --------------------------------------------------------------------------


@pytest.mark.parametrize("issuer_path", ["", "/oauth2/default", "/oauth2/aus1a2b3c4d"])
async def test_okta_org_and_custom_servers(virtual_clock: VirtualClock, issuer_path: str) -> None:
    """The org server and custom servers are discovered from their issuer."""
    case = CASE["okta"]
    async with (
        case.running(virtual_clock, issuer_path=issuer_path) as server,
        case.client_for(server, virtual_clock, on_code=deciding(server)) as client,
    ):
        await client.get_token()
    assert f"{issuer_path}/.well-known/openid-configuration" == server.requests[0].path
    assert f"{issuer_path}/v1/device/authorize" == server.requests[1].path


async def test_okta_issuer_mismatch_is_refused(virtual_clock: VirtualClock) -> None:
    """A document naming another issuer (the org's other issuer format) is not used."""
    case = CASE["okta"]
    other = {"issuer": "https://example.okta.com/oauth2/default"}
    async with (
        case.running(virtual_clock, metadata_overrides=other) as server,
        case.client_for(server, virtual_clock, on_code=deciding(server)) as client,
    ):
        with pytest.raises(DiscoveryError, match="issuer"):
            await client.get_token()


@pytest.mark.parametrize("prefix", ["", "/auth"])
async def test_keycloak_realm_endpoints(virtual_clock: VirtualClock, prefix: str) -> None:
    """The realm's issuer is discovered, also below the /auth of Keycloak before 17."""
    case = CASE["keycloak"]
    async with case.running(virtual_clock, issuer_path=f"{prefix}/realms/demo") as server:
        provider = Provider.keycloak(base(server) + prefix, "demo")
        client = DeviceFlowClient(
            provider, client_id="cli", clock=virtual_clock, on_code=deciding(server)
        )
        async with client:
            await client.get_token()
    assert [
        f"{prefix}/realms/demo/.well-known/openid-configuration",
        f"{prefix}/realms/demo/protocol/openid-connect/auth/device",
        f"{prefix}/realms/demo/protocol/openid-connect/token",
    ] == [r.path for r in server.requests]


# --- AWS IAM Identity Center --------------------------------------------------------------------


async def test_aws_registers_once_and_speaks_json(virtual_clock: VirtualClock) -> None:
    """One RegisterClient, then camelCase JSON with the registered credentials in the body."""
    case = CASE["aws_sso"]
    async with (
        case.running(virtual_clock) as server,
        case.client_for(server, virtual_clock, on_code=deciding(server)) as client,
    ):
        await client.get_token("alice")
        await client.get_token("bob")
        await client.refresh("alice")
    registration, device, poll = server.requests[:3]
    assert ["registration", "device", "token"] == [r.endpoint for r in server.requests[:3]]
    assert 1 == [r.endpoint for r in server.requests].count("registration")
    assert {
        "client_name": "deviceflow-tests",
        "client_type": "public",
        "scope": "sso:account:access",
    } == registration.form
    assert {"client_id", "client_secret", "start_url"} == set(device.form)
    assert START_URL == device.form["start_url"]
    assert device.form["client_id"].startswith("reg_")
    assert device.form["client_id"] == poll.form["client_id"]
    assert {"application/json"} == {
        r.headers["Content-Type"].split(";")[0] for r in server.requests
    }
    assert 1 == server.stats.refreshes


async def test_aws_registration_is_shared_through_the_store(virtual_clock: VirtualClock) -> None:
    """Two clients on one store (two processes) use one registration."""
    case, store = CASE["aws_sso"], MemoryStore()
    async with case.running(virtual_clock) as server:
        for account in ("alice", "bob"):
            client = case.client_for(server, virtual_clock, store=store, on_code=deciding(server))
            async with client:
                await client.get_token(account)
    assert 1 == [r.endpoint for r in server.requests].count("registration")


async def test_aws_registers_again_before_expiry(virtual_clock: VirtualClock) -> None:
    """Near its expiry the client registers again; the old grant's refresh token then fails
    and a new device flow follows."""
    case = CASE["aws_sso"]
    profile = attrs.evolve(PROFILES["aws_sso"], registration_lifetime=2 * 3600)
    async with (
        case.running(virtual_clock, profile=profile) as server,
        case.client_for(server, virtual_clock, on_code=deciding(server)) as client,
    ):
        await client.get_token()
        virtual_clock.advance(2 * 3600 - 900 + 1)  # within 15 minutes of its expiry
        token = await client.get_token()
    assert 2 == [r.endpoint for r in server.requests].count("registration")
    assert 2 == server.stats.device_authorizations
    assert server.is_valid_access_token(token.access_token)


async def test_aws_registration_errors_and_retries(virtual_clock: VirtualClock) -> None:
    """A 503 at RegisterClient is retried; an OAuth error there is raised typed."""
    case = CASE["aws_sso"]
    async with case.running(virtual_clock) as server:
        server.faults.add(Fault(endpoint="registration", status=503))
        async with case.client_for(server, virtual_clock, on_code=deciding(server)) as client:
            await client.get_token()
    assert [503, 200] == statuses(server, "registration")
    async with case.running(virtual_clock) as server:
        server.faults.add(json_fault("registration", 400, {"error": "invalid_scope"}))
        async with case.client_for(server, virtual_clock, on_code=deciding(server)) as client:
            with pytest.raises(OAuthError) as caught:
                await client.get_token()
    assert "invalid_scope" == caught.value.error


def test_aws_refuses_a_client_secret_and_checks_its_arguments() -> None:
    """The registered client is the only one; regions and start URLs are checked."""
    provider = Provider.aws_sso("eu-west-1", START_URL)
    assert "https://oidc.eu-west-1.amazonaws.com/token" == provider.token_endpoint
    with pytest.raises(ValueError, match="registers its own client"):
        DeviceFlowClient(provider, client_id="tool", client_secret="s")
    with pytest.raises(ValueError, match="region"):
        Provider.aws_sso("Europe", START_URL)
    with pytest.raises(InsecureEndpointError):
        Provider.aws_sso("us-east-1", "http://portal.example.com/start")


# --- Every preset -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: Provider.devolutions("http://dvls.example.com"), InsecureEndpointError),
        (lambda: Provider.entra(authority="http://login.example.com"), InsecureEndpointError),
        (lambda: Provider.entra(" "), ValueError),
        (lambda: Provider.github(base_url=""), ValueError),
        (lambda: Provider.auth0("http://tenant.auth0.com"), InsecureEndpointError),
        (lambda: Provider.okta(""), ValueError),
        (lambda: Provider.keycloak("https://kc.example.com", ""), ValueError),
    ],
)
def test_presets_refuse_bad_arguments(make: Any, what: type[Exception]) -> None:
    """Empty values are ValueError; plain http beyond loopback is InsecureEndpointError."""
    with pytest.raises(what):
        make()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_preset_has_a_profile_and_a_docstring(case: Case) -> None:
    """Each preset has a registered server profile of its name and documents itself."""
    preset = getattr(Provider, case.name)
    assert case.name == PROFILES[case.name].name
    assert preset.__doc__
