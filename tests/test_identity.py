"""Verified identity (OpenID Connect Core 3.1.3.7): client.identity() and verify_identity, end
to end against the built-in server, which signs its id_tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import warnings
from datetime import datetime, timezone
from typing import Any

import attrs
import pytest

from deviceflow import (
    DeviceCode,
    DeviceFlowClient,
    FlowState,
    Identity,
    IdentityError,
    Provider,
    Token,
    TransportError,
)
from deviceflow._identity import receive
from deviceflow.testing import AuthorizationServer, Fault, VirtualClock
from helpers import issued_token, make_client, plant, stored_token

pytestmark = pytest.mark.authorization_server(interval=5)


def approver(server: AuthorizationServer) -> Any:
    """An on_code callback that approves the code as a person would."""

    def on_code(code: DeviceCode, account: str) -> None:
        server.approve(code.user_code)

    return on_code


def jwks_fetches(server: AuthorizationServer) -> int:
    """How many times the client asked for the server's JWKS."""
    return sum(1 for r in server.requests if r.endpoint == "jwks")


def with_id_token(server: AuthorizationServer, id_token: str) -> Token:
    """A token of a new grant at ``server``, carrying ``id_token``."""
    return attrs.evolve(issued_token(server, "svc"), id_token=id_token)


def secrets_of(token: Token) -> list[str]:
    return [s for s in (token.access_token, token.refresh_token, token.id_token) if s]


async def test_identity_after_a_device_flow(authorization_server: AuthorizationServer) -> None:
    """A device flow with the openid scope gives a verified identity: sub, iss, name, email."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        await client.get_token()
        identity = await client.identity()
    assert (
        Identity(
            subject="user",
            issuer=server.issuer,
            name="alice",
            email="alice@example.com",
            claims=identity.claims,
        )
        == identity
    )
    assert "svc" == identity.claims["aud"]
    assert "alice (alice@example.com)" == str(identity)
    assert 1 == jwks_fetches(server)


@pytest.mark.authorization_server(id_token_algorithm="RS256")
async def test_identity_of_an_rs256_id_token(authorization_server: AuthorizationServer) -> None:
    """An RS256-signed id_token verifies as well as an ES256 one."""
    server = authorization_server
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, server.id_tokens.mint("svc")))
        assert "user" == (await client.identity("a")).subject


async def test_keys_are_fetched_once_for_many_identities(
    authorization_server: AuthorizationServer,
) -> None:
    """The JWKS is cached: many identity() calls fetch it once."""
    server = authorization_server
    async with make_client(server) as client:
        for account in ("a", "b", "c"):
            await plant(client, account, with_id_token(server, server.id_tokens.mint("svc")))
        for account in ("a", "b", "c", "a"):
            await client.identity(account)
    assert 1 == jwks_fetches(server)


async def test_bad_signature_is_refused(authorization_server: AuthorizationServer) -> None:
    """An id_token whose signature does not verify with the provider's keys is refused."""
    server = authorization_server
    token = with_id_token(server, server.id_tokens.mint("svc", unpublished_key=True))
    async with make_client(server) as client:
        await plant(client, "a", token)
        with pytest.raises(IdentityError, match="signature that does not verify") as caught:
            await client.identity("a")
    assert "'a'" in str(caught.value)
    assert not any(secret in str(caught.value) for secret in secrets_of(token))


async def test_tampered_claims_are_refused(authorization_server: AuthorizationServer) -> None:
    """An id_token whose claims were changed after signing is refused."""
    server = authorization_server
    genuine = server.id_tokens.mint("svc")
    forged = server.id_tokens.mint("svc", sub="mallory").split(".")[1]
    head, _, signature = genuine.split(".")
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, f"{head}.{forged}.{signature}"))
        with pytest.raises(IdentityError, match="signature that does not verify"):
            await client.identity("a")


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"aud": "another-client"}, "not for this client 'svc'"),
        ({"aud": ["svc", "api"]}, "several audiences"),
        ({"aud": ["svc", "api"], "azp": "api"}, "issued to another client than 'svc'"),
        ({"azp": "another-client"}, "issued to another client than 'svc'"),
        ({"iss": "https://evil.example"}, "names the issuer 'https://evil.example'"),
        ({"sub": None}, "has no sub"),
    ],
)
async def test_wrong_claims_are_refused(
    authorization_server: AuthorizationServer, claims: dict[str, Any], message: str
) -> None:
    """A signed id_token for another client, another issuer, or without an azp for several
    audiences is refused, and the message names the account, not the token."""
    server = authorization_server
    token = with_id_token(server, server.id_tokens.mint("svc", **claims))
    async with make_client(server) as client:
        await plant(client, "tenant-7", token)
        with pytest.raises(IdentityError, match=message) as caught:
            await client.identity("tenant-7")
    assert "account 'tenant-7'" in str(caught.value)
    assert not any(secret in str(caught.value) for secret in secrets_of(token))


