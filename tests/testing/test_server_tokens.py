"""Refresh (RFC 6749 6) with rotation and reuse detection, revocation (RFC 7009), /api/me."""

from __future__ import annotations

import pytest
from server_wire import CLIENT, get, me, obtain_tokens, post, refresh

from deviceflow.testing import AuthorizationServer, VirtualClock


async def test_refresh_rotates_the_refresh_token(
    authorization_server: AuthorizationServer,
) -> None:
    """Each refresh returns a new access and refresh token; the old access token stays valid."""
    server = authorization_server
    tokens = await obtain_tokens(server, scope="openid offline_access")
    answer = await refresh(server, tokens["refresh_token"])
    new = answer.data
    assert 200 == answer.status
    assert "no-store" == answer.headers["Cache-Control"]
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]
    assert "openid offline_access" == new["scope"]
    assert server.is_valid_access_token(new["access_token"])
    assert 200 == (await refresh(server, new["refresh_token"])).status
    assert (2, 3) == (server.stats.refreshes, server.stats.tokens_issued)


async def test_reusing_a_rotated_refresh_token_revokes_the_grant(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 9700 4.14.2: an old refresh token presented again revokes every token of the grant."""
    server = authorization_server
    tokens = await obtain_tokens(server)
    new = (await refresh(server, tokens["refresh_token"])).data
    reuse = await refresh(server, tokens["refresh_token"])
    assert (400, "invalid_grant") == (reuse.status, reuse.error)
    assert not server.is_valid_access_token(new["access_token"])
    assert not server.is_valid_access_token(tokens["access_token"])
    assert "invalid_grant" == (await refresh(server, new["refresh_token"])).error
    assert 1 == server.stats.grants_revoked
    other = await obtain_tokens(server)
    assert server.is_valid_access_token(other["access_token"])


@pytest.mark.authorization_server(rotate_refresh_tokens=False)
async def test_without_rotation_the_refresh_token_is_kept(
    authorization_server: AuthorizationServer,
) -> None:
    """Without rotation, refresh answers carry no refresh token and the old one keeps working."""
    server = authorization_server
    tokens = await obtain_tokens(server)
    for _ in range(2):
        answer = await refresh(server, tokens["refresh_token"])
        assert 200 == answer.status
        assert "refresh_token" not in answer.data
    assert 0 == server.stats.grants_revoked


async def test_refresh_may_narrow_but_not_widen_the_scope(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 6749 6: a narrower scope is granted; a wider one is invalid_scope."""
    server = authorization_server
    tokens = await obtain_tokens(server, scope="openid profile offline_access")
    narrow = await refresh(server, tokens["refresh_token"], scope="openid")
    assert (200, "openid") == (narrow.status, narrow.data["scope"])
    assert {"sub": "user", "client_id": CLIENT, "scope": "openid"} == (
        await me(server, narrow.data["access_token"])
    ).data
    wide = await refresh(server, narrow.data["refresh_token"], scope="openid admin")
    assert (400, "invalid_scope") == (wide.status, wide.error)


async def test_unknown_foreign_or_expired_refresh_tokens_are_invalid_grant(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """Refresh tokens that are unknown, another client's or expired get invalid_grant."""
    server = authorization_server
    server.configure(refresh_token_lifetime=100)
    tokens = await obtain_tokens(server)
    assert "invalid_grant" == (await refresh(server, "rt_unknown")).error
    assert "invalid_grant" == (await refresh(server, tokens["refresh_token"], "other")).error
    virtual_clock.advance(100)
    assert "invalid_grant" == (await refresh(server, tokens["refresh_token"])).error
    assert 3 == server.stats.invalid_grants


async def test_access_tokens_expire_on_the_servers_clock(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """An access token stops working once access_token_lifetime has passed on the clock."""
    server = authorization_server
    server.configure(access_token_lifetime=60)
    tokens = await obtain_tokens(server)
    assert 60 == tokens["expires_in"]
    virtual_clock.advance(59)
    assert 200 == (await me(server, tokens["access_token"])).status
    virtual_clock.advance(1)
    assert not server.is_valid_access_token(tokens["access_token"])
    assert 401 == (await me(server, tokens["access_token"])).status


@pytest.mark.authorization_server(access_token_lifetime=None, issue_refresh_tokens=False)
async def test_tokens_without_expiry_or_refresh_token(
    authorization_server: AuthorizationServer, virtual_clock: VirtualClock
) -> None:
    """access_token_lifetime=None omits expires_in; issue_refresh_tokens=False omits the RT."""
    tokens = await obtain_tokens(authorization_server)
    assert {"access_token", "token_type"} == set(tokens)
    virtual_clock.advance(10**9)
    assert authorization_server.is_valid_access_token(tokens["access_token"])


async def test_revoke_all_and_expire_access_tokens(
    authorization_server: AuthorizationServer,
) -> None:
    """expire_access_tokens() keeps refresh working; revoke_all() ends every grant."""
    server = authorization_server
    tokens = await obtain_tokens(server)
    server.expire_access_tokens()
    assert not server.is_valid_access_token(tokens["access_token"])
    new = (await refresh(server, tokens["refresh_token"])).data
    assert server.is_valid_access_token(new["access_token"])
    server.revoke_all()
    assert not server.is_valid_access_token(new["access_token"])
    assert "invalid_grant" == (await refresh(server, new["refresh_token"])).error
    assert 1 == server.stats.grants_revoked


async def test_issue_tokens_seeds_a_grant(authorization_server: AuthorizationServer) -> None:
    """issue_tokens() makes a working grant without a device flow."""
    server = authorization_server
    tokens = server.issue_tokens(CLIENT, scope="openid  email")
    assert "access_token" in server.issue_tokens(CLIENT)
    assert ("Bearer", 3600, "openid email") == (
        tokens["token_type"],
        tokens["expires_in"],
        tokens["scope"],
    )
    assert server.is_valid_access_token(tokens["access_token"])
    assert 200 == (await refresh(server, tokens["refresh_token"])).status


async def test_revoking_a_refresh_token_revokes_its_grant(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 7009 2.1: revoking a refresh token also ends the access tokens of its grant."""
    server = authorization_server
    tokens = await obtain_tokens(server)
    answer = await post(
        server.revocation_endpoint,
        {"token": tokens["refresh_token"], "token_type_hint": "refresh_token", "client_id": CLIENT},
    )
    assert (200, "") == (answer.status, answer.text)
    assert not server.is_valid_access_token(tokens["access_token"])
    assert "invalid_grant" == (await refresh(server, tokens["refresh_token"])).error


async def test_revoking_an_access_token_keeps_the_refresh_token(
    authorization_server: AuthorizationServer,
) -> None:
    """Revoking an access token (whatever the hint) ends only that token."""
    server = authorization_server
    tokens = await obtain_tokens(server)
    answer = await post(
        server.revocation_endpoint,
        {"token": tokens["access_token"], "token_type_hint": "refresh_token", "client_id": CLIENT},
    )
    assert 200 == answer.status
    assert not server.is_valid_access_token(tokens["access_token"])
    assert 200 == (await refresh(server, tokens["refresh_token"])).status


async def test_revocation_answers_200_for_unknown_and_foreign_tokens(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 7009 2.2: unknown tokens get 200; another client's token is left alone (200)."""
    server = authorization_server
    tokens = await obtain_tokens(server)
    unknown = await post(server.revocation_endpoint, {"token": "nope", "client_id": CLIENT})
    foreign = await post(
        server.revocation_endpoint, {"token": tokens["access_token"], "client_id": "other"}
    )
    missing = await post(server.revocation_endpoint, {"client_id": CLIENT})
    assert (200, 200) == (unknown.status, foreign.status)
    assert server.is_valid_access_token(tokens["access_token"])
    assert (400, "invalid_request") == (missing.status, missing.error)


async def test_resource_challenges_missing_and_invalid_tokens(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 6750 3.1: no token gets a bare Bearer challenge; a bad token gets invalid_token."""
    server = authorization_server
    missing = await get(server.resource_url)
    basic = await get(server.resource_url, headers={"Authorization": "Basic Zm9vOmJhcg=="})
    bad = await me(server, "at_forged")
    assert (401, 'Bearer realm="deviceflow test server"') == (
        missing.status,
        missing.headers["WWW-Authenticate"],
    )
    assert 401 == basic.status
    assert 'error="invalid_token"' not in basic.headers["WWW-Authenticate"]
    assert 401 == bad.status
    assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    assert "invalid_token" == bad.error
