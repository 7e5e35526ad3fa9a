"""Each preset's identity quirks, against the built-in server running that provider's profile:
where the keys are, which issuer id_tokens name (Entra's tenant, Google's two spellings), and
providers that issue no id_token at all."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from provider_cases import CASE_IDS, CASES, Case, base, deciding

from deviceflow import DeviceFlowClient, Identity, IdentityError, Provider, Token
from deviceflow.testing import PROFILES, AuthorizationServer, VirtualClock
from helpers import plant

CASE = {case.name: case for case in CASES}
#: The tenant id the entra profile's people belong to.
TID = PROFILES["entra"].id_token_claims["tid"]
OTHER_TID = "9b2d5f0e-7c41-4e8a-b3d6-2f1a0c9e8d7b"


def stored(server: AuthorizationServer, client_id: str, id_token: str) -> Token:
    """A token of a new grant at ``server``, carrying ``id_token``."""
    issued = server.issue_tokens(client_id, scope="openid")
    return Token(access_token=issued["access_token"], id_token=id_token)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
async def test_each_preset_knows_who_signed_in(case: Case, virtual_clock: VirtualClock) -> None:
    """Every OpenID preset verifies the id_token of a device flow; GitHub and AWS say they
    issue none."""
    async with case.running(virtual_clock) as server:
        scope = case.client.get("scope") or case.provider(server).default_scope or ""
        client = case.client_for(server, virtual_clock, on_code=deciding(server))
        async with client:
            await client.get_token()
            if "openid" in scope.split() and case.provider(server).issues_id_tokens:
                identity = await client.identity()
                assert ("user", "alice@example.com") == (identity.subject, identity.email)
            else:
                with pytest.raises(IdentityError, match="issues no id_token"):
                    await client.identity()


async def test_entra_multi_tenant_issuer_names_the_tokens_tenant(
    virtual_clock: VirtualClock,
) -> None:
    """With organizations, the metadata's {tenantid} issuer is filled with the token's tid."""
    case = CASE["entra"]
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server))
        async with client:
            await client.get_token()
            identity = await client.identity()
            assert f"{base(server)}/{TID}/v2.0" == identity.issuer
            assert TID == identity.claims["tid"]
            # A token whose iss names one tenant and whose tid names another is refused.
            forged = server.id_tokens.mint("cli", tid=OTHER_TID)
            await plant(client, "forged", stored(server, "cli", forged))
            with pytest.raises(IdentityError, match="names the issuer"):
                await client.identity("forged")
            # So is one without a tid, or with a tid that is no tenant id.
            for tid in (None, "../evil"):
                await plant(
                    client, "odd", stored(server, "cli", server.id_tokens.mint("cli", tid=tid))
                )
                with pytest.raises(IdentityError, match="names the issuer"):
                    await client.identity("odd")
            # Another tenant's token, consistent in itself, verifies: bind tenants with a check.
            other = server.id_tokens.mint(
                "cli", tid=OTHER_TID, iss=f"{base(server)}/{OTHER_TID}/v2.0"
            )
            await plant(client, "other", stored(server, "cli", other))
            assert OTHER_TID == (await client.identity("other")).claims["tid"]


async def test_entra_binds_an_account_to_its_directory(virtual_clock: VirtualClock) -> None:
    """The multi-tenant how-to's check: an account accepts only people of its directory."""
    case = CASE["entra"]
    directories = {"tenant-42": TID, "tenant-7": OTHER_TID}

    def same_directory(identity: Identity, account: str) -> bool:
        return identity.claims.get("tid") == directories.get(account)

    async with case.running(virtual_clock) as server:
        client = case.client_for(
            server, virtual_clock, on_code=deciding(server), verify_identity=same_directory
        )
        async with client:
            assert (await client.get_token("tenant-42")).access_token
            with pytest.raises(IdentityError, match="'tenant-7': verify_identity refused"):
                await client.get_token("tenant-7")
            assert None is await client.store.get(client.store_key("tenant-7"))
        assert 1 == server.stats.grants_revoked