async def test_several_audiences_with_our_azp_are_accepted(
    authorization_server: AuthorizationServer,
) -> None:
    """Several audiences are fine when azp names this client (Core 3.1.3.7 steps 4 and 5)."""
    server = authorization_server
    token = with_id_token(server, server.id_tokens.mint("svc", aud=["svc", "api"], azp="svc"))
    async with make_client(server) as client:
        await plant(client, "a", token)
        assert "user" == (await client.identity("a")).subject


@pytest.mark.parametrize("alg", ["none", "HS256"])
async def test_unsigned_and_symmetric_id_tokens_are_refused(
    authorization_server: AuthorizationServer, alg: str
) -> None:
    """alg none and HS256 (signed with a shared secret) are refused before any key is used."""
    server = authorization_server
    genuine = server.id_tokens.mint("svc")
    head = base64.urlsafe_b64encode(json.dumps({"alg": alg}).encode()).rstrip(b"=").decode()
    _, payload, signature = genuine.split(".")
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, f"{head}.{payload}.{signature}"))
        with pytest.raises(IdentityError, match=f"signed with '{alg}'"):
            await client.identity("a")
    assert 0 == jwks_fetches(server)


async def test_garbage_id_token_is_refused(authorization_server: AuthorizationServer) -> None:
    """An id_token that is not a JWT at all is an IdentityError, not a crash."""
    server = authorization_server
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, "not-a-jwt"))
        with pytest.raises(IdentityError, match="not a signed JWT"):
            await client.identity("a")


async def test_unknown_kid_refetches_the_keys_once(
    authorization_server: AuthorizationServer,
) -> None:
    """After a key rotation, an id_token signed with the new key fetches the JWKS once more."""
    server = authorization_server
    async with make_client(server) as client:
        await plant(client, "old", with_id_token(server, server.id_tokens.mint("svc")))
        await client.identity("old")
        assert 1 == jwks_fetches(server)
        server.id_tokens.rotate()
        await server.clock.sleep(61)
        await plant(client, "new", with_id_token(server, server.id_tokens.mint("svc")))
        assert "user" == (await client.identity("new")).subject
        assert 2 == jwks_fetches(server)
        await client.identity("old")  # the old key is still published
        await client.identity("new")
    assert 2 == jwks_fetches(server)


async def test_a_flood_of_unknown_kids_fetches_the_keys_at_most_once_a_minute(
    authorization_server: AuthorizationServer,
) -> None:
    """id_tokens naming key ids the provider does not have are refused, and fetch the JWKS
    at most once every 60 s however many there are."""
    server = authorization_server
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, server.id_tokens.mint("svc")))
        await client.identity("a")
        await server.clock.sleep(61)
        for number in range(20):
            forged = server.id_tokens.mint("svc", kid=f"unknown-{number}")
            await plant(client, "x", with_id_token(server, forged))
            with pytest.raises(IdentityError, match="which the provider's JWKS does not have"):
                await client.identity("x")
        assert 2 == jwks_fetches(server)
        await server.clock.sleep(61)
        with pytest.raises(IdentityError):
            await client.identity("x")
    assert 3 == jwks_fetches(server)


async def test_rotation_without_the_old_key_refuses_old_tokens(
    authorization_server: AuthorizationServer,
) -> None:
    """A key the provider withdrew stops verifying once the cached JWKS is an hour old."""
    server = authorization_server
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, server.id_tokens.mint("svc")))
        await client.identity("a")
        server.id_tokens.rotate(keep_old=False)
        await server.clock.sleep(3601)
        with pytest.raises(IdentityError, match="JWKS does not have"):
            await client.identity("a")


async def test_an_old_id_token_of_a_valid_grant_still_gives_the_identity(
    authorization_server: AuthorizationServer,
) -> None:
    """exp applies at receipt: hours later, the account's identity is still known."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        await client.get_token()
        await server.clock.sleep(6 * 3600)
        assert "user" == (await client.identity()).subject


async def test_an_id_token_expired_on_arrival_is_not_kept(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A device flow whose id_token has already expired stores the grant without it."""
    server = authorization_server
    server.id_tokens.lifetime = -600
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        with caplog.at_level(logging.WARNING, logger="deviceflow"):
            token = await client.get_token("a")
        assert token.id_token is None
        with pytest.raises(IdentityError, match="has no id_token"):
            await client.identity("a")
    assert "had expired when it was received" in caplog.text
    stored = await stored_token(client, "a")
    assert stored is not None
    assert stored.id_token is None


