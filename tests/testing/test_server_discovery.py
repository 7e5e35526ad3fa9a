"""The test server's discovery documents, addresses, lifecycle and routing."""

from __future__ import annotations

import pytest
from server_wire import get, post

from deviceflow.testing import AuthorizationServer, Profile, VirtualClock
from helpers import DEVICE_GRANT


async def test_both_well_known_paths_serve_the_metadata(
    authorization_server: AuthorizationServer,
) -> None:
    """OIDC Discovery and RFC 8414 paths serve the same document, naming this issuer."""
    server = authorization_server
    oidc = await get(server.issuer + "/.well-known/openid-configuration")
    rfc8414 = await get(server.issuer + "/.well-known/oauth-authorization-server")
    assert (200, 200) == (oidc.status, rfc8414.status)
    assert server.metadata == oidc.data == rfc8414.data
    assert server.issuer == oidc.data["issuer"]
    assert server.openid_configuration_url == server.issuer + "/.well-known/openid-configuration"
    assert server.oauth_metadata_url == server.issuer + "/.well-known/oauth-authorization-server"


async def test_metadata_names_every_endpoint(authorization_server: AuthorizationServer) -> None:
    """The document lists the endpoints, grant types and client authentication methods."""
    server = authorization_server
    base = f"http://127.0.0.1:{server.port}"
    assert base == server.issuer == server.url
    assert {
        "issuer": base,
        "device_authorization_endpoint": base + "/device_authorization",
        "token_endpoint": base + "/token",
        "revocation_endpoint": base + "/revoke",
        "grant_types_supported": [DEVICE_GRANT, "refresh_token"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_post",
            "client_secret_basic",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "none",
            "client_secret_post",
            "client_secret_basic",
        ],
        "jwks_uri": base + "/jwks",
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    } == server.metadata
    assert base + "/jwks" == server.jwks_uri
    assert base + "/device" == server.verification_uri
    assert base + "/api/me" == server.resource_url


@pytest.mark.authorization_server(issue_refresh_tokens=False, scopes_supported=["openid", "x"])
async def test_metadata_follows_settings(authorization_server: AuthorizationServer) -> None:
    """Without refresh tokens the refresh grant is not offered; scopes_supported is listed."""
    assert [DEVICE_GRANT] == authorization_server.metadata["grant_types_supported"]
    assert ["openid", "x"] == authorization_server.metadata["scopes_supported"]


async def test_issuer_path_moves_endpoints_and_inserts_rfc8414_path() -> None:
    """With an issuer path, OIDC appends the well-known path and RFC 8414 inserts it before."""
    async with AuthorizationServer(clock=VirtualClock(), issuer_path="/dvls") as server:
        base = f"http://127.0.0.1:{server.port}"
        assert base + "/dvls" == server.issuer
        oidc = await get(base + "/dvls/.well-known/openid-configuration")
        rfc8414 = await get(base + "/.well-known/oauth-authorization-server/dvls")
        wrong = await get(base + "/.well-known/openid-configuration")
        assert (200, 200, 404) == (oidc.status, rfc8414.status, wrong.status)
        assert base + "/dvls" == oidc.data["issuer"] == rfc8414.data["issuer"]
        assert base + "/dvls/token" == oidc.data["token_endpoint"]
        answer = await post(oidc.data["device_authorization_endpoint"], {"client_id": "c"})
        assert 200 == answer.status
        assert base + "/dvls/device" == answer.data["verification_uri"]


async def test_metadata_overrides_replace_and_remove_entries() -> None:
    """metadata_overrides lets a test serve a wrong issuer or drop a required endpoint."""
    overrides = {"issuer": "https://evil.example", "device_authorization_endpoint": None}
    async with AuthorizationServer(metadata_overrides=overrides) as server:
        document = (await get(server.openid_configuration_url)).data
    assert "https://evil.example" == document["issuer"]
    assert "device_authorization_endpoint" not in document


async def test_unknown_paths_and_wrong_methods_are_logged() -> None:
    """Unknown paths get 404, known paths with another method 405 with Allow; both are logged."""
    async with AuthorizationServer() as server:
        missing = await post(server.issuer + "/nowhere", {"a": "b"})
        wrong_method = await get(server.token_endpoint)
        assert 404 == missing.status
        assert (405, "POST") == (wrong_method.status, wrong_method.headers["Allow"])
        assert [("unknown", 404), ("token", 405)] == [
            (r.endpoint, r.status) for r in server.requests
        ]


async def test_profile_without_discovery_serves_no_metadata() -> None:
    """A profile with discovery=False (GitHub) answers the well-known paths 404."""
    async with AuthorizationServer(profile=Profile(name="nodisc", discovery=False)) as server:
        answer = await get(server.openid_configuration_url)
    assert 404 == answer.status


def test_non_loopback_host_is_refused() -> None:
    """The server binds to loopback only unless allow_remote=True."""
    with pytest.raises(ValueError, match="loopback"):
        AuthorizationServer(host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        AuthorizationServer(host="example.com")
    AuthorizationServer(host="0.0.0.0", allow_remote=True)
    AuthorizationServer(host="localhost")


def test_bad_arguments_are_refused() -> None:
    """Unknown profile names, bad issuer paths and bad lifetimes raise ValueError."""
    with pytest.raises(ValueError, match="unknown profile"):
        AuthorizationServer(profile="nope")
    with pytest.raises(ValueError, match="issuer_path"):
        AuthorizationServer(issuer_path="dvls/")
    with pytest.raises(ValueError, match="code_lifetime"):
        AuthorizationServer(code_lifetime=0)
    with pytest.raises(ValueError, match="access_token_lifetime"):
        AuthorizationServer(access_token_lifetime=-1)
    with pytest.raises(ValueError, match="auto_approve_after"):
        AuthorizationServer(auto_approve_after=-1)


async def test_addresses_need_a_started_server() -> None:
    """Before start() the URLs are not known; start() twice is an error; close keeps the log."""
    server = AuthorizationServer()
    assert "not started" in repr(server)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.issuer
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    await server.start()
    try:
        assert f"<AuthorizationServer {server.issuer} profile='rfc'>" == repr(server)
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
        await get(server.openid_configuration_url)
    finally:
        await server.aclose()
        await server.aclose()
    assert f"http://127.0.0.1:{server.port}" == server.issuer
    assert ["discovery"] == [r.endpoint for r in server.requests]


async def test_busy_port_fails_cleanly() -> None:
    """Starting on a port that is taken raises OSError and leaves the server unstarted."""
    async with AuthorizationServer() as first:
        second = AuthorizationServer(port=first.port)
        with pytest.raises(OSError, match="bind"):
            await second.start()
        with pytest.raises(RuntimeError, match="not started"):
            _ = second.issuer


async def test_localhost_issuer_names_one_server() -> None:
    """host="localhost" keeps the name in the issuer and serves on one port."""
    async with AuthorizationServer(host="localhost") as server:
        assert f"http://localhost:{server.port}" == server.issuer
        assert server.issuer == (await get(server.openid_configuration_url)).data["issuer"]


async def test_ipv6_loopback_issuer_has_brackets() -> None:
    """On ::1 the issuer puts the address in brackets."""
    try:
        server = AuthorizationServer(host="::1")
        await server.start()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        assert f"http://[::1]:{server.port}" == server.issuer
        assert 200 == (await get(server.openid_configuration_url)).status
    finally:
        await server.aclose()