async def test_entra_tenant_by_domain_accepts_only_its_own_directory(
    virtual_clock: VirtualClock,
) -> None:
    """A tenant named by its domain signs in without discovery, finds its keys at the
    documented path, and accepts only the issuer its own discovery document names (its tenant
    id): another directory's id_token, signed with the same keys, is refused."""
    profile = attrs.evolve(PROFILES["entra"], metadata_issuer=f"{{base}}/{TID}/v2.0")
    async with AuthorizationServer(
        clock=virtual_clock, profile=profile, issuer_path="/contoso.example/v2.0"
    ) as server:
        provider = Provider.entra("contoso.example", authority=base(server))
        assert f"{base(server)}/contoso.example/discovery/v2.0/keys" == provider.jwks_uri
        # The test server serves the tenant's endpoints below its issuer path.
        provider = attrs.evolve(
            provider,
            device_authorization_endpoint=server.device_authorization_endpoint,
            token_endpoint=server.token_endpoint,
            jwks_uri=server.jwks_uri,
        )
        client = DeviceFlowClient(
            provider, client_id="cli", clock=virtual_clock, on_code=deciding(server)
        )
        async with client:
            await client.get_token()
            identity = await client.identity()
            assert (f"{base(server)}/{TID}/v2.0", TID) == (identity.issuer, identity.claims["tid"])
            other = server.id_tokens.mint(
                "cli", tid=OTHER_TID, iss=f"{base(server)}/{OTHER_TID}/v2.0"
            )
            await plant(client, "other", stored(server, "cli", other))
            with pytest.raises(IdentityError, match="names the issuer"):
                await client.identity("other")
    assert ["device", "token", "jwks", "discovery"] == [r.endpoint for r in server.requests]


async def test_entra_tenant_by_domain_without_a_usable_document_says_what_to_give(
    virtual_clock: VirtualClock,
) -> None:
    """When the tenant's discovery document names no concrete issuer, identity() is an
    IdentityError that names the argument to give."""
    async with AuthorizationServer(
        clock=virtual_clock, profile="entra", issuer_path="/contoso.example/v2.0"
    ) as server:
        provider = attrs.evolve(
            Provider.entra("contoso.example", authority=base(server)), jwks_uri=server.jwks_uri
        )
        async with DeviceFlowClient(provider, client_id="cli", clock=virtual_clock) as client:
            await plant(client, "a", stored(server, "cli", server.id_tokens.mint("cli")))
            with pytest.raises(IdentityError, match=r"names no issuer.*id_token_issuers"):
                await client.identity("a")


@pytest.mark.parametrize("issuer", ["https://accounts.google.com", "accounts.google.com"])
async def test_google_issuer_in_either_form(issuer: str, virtual_clock: VirtualClock) -> None:
    """Google's id_tokens name their issuer with or without https://; both verify."""
    case = CASE["google"]
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock)
        async with client:
            await plant(
                client, "a", stored(server, "gcli", server.id_tokens.mint("gcli", iss=issuer))
            )
            assert issuer == (await client.identity("a")).issuer
            fake = server.id_tokens.mint("gcli", iss="https://accounts.google.com.evil.example")
            await plant(client, "b", stored(server, "gcli", fake))
            with pytest.raises(IdentityError, match="names the issuer"):
                await client.identity("b")


def test_google_preset_uses_googles_keys() -> None:
    """The Google preset verifies with Google's published keys and both issuer spellings."""
    provider = Provider.google()
    assert "https://www.googleapis.com/oauth2/v3/certs" == provider.jwks_uri
    assert ("https://accounts.google.com", "accounts.google.com") == provider.id_token_issuers


async def test_github_has_no_identity(virtual_clock: VirtualClock) -> None:
    """GitHub issues no id_token: identity() and verify_identity say so, naming the account."""
    case = CASE["github"]
    async with case.running(virtual_clock) as server:
        client = case.client_for(server, virtual_clock, on_code=deciding(server))
        async with client:
            token = await client.get_token("octo")
            assert token.id_token is None
            with pytest.raises(IdentityError, match="'octo': the github provider issues no"):
                await client.identity("octo")
        checked = case.client_for(
            server,
            virtual_clock,
            on_code=deciding(server),
            verify_identity=lambda identity, account: True,
        )
        async with checked:
            with pytest.raises(IdentityError, match="issues no id_token"):
                await checked.get_token("octo2")


async def test_provider_without_keys_or_issuer_says_what_to_give(
    virtual_clock: VirtualClock,
) -> None:
    """A hand-made Provider with neither jwks_uri nor an issuer names the argument to give."""
    async with AuthorizationServer(clock=virtual_clock) as server:

        def provider(**options: Any) -> Provider:
            return Provider(
                device_authorization_endpoint=server.device_authorization_endpoint,
                token_endpoint=server.token_endpoint,
                **options,
            )

        token = stored(server, "cli", server.id_tokens.mint("cli"))
        for bare, missing in (
            (provider(), "give Provider\\(jwks_uri=...\\)"),
            (provider(jwks_uri=server.jwks_uri), "id_token_issuers"),
        ):
            async with DeviceFlowClient(bare, client_id="cli", clock=virtual_clock) as client:
                await plant(client, "a", token)
                with pytest.raises(IdentityError, match=missing):
                    await client.identity("a")
        given = provider(jwks_uri=server.jwks_uri, id_token_issuers=server.issuer)
        assert (server.issuer,) == given.id_token_issuers
        async with DeviceFlowClient(given, client_id="cli", clock=virtual_clock) as client:
            await plant(client, "a", token)
            assert "user" == (await client.identity("a")).subject