async def test_an_id_token_from_the_future_is_not_kept(
    authorization_server: AuthorizationServer,
) -> None:
    """An id_token issued after it was received (a clock far off) is not kept."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        clock = server.clock
        assert isinstance(clock, VirtualClock)
        server.id_tokens.claims["iat"] = int(clock.wall().timestamp()) + 3600
        token = await client.get_token("a")
    assert token.id_token is None


async def test_refresh_keeps_the_id_token_when_it_brings_none(
    authorization_server: AuthorizationServer,
) -> None:
    """A refresh answer without an id_token keeps the one held."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        first = await client.get_token()
        server.id_tokens.on_refresh = False
        await server.clock.sleep(3600)
        refreshed = await client.refresh()
        assert first.access_token != refreshed.access_token
        assert first.id_token is not None
        assert first.id_token == refreshed.id_token
        assert "user" == (await client.identity()).subject
    stored = await stored_token(client)
    assert stored is not None
    assert first.id_token == stored.id_token


async def test_refresh_with_another_sub_keeps_the_old_id_token(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenID Connect Core 12.2: an id_token for someone else does not replace the one held;
    the refreshed access token is kept, and a warning names the account."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        first = await client.get_token("a")
        server.id_tokens.claims["sub"] = "mallory"
        with caplog.at_level(logging.WARNING, logger="deviceflow"):
            refreshed = await client.refresh("a")
        assert first.access_token != refreshed.access_token
        assert first.id_token == refreshed.id_token
        assert "user" == (await client.identity("a")).subject
    stored = await stored_token(client, "a")
    assert stored is not None
    assert first.id_token == stored.id_token
    assert "account 'a': the refresh brought an id_token for another iss or sub" in caplog.text
    assert not any(secret in caplog.text for secret in secrets_of(refreshed))


async def test_refresh_with_the_same_sub_replaces_the_id_token(
    authorization_server: AuthorizationServer,
) -> None:
    """A refreshed id_token for the same person replaces the one held."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        first = await client.get_token("a")
        server.id_tokens.claims["name"] = "Alice Liddell"
        refreshed = await client.refresh("a")
        assert first.id_token != refreshed.id_token
        assert "Alice Liddell" == (await client.identity("a")).name


async def test_no_id_token_without_the_openid_scope(
    authorization_server: AuthorizationServer,
) -> None:
    """Without the openid scope the server gives no id_token, and identity() says so."""
    server = authorization_server
    async with make_client(server, scope="profile", on_code=approver(server)) as client:
        await client.get_token()
        with pytest.raises(IdentityError, match="has no id_token: sign in with the 'openid'"):
            await client.identity()


async def test_no_identity_before_sign_in(authorization_server: AuthorizationServer) -> None:
    """An account that never signed in (or signed out) has no identity."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        with pytest.raises(IdentityError, match="'nobody' is not signed in"):
            await client.identity("nobody")
        await client.get_token("a")
        await client.logout("a")
        with pytest.raises(IdentityError, match="'a' is not signed in"):
            await client.identity("a")


async def test_identity_of_a_token_stored_by_another_client(
    authorization_server: AuthorizationServer,
) -> None:
    """identity() reads the store when this process holds no token for the account."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as first:
        await first.get_token("a")
        async with make_client(server, store=first.store) as second:
            assert "user" == (await second.identity("a")).subject


# --- verify_identity ------------------------------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_verify_identity_accepts(
    authorization_server: AuthorizationServer, asynchronous: bool
) -> None:
    """verify_identity (sync or async) sees the verified identity and the account; True keeps
    the grant."""
    server = authorization_server
    seen: list[tuple[Identity, str]] = []

    def check(identity: Identity, account: str) -> bool:
        seen.append((identity, account))
        return identity.email == "alice@example.com"

    async def async_check(identity: Identity, account: str) -> bool:
        return check(identity, account)

    async with make_client(
        server,
        scope="openid",
        on_code=approver(server),
        verify_identity=async_check if asynchronous else check,
    ) as client:
        token = await client.get_token("tenant-42")
    assert [("user", "tenant-42")] == [(i.subject, a) for i, a in seen]
    assert token == await stored_token(client, "tenant-42")
    assert 0 == server.stats.grants_revoked


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_verify_identity_refusal_stores_nothing_and_revokes(
    authorization_server: AuthorizationServer, asynchronous: bool
) -> None:
    """A check that says no: the grant is revoked at the server, nothing is stored, and
    get_token() raises IdentityError naming the account, never the token."""
    server = authorization_server

    def check(identity: Identity, account: str) -> bool:
        return False

    async def async_check(identity: Identity, account: str) -> bool:
        return False

    async with make_client(
        server,
        scope="openid",
        on_code=approver(server),
        verify_identity=async_check if asynchronous else check,
    ) as client:
        with pytest.raises(IdentityError, match="verify_identity refused") as caught:
            await client.get_token("tenant-42")
        assert None is await client.store.get(client.store_key("tenant-42"))
        assert 1 == server.stats.grants_revoked
        assert "account 'tenant-42'" in str(caught.value)
        assert "the grant was revoked and nothing was stored" in str(caught.value)
        revoked = [r.form["token"] for r in server.requests if r.endpoint == "revoke"]
        assert 1 == len(revoked)
        assert revoked[0] not in str(caught.value)
        # The revoked grant does not come back: a new flow runs on the next call.
        with pytest.raises(IdentityError):
            await client.get_token("tenant-42")
    assert 2 == server.stats.device_authorizations


async def test_verify_identity_refusal_in_authorize(
    authorization_server: AuthorizationServer,
) -> None:
    """authorize() ends FAILED with the IdentityError, and no token in any event."""
    server = authorization_server
    async with make_client(
        server, scope="openid", verify_identity=lambda identity, account: False
    ) as client:
        events = []
        async for event in client.authorize("a"):
            if event.state is FlowState.PENDING and event.code is not None:
                server.approve(event.code.user_code)
            events.append(event)
    assert FlowState.FAILED is events[-1].state
    assert isinstance(events[-1].error, IdentityError)
    assert all(event.token is None for event in events)
    assert None is await stored_token(client, "a")


async def test_verify_identity_without_an_id_token_refuses(
    authorization_server: AuthorizationServer,
) -> None:
    """verify_identity cannot judge a grant without an id_token: it is refused and revoked."""
    server = authorization_server
    called: list[str] = []

    def check(identity: Identity, account: str) -> bool:
        called.append(account)
        return True

    async with make_client(
        server, scope="profile", on_code=approver(server), verify_identity=check
    ) as client:
        with pytest.raises(IdentityError, match="gave no id_token"):
            await client.get_token("a")
    assert [] == called
    assert 1 == server.stats.grants_revoked


async def test_verify_identity_with_a_bad_id_token_refuses(
    authorization_server: AuthorizationServer,
) -> None:
    """An id_token that does not verify (here: expired on arrival) fails verify_identity."""
    server = authorization_server
    server.id_tokens.lifetime = -600
    async with make_client(
        server,
        scope="openid",
        on_code=approver(server),
        verify_identity=lambda identity, account: True,
    ) as client:
        with pytest.raises(IdentityError, match="had expired when it was received"):
            await client.get_token("a")
        assert None is await stored_token(client, "a")
    assert 1 == server.stats.grants_revoked


async def test_a_check_that_raises_revokes_and_propagates(
    authorization_server: AuthorizationServer,
) -> None:
    """An exception in the check is the caller's: it propagates, after the grant is revoked."""
    server = authorization_server

    def check(identity: Identity, account: str) -> bool:
        raise LookupError("tenant directory unavailable")

    async with make_client(
        server, scope="openid", on_code=approver(server), verify_identity=check
    ) as client:
        with pytest.raises(LookupError):
            await client.get_token("a")
        assert None is await stored_token(client, "a")
    assert 1 == server.stats.grants_revoked


async def test_refusal_without_revocation_endpoint(
    authorization_server: AuthorizationServer,
) -> None:
    """Where the provider offers no revocation, nothing is stored and the message says so."""
    server = authorization_server
    provider = Provider(
        issuer=server.issuer,
        device_authorization_endpoint=server.device_authorization_endpoint,
        token_endpoint=server.token_endpoint,
        jwks_uri=server.jwks_uri,
    )
    async with make_client(
        server,
        provider=provider,
        scope="openid",
        on_code=approver(server),
        verify_identity=lambda identity, account: False,
    ) as client:
        with pytest.raises(IdentityError, match="did not confirm a revocation"):
            await client.get_token("a")
        assert None is await stored_token(client, "a")


def test_verify_identity_must_be_callable() -> None:
    """A verify_identity that cannot be called is a TypeError at construction."""
    with pytest.raises(TypeError, match="verify_identity must be a callable"):
        DeviceFlowClient(
            Provider(issuer="https://idp.example"),
            client_id="svc",
            verify_identity=True,  # type: ignore[arg-type]
        )


# --- the provider's keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault(endpoint="jwks", status=503), "the provider's JWKS answered HTTP 503"),
        (
            Fault(endpoint="jwks", status=200, content_type="text/html", body="<html>"),
            "the provider's JWKS is not a JSON JWK set",
        ),
        (
            Fault(endpoint="jwks", status=200, content_type="application/json", body="[1]"),
            "the provider's JWKS is not a JSON JWK set",
        ),
    ],
)
async def test_a_broken_jwks_is_an_identity_error_and_is_asked_again_later(
    authorization_server: AuthorizationServer, fault: Fault, message: str
) -> None:
    """A JWKS that fails is an IdentityError; it is asked again only a minute later."""
    server = authorization_server
    server.faults.add(fault)
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, server.id_tokens.mint("svc")))
        with pytest.raises(IdentityError, match=message):
            await client.identity("a")
        with pytest.raises(IdentityError, match="JWKS does not have"):
            await client.identity("a")
        assert 1 == jwks_fetches(server)
        await server.clock.sleep(61)
        assert "user" == (await client.identity("a")).subject
    assert 2 == jwks_fetches(server)


