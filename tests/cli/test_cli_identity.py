"""Who signed in: `login` ends with it and `status` shows it, when the provider gives an
id_token; nothing is said when it gives none."""

from __future__ import annotations

import json
from pathlib import Path

from cli_harness import BOB_SCOPE, Cli, ServerThread, login_approved

from deviceflow.testing import Fault


def test_login_says_who_signed_in(cli: Cli, server: ServerThread) -> None:
    """With the openid scope, login ends with the verified name and email."""
    result = login_approved(cli, server, *cli.server_args(), "--scope", "openid")
    assert 0 == result.returncode, result.stderr
    assert "Signed in as alice (alice@example.com)" == result.stderr.splitlines()[-1]
    assert "" == result.stdout
    assert 1 == len(server.requests("jwks"))


def test_login_without_an_id_token_says_nothing_of_it(cli: Cli, server: ServerThread) -> None:
    """Without the openid scope there is no id_token, and no "Signed in as" line."""
    result = login_approved(cli, server, *cli.server_args(), "--scope", "profile")
    assert 0 == result.returncode, result.stderr
    assert "Signed in as" not in result.stderr
    assert [] == server.requests("jwks")


def test_github_login_says_nothing_of_identity(tmp_path: Path) -> None:
    """GitHub gives no id_token: login signs in and prints no identity, and status shows none."""
    with ServerThread(profile="github", interval=0.25, code_lifetime=60) as github:
        cli = Cli(tmp_path, github.issuer)
        try:
            args = ["--provider", "github", "--base-url", github.issuer, "--client-id", "gh"]
            result = login_approved(cli, github, *args, "--scope", "repo")
            assert 0 == result.returncode, result.stderr
            assert "Signed in as" not in result.stderr
            status = cli.run("status", "--json")
        finally:
            cli.close()
    assert [None] == [row["identity"] for row in json.loads(status.stdout)]


def test_status_shows_each_accounts_identity(signed_in: tuple[Cli, ServerThread]) -> None:
    """status --json gives each account's verified identity (None without an id_token)."""
    cli, _ = signed_in
    assert "openid" in BOB_SCOPE.split()
    result = cli.run("status", "--json")
    assert (0, "") == (result.returncode, result.stderr)
    identities = {row["account"]: row["identity"] for row in json.loads(result.stdout)}
    assert {"bob": "alice (alice@example.com)", "ci": None} == identities


def test_status_without_the_server_shows_no_identity_quickly(
    cli: Cli, server: ServerThread
) -> None:
    """An account whose provider cannot be reached shows no identity rather than an error."""
    assert 0 == login_approved(cli, server, *cli.server_args(), "--scope", "openid").returncode
    server.call(server.server.faults.add, Fault(endpoint="jwks", status=503, times=None))
    result = cli.run("status", "--json")
    assert (0, "") == (result.returncode, result.stderr)
    assert [None] == [row["identity"] for row in json.loads(result.stdout)]
