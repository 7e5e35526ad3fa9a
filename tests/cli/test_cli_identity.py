"""Who signed in: `login` ends with it and `status` shows it, when the provider gives an
id_token; nothing is said when it gives none."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from cli_harness import BOB_SCOPE, Cli, ServerThread, login_approved

from deviceflow._cli import _identity
from deviceflow._cli._store import AccountEntry
from deviceflow.stores import MemoryStore
from deviceflow.testing import AuthorizationServer, Fault
from helpers import make_client, plant, seed


def test_login_says_who_signed_in(cli: Cli, server: ServerThread) -> None:
    """With the openid scope, login ends with the verified name and email."""
    result = login_approved(cli, server, *cli.server_args(), "--scope", "openid")
    assert 0 == result.returncode, result.stderr
    # Off a terminal, the outcome is one line on stdout, naming who signed in.
    [outcome] = result.stdout.splitlines()
    assert outcome.startswith(f"Signed in account 'default' at {server.issuer}")
    assert " as alice (alice@example.com); " in outcome
    assert 1 == len(server.requests("jwks"))


def test_login_without_an_id_token_says_nothing_of_it(cli: Cli, server: ServerThread) -> None:
    """Without the openid scope there is no id_token, and no "Signed in as" line."""
    result = login_approved(cli, server, *cli.server_args(), "--scope", "profile")
    assert 0 == result.returncode, result.stderr
    assert " as alice" not in result.stdout + result.stderr
    assert [] == server.requests("jwks")


def test_github_login_says_nothing_of_identity(tmp_path: Path) -> None:
    """GitHub gives no id_token: login signs in and prints no identity, and status shows none."""
    with ServerThread(profile="github", interval=0.25, code_lifetime=60) as github:
        cli = Cli(tmp_path, github.issuer)
        try:
            args = ["--provider", "github", "--base-url", github.issuer, "--client-id", "gh"]
            result = login_approved(cli, github, *args, "--scope", "repo")
            assert 0 == result.returncode, result.stderr
            assert " as alice" not in result.stdout + result.stderr
            status = cli.run("status", "--json")
        finally:
            cli.close()
    assert [None] == [row["identity"] for row in json.loads(status.stdout)]


def test_status_shows_each_accounts_identity(signed_in: tuple[Cli, ServerThread]) -> None:
    """status --json gives each account's verified identity (both asked for openid: bob
    explicitly, ci through the CLI's default scope)."""
    cli, _ = signed_in
    assert "openid" in BOB_SCOPE.split()
    result = cli.run("status", "--json")
    assert (0, "") == (result.returncode, result.stderr)
    identities = {row["account"]: row["identity"] for row in json.loads(result.stdout)}
    assert {"bob": "alice (alice@example.com)", "ci": "alice (alice@example.com)"} == identities


def test_status_without_the_server_shows_no_identity_quickly(
    cli: Cli, server: ServerThread
) -> None:
    """An account whose provider cannot be reached shows no identity rather than an error."""
    assert 0 == login_approved(cli, server, *cli.server_args(), "--scope", "openid").returncode
    server.call(server.server.faults.add, Fault(endpoint="jwks", status=503, times=None))
    result = cli.run("status", "--json")
    assert (0, "") == (result.returncode, result.stderr)
    assert [None] == [row["identity"] for row in json.loads(result.stdout)]


# --- the helper itself, in this process -------------------------------------------------------


async def test_a_slow_provider_shows_no_identity(
    authorization_server: AuthorizationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider slower than IDENTITY_TIMEOUT to serve its keys gives no identity."""
    server = authorization_server
    monkeypatch.setattr(_identity, "IDENTITY_TIMEOUT", 0.05)
    server.faults.add(Fault(endpoint="jwks", status=None, delay=1.0))
    async with make_client(server, scope="openid") as client:
        await seed(client, server, "a")
        token = await client.get_token("a")
        id_token = server.id_tokens.mint("svc")
        await plant(client, "a", attrs.evolve(token, id_token=id_token))
        assert None is await _identity.signed_in_as(client, "a")


async def test_accounts_whose_client_cannot_be_made_show_no_identity(
    authorization_server: AuthorizationServer,
) -> None:
    """An entry of a preset that needs a secret not given, or of an unknown preset, shows no
    identity; the others still do."""
    server = authorization_server
    store = MemoryStore()
    async with make_client(server, scope="openid", store=store) as client:
        token = await seed(client, server, "a")
        id_token = server.id_tokens.mint("svc")
        await plant(client, "a", attrs.evolve(token, id_token=id_token))
        key = client.store_key("a")
    entries = [
        AccountEntry(key=key, issuer=server.issuer, client_id="svc", account="a"),
        AccountEntry(
            key="g",
            issuer=server.issuer,
            client_id="svc",
            account="g",
            provider="google",
            arguments={"base-url": server.issuer},
        ),
        AccountEntry(key="x", issuer=server.issuer, client_id="svc", account="x", provider="nope"),
    ]
    found = await _identity.signed_in_as_each(entries, store, None)
    assert {key: "alice (alice@example.com)", "g": None, "x": None} == found