async def test_unusable_keys_in_the_jwks_are_skipped(
    authorization_server: AuthorizationServer,
) -> None:
    """Symmetric, encryption, unknown, malformed and weak keys in the JWKS are skipped; the
    provider's signing key among them still verifies."""
    from joserfc.jwk import RSAKey

    server = authorization_server
    real = server.id_tokens.jwks()["keys"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns of a key this weak: that is the point
        weak = RSAKey.generate_key(1024, private=False).as_dict(private=False)
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": server.id_tokens.kid},
            {**real[0], "use": "enc"},
            {"kty": "XYZ", "kid": "x"},
            {"kty": "EC", "crv": "P-256", "x": "not base64!"},
            "not a key",
            {**weak, "kid": "weak"},
            *real,
        ]
    }
    server.faults.add(
        Fault(
            endpoint="jwks",
            status=200,
            content_type="application/json",
            body=json.dumps(document),
        )
    )
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, server.id_tokens.mint("svc")))
        assert "user" == (await client.identity("a")).subject


async def test_an_id_token_without_kid_uses_the_key_that_fits(
    authorization_server: AuthorizationServer,
) -> None:
    """Without a kid, the keys of the token's algorithm are tried in turn."""
    server = authorization_server
    unnamed = server.id_tokens.mint("svc", kid="")
    assert "kid" not in json.loads(base64.urlsafe_b64decode(unnamed.split(".")[0] + "=="))
    server.id_tokens.rotate()  # two published keys now: the token's is the second
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, unnamed))
        assert "user" == (await client.identity("a")).subject


async def test_concurrent_identities_share_one_fetch(
    authorization_server: AuthorizationServer,
) -> None:
    """Callers that need the keys at once wait for one fetch of the JWKS."""
    server = authorization_server
    async with make_client(server) as client:
        accounts = [f"a{n}" for n in range(10)]
        for account in accounts:
            await plant(client, account, with_id_token(server, server.id_tokens.mint("svc")))
        identities = await asyncio.gather(*(client.identity(a) for a in accounts))
    assert {"user"} == {identity.subject for identity in identities}
    assert 1 == jwks_fetches(server)


async def test_identity_with_a_provider_discovered_beforehand(
    authorization_server: AuthorizationServer,
) -> None:
    """Provider.discover() keeps the document's jwks_uri and issuer for identity()."""
    server = authorization_server
    provider = await Provider.discover(server.issuer)
    async with make_client(
        server, provider=provider, scope="openid", on_code=approver(server)
    ) as client:
        await client.get_token()
        assert server.issuer == (await client.identity()).issuer
    assert 1 == jwks_fetches(server)


@pytest.mark.authorization_server(
    metadata_overrides={"issuer": "https://idp.example/{tenantid}/v2.0"}
)
async def test_the_discovered_issuer_wins_over_the_one_asked_for(
    authorization_server: AuthorizationServer,
) -> None:
    """With check_issuer=False the id_token must name the document's issuer, as Entra's
    common document does with its {tenantid} placeholder."""
    server = authorization_server
    tid = "0c5a54a2-3f1e-4b6e-9a51-7d2c1e8f4b3a"
    provider = await Provider.discover(server.issuer, check_issuer=False)
    token = server.id_tokens.mint("svc", tid=tid, iss=f"https://idp.example/{tid}/v2.0")
    async with make_client(server, provider=provider) as client:
        await plant(client, "a", with_id_token(server, token))
        assert tid == (await client.identity("a")).claims["tid"]
        await plant(client, "b", with_id_token(server, server.id_tokens.mint("svc")))
        with pytest.raises(IdentityError, match="names the issuer"):
            await client.identity("b")


# --- at receipt (pure) ------------------------------------------------------------------------


def _jwt(claims: object, header: object | None = None) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header or {'alg': 'ES256'})}.{part(claims)}.c2lnbmF0dXJl"


NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
GOOD = {"iss": "https://idp.example", "sub": "u", "iat": NOW.timestamp(), "exp": 2e9}


@pytest.mark.parametrize(
    ("id_token", "problem"),
    [
        ("a.!!!.c", "is not a JWT"),
        (_jwt(["not", "an", "object"]), "is not a JWT"),
        (_jwt({**GOOD, "sub": None}), "has no iss or no sub"),
        (_jwt({**GOOD, "iss": ""}), "has no iss or no sub"),
        (_jwt({**GOOD, "exp": True}), "has no exp or no iat"),
        (_jwt({**GOOD, "iat": "now"}), "has no exp or no iat"),
    ],
)
def test_an_unreadable_id_token_is_not_kept_on_arrival(
    id_token: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An id_token that is no JWT or lacks iss, sub, exp or iat is dropped when it arrives,
    and the warning names the account but not the token."""
    token = Token(access_token="at", id_token=id_token)
    with caplog.at_level(logging.WARNING, logger="deviceflow"):
        kept = receive(None, token, account="acme", now=NOW)
    assert None is kept.id_token
    assert f"account 'acme': the id_token {problem}; it is not kept" in caplog.text
    assert id_token not in caplog.text


def test_a_readable_id_token_is_kept_on_arrival() -> None:
    """An id_token with iss, sub, a current exp and a past iat is kept as it came."""
    token = Token(access_token="at", id_token=_jwt(GOOD))
    assert token is receive(None, token, account="a", now=NOW)


async def test_a_key_id_that_is_not_a_string_is_refused(
    authorization_server: AuthorizationServer,
) -> None:
    """A header whose kid is not a string is refused before any key is fetched."""
    server = authorization_server
    forged = _jwt({**GOOD, "aud": "svc"}, {"alg": "ES256", "kid": 7})
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, forged))
        with pytest.raises(IdentityError, match="key id that is not a string"):
            await client.identity("a")
    assert 0 == jwks_fetches(server)


def test_identity_is_shown_by_name_username_email_or_subject() -> None:
    """str(Identity) picks the best label there is, and adds the email when it differs."""
    issuer = "https://idp.example"
    assert "Bob" == str(Identity(subject="s", issuer=issuer, name="Bob"))
    named = Identity(subject="s", issuer=issuer, claims={"preferred_username": "bob@corp"})
    assert "bob@corp" == str(named)
    assert "b@x.example" == str(Identity(subject="s", issuer=issuer, email="b@x.example"))
    assert "s" == str(Identity(subject="s", issuer=issuer))


def test_the_test_server_signs_with_rs256_or_es256_only() -> None:
    """AuthorizationServer refuses other id_token algorithms at construction."""
    with pytest.raises(ValueError, match="id_token_algorithm"):
        AuthorizationServer(id_token_algorithm="HS256")  # type: ignore[arg-type]


async def test_a_client_closed_during_the_check_still_revokes_the_grant(
    authorization_server: AuthorizationServer,
) -> None:
    """A flow cut off while verify_identity runs (the client closes) leaves no grant alive and
    nothing stored."""
    server = authorization_server
    checking = asyncio.Event()

    async def slow_check(identity: Identity, account: str) -> bool:
        checking.set()
        await asyncio.Event().wait()  # never answers
        return True

    client = make_client(
        server, scope="openid", on_code=approver(server), verify_identity=slow_check
    )
    waiter = asyncio.create_task(client.get_token("a"))
    await checking.wait()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed during this call"):
        await waiter
    assert None is await stored_token(client, "a")
    assert 1 == server.stats.grants_revoked


# --- failing closed, and never losing a grant -------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind"),
    [("no, s3cret-tenant", "str"), (["s3cret-tenant"], "list"), (1, "int")],
)
async def test_only_true_from_verify_identity_accepts(
    authorization_server: AuthorizationServer, answer: object, kind: str
) -> None:
    """A check answering anything but True (a truthy string, a list, 1) refuses who signed
    in: the grant is revoked, nothing is stored, and the message names the answer's type but
    never its value."""
    server = authorization_server
    async with make_client(
        server,
        scope="openid",
        on_code=approver(server),
        verify_identity=lambda identity, account: answer,
    ) as client:
        with pytest.raises(IdentityError, match=f"verify_identity returned a {kind}, not True"):
            await client.get_token("a")
        assert None is await stored_token(client, "a")
    assert 1 == server.stats.grants_revoked


async def test_a_refusal_is_revoked_even_when_the_client_closes_meanwhile(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A flow cut off while the refused grant is being revoked still revokes it: the
    revocation after a False answer is shielded from cancellation."""
    server = authorization_server
    checked = asyncio.Event()

    def check(identity: Identity, account: str) -> bool:
        checked.set()
        return False

    server.faults.add(Fault(endpoint="revoke", status=None, delay=0.2))
    client = make_client(server, scope="openid", on_code=approver(server), verify_identity=check)
    waiter = asyncio.create_task(client.get_token("a"))
    await checked.wait()  # the revocation request is on its way
    with caplog.at_level(logging.INFO, logger="deviceflow"):
        await client.aclose()
        with pytest.raises((RuntimeError, IdentityError)):
            await waiter
    assert "account 'a': the new grant was not accepted; it was revoked" in caplog.text
    assert 1 == server.stats.grants_revoked
    assert None is await stored_token(client, "a")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


#: A JSON document nested deeper than the interpreter's recursion limit.
DEEP = "[" * 100_000 + "]" * 100_000


def test_a_deeply_nested_id_token_is_not_kept_on_arrival() -> None:
    """An id_token whose claims nest too deeply to read is not a JWT: it is dropped, without
    a RecursionError; so is one with an exp beyond any float."""
    for id_token in (f"{_b64('{}')}.{_b64(DEEP)}.c2ln", _jwt({**GOOD, "exp": 10**400})):
        assert (
            None
            is receive(
                None, Token(access_token="at", id_token=id_token), account="a", now=NOW
            ).id_token
        )


async def test_a_deeply_nested_header_is_refused_on_use(
    authorization_server: AuthorizationServer,
) -> None:
    """An id_token whose header nests too deeply is an IdentityError, not a RecursionError."""
    server = authorization_server
    claims = server.id_tokens.mint("svc").split(".")[1]
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, f"{_b64(DEEP)}.{claims}.c2ln"))
        with pytest.raises(IdentityError, match="not a signed JWT"):
            await client.identity("a")


async def test_a_refresh_with_a_malformed_id_token_keeps_the_new_refresh_token(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh answer whose id_token cannot be read stores the rotated refresh token, and
    keeps the id_token held."""
    server = authorization_server
    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        first = await client.get_token("a")
        answer = {
            "access_token": "at-2",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "rt-rotated",
            "id_token": f"{_b64('{}')}.{_b64(DEEP)}.c2ln",
        }
        server.faults.add(
            Fault(
                endpoint="token",
                status=200,
                content_type="application/json",
                body=json.dumps(answer),
            )
        )
        with caplog.at_level(logging.WARNING, logger="deviceflow"):
            refreshed = await client.refresh("a")
        assert ("rt-rotated", first.id_token) == (refreshed.refresh_token, refreshed.id_token)
    stored = await stored_token(client, "a")
    assert stored is not None
    assert ("rt-rotated", first.id_token) == (stored.refresh_token, stored.id_token)
    assert "account 'a'" in caplog.text


async def test_a_failing_id_token_check_on_refresh_keeps_the_new_tokens(
    authorization_server: AuthorizationServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever fails while the refreshed id_token is checked (here a fault injected into the
    check), the refreshed tokens are stored with the id_token held, and a warning names the
    account."""
    server = authorization_server

    def broken(*args: object, **kwargs: object) -> Token:
        raise MemoryError

    async with make_client(server, scope="openid", on_code=approver(server)) as client:
        first = await client.get_token("a")
        monkeypatch.setattr("deviceflow._refresh.receive", broken)
        with caplog.at_level(logging.WARNING, logger="deviceflow"):
            refreshed = await client.refresh("a")
        assert first.refresh_token != refreshed.refresh_token
        assert first.id_token == refreshed.id_token
    stored = await stored_token(client, "a")
    assert stored is not None
    assert refreshed.refresh_token == stored.refresh_token
    assert "account 'a': the refreshed id_token could not be checked (MemoryError)" in caplog.text


def test_a_refreshed_id_token_may_spell_the_issuer_another_accepted_way() -> None:
    """Google's two spellings of its issuer name one issuer: a refreshed id_token for the same
    sub replaces the one held; an issuer outside the accepted set still does not."""
    google = ("https://accounts.google.com", "accounts.google.com")
    held = Token(access_token="at", id_token=_jwt({**GOOD, "iss": google[0]}))
    new = Token(access_token="at2", id_token=_jwt({**GOOD, "iss": google[1]}))
    assert new is receive(held, new, account="a", now=NOW, issuers=google)
    assert held.id_token == receive(held, new, account="a", now=NOW).id_token
    odd = Token(access_token="at2", id_token=_jwt({**GOOD, "iss": "accounts.google.com/"}))
    assert held.id_token == receive(held, odd, account="a", now=NOW, issuers=google).id_token


# --- keys out of reach ------------------------------------------------------------------------


async def test_an_unreachable_jwks_is_asked_at_most_once_a_minute(
    authorization_server: AuthorizationServer,
) -> None:
    """A JWKS that cannot be reached is a TransportError, and is not asked again for a
    minute however often identity() is called."""
    server = authorization_server
    server.faults.add(Fault(endpoint="jwks", drop=True, times=None))
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, server.id_tokens.mint("svc")))
        with pytest.raises(TransportError):
            await client.identity("a")
        tried = jwks_fetches(server)  # the transport retries a dropped GET by itself
        for _ in range(5):
            with pytest.raises(IdentityError, match="JWKS does not have"):
                await client.identity("a")
        assert tried == jwks_fetches(server)
        server.faults.clear()
        await server.clock.sleep(61)
        assert "user" == (await client.identity("a")).subject
    assert tried + 1 == jwks_fetches(server)


@pytest.mark.parametrize(
    "fault",
    [Fault(endpoint="jwks", status=503, times=None), Fault(endpoint="jwks", drop=True, times=None)],
)
async def test_old_keys_serve_when_the_jwks_cannot_be_fetched_again(
    authorization_server: AuthorizationServer, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the cached JWKS is an hour old and fetching it fails, the keys held stay in use
    (a warning says so), and the fetch is tried again a minute later, not at every call."""
    server = authorization_server
    async with make_client(server) as client:
        await plant(client, "a", with_id_token(server, server.id_tokens.mint("svc")))
        await client.identity("a")
        server.faults.add(fault)
        await server.clock.sleep(3601)
        with caplog.at_level(logging.WARNING, logger="deviceflow"):
            assert "user" == (await client.identity("a")).subject
            tried = jwks_fetches(server)  # the transport may retry a dropped GET by itself
            for _ in range(3):
                assert "user" == (await client.identity("a")).subject
        assert tried == jwks_fetches(server)
        assert "the keys fetched before stay in use" in caplog.text
        server.faults.clear()
        await server.clock.sleep(61)
        assert "user" == (await client.identity("a")).subject
        assert tried + 1 == jwks_fetches(server)
        await client.identity("a")
    assert tried + 1 == jwks_fetches(server)


async def test_a_grant_is_admitted_with_old_keys_when_the_jwks_fails(
    authorization_server: AuthorizationServer,
) -> None:
    """verify_identity still sees who signed in when the JWKS fails after an hour: the grant
    it accepts is stored, not revoked."""
    server = authorization_server
    async with make_client(
        server,
        scope="openid",
        on_code=approver(server),
        verify_identity=lambda identity, account: True,
    ) as client:
        await client.get_token("a")
        server.faults.add(Fault(endpoint="jwks", status=503, times=None))
        await server.clock.sleep(3601)
        assert (await client.get_token("b")).access_token
        assert None is not await stored_token(client, "b")
    assert 0 == server.stats.grants_revoked


# --- save_token -------------------------------------------------------------------------------


async def test_save_token_keeps_a_good_id_token(
    authorization_server: AuthorizationServer,
) -> None:
    """save_token() stores an id_token that passes the checks at receipt."""
    server = authorization_server
    token = with_id_token(server, server.id_tokens.mint("svc"))
    async with make_client(server) as client:
        await client.save_token("a", token)
        assert "user" == (await client.identity("a")).subject
    assert token == await stored_token(client, "a")


async def test_save_token_drops_a_bad_id_token_and_stores_the_rest(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An expired, forged or foreign id_token given to save_token() is dropped with a warning
    naming the account; the rest of the token is stored, and identity() says there is none."""
    server = authorization_server
    now = server.clock.wall().timestamp()
    bad = [
        server.id_tokens.mint("svc", iat=now - 7200, exp=now - 3600),
        server.id_tokens.mint("svc", unpublished_key=True),
        server.id_tokens.mint("svc", iss="https://elsewhere.example"),
        server.id_tokens.mint("other-client"),
        "not-a-jwt",
    ]
    async with make_client(server) as client:
        for number, id_token in enumerate(bad):
            token = with_id_token(server, id_token)
            account = f"m{number}"
            with caplog.at_level(logging.WARNING, logger="deviceflow"):
                await client.save_token(account, token)
            assert attrs.evolve(token, id_token=None) == await stored_token(client, account)
            assert f"account {account!r}: save_token drops the id_token" in caplog.text
            assert id_token not in caplog.text
            with pytest.raises(IdentityError, match="has no id_token"):
                await client.identity(account)


async def test_save_token_stores_the_token_when_the_keys_are_out_of_reach(
    authorization_server: AuthorizationServer,
) -> None:
    """A JWKS out of reach does not stop save_token(): the token is stored without its
    id_token, which cannot be checked."""
    server = authorization_server
    server.faults.add(Fault(endpoint="jwks", drop=True, times=None))
    token = with_id_token(server, server.id_tokens.mint("svc"))
    async with make_client(server) as client:
        await client.save_token("a", token)
    assert attrs.evolve(token, id_token=None) == await stored_token(client, "a")
