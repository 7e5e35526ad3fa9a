"""status, logout, keygen and the store key, run as real processes against the test server."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path
from typing import Protocol

import pytest
from cli_harness import BOB_SCOPE, Cli, ServerThread, login_approved

from deviceflow.stores import EncryptedFileStore, KeySet, generate_key


class _Redis(Protocol):
    """What the tests need of the ``redis_server`` fixture (tests/_redis.py)."""

    @property
    def url(self) -> str: ...


def _stored_secrets(cli: Cli) -> list[str]:
    """Every string value of every token record in the CLI's store (read with its key)."""

    async def read() -> list[str]:
        store = EncryptedFileStore(cli.store, key=cli.key)
        found = []
        index = await store.get("deviceflow-cli-index")
        assert index is not None
        for entry in json.loads(index.value)["accounts"]:
            record = await store.get(entry["key"])
            assert record is not None
            token = json.loads(record.value)["token"]
            found += [token["access_token"], token["refresh_token"]]
        await store.aclose()
        return found

    return asyncio.run(read())


def _records(cli: Cli, keys: list[str]) -> list[dict[str, object] | None]:
    """The decoded records under ``keys`` in the CLI's store (read with its key)."""

    async def read() -> list[dict[str, object] | None]:
        store = EncryptedFileStore(cli.store, key=cli.key)
        found = [await store.get(key) for key in keys]
        await store.aclose()
        return [None if got is None else json.loads(got.value) for got in found]

    return asyncio.run(read())


def _index_keys(cli: Cli) -> list[str]:
    """The record keys of the accounts the CLI's index lists."""

    async def read() -> list[str]:
        store = EncryptedFileStore(cli.store, key=cli.key)
        index = await store.get("deviceflow-cli-index")
        await store.aclose()
        return [] if index is None else [e["key"] for e in json.loads(index.value)["accounts"]]

    return asyncio.run(read())


def test_status_lists_accounts_without_secrets(signed_in: tuple[Cli, ServerThread]) -> None:
    """status shows each account's issuer, client, scope, expiry and refresh token, no secret."""
    cli, server = signed_in
    table, as_json = cli.run_many(["status"], ["status", "--json"])

    assert (0, "", 0) == (table.returncode, table.stderr, as_json.returncode)
    header, *rows = table.stdout.splitlines()
    assert [
        *("ACCOUNT", "ISSUER", "CLIENT", "ID", "SCOPE", "EXPIRES", "REFRESH", "TOKEN"),
        *("SIGNED", "IN", "AS"),
    ] == header.split()
    bob = next(row for row in rows if row.startswith("bob "))
    assert [server.issuer, "other-app", *BOB_SCOPE.split()] == bob.split()[1:6]
    # A one-hour token read within a minute of sign-in (under half a second: rounds to 1 h).
    assert re.search(r" UTC \(in (5\d min|1 h)\)  yes +alice \(alice@example.com\)$", bob)
    listed = sorted(
        (a["account"], a["client_id"], a["signed_in"], a["has_refresh_token"])
        for a in json.loads(as_json.stdout)
    )
    assert [("bob", "other-app", True, True), ("ci", "cli-test", True, True)] == listed
    secrets = _stored_secrets(cli)
    assert 4 == len(secrets)
    assert [] == [s for s in secrets if s in table.stdout + as_json.stdout]


def test_logout_revokes_deletes_and_unlists(cli: Cli, server: ServerThread) -> None:
    """logout revokes the grant at the server, leaves a tombstone where the token was (no secret
    in it), and status no longer lists the account."""
    assert 0 == login_approved(cli, server, *cli.server_args()).returncode
    access_token = _stored_secrets(cli)[0]
    keys = _index_keys(cli)

    result = cli.run("logout")
    status, token = cli.run_many(["status"], ["token", *cli.server_args()])

    assert (0, 1) == (result.returncode, len(server.requests("revoke")))
    assert "the server revoked the grant" in result.stdout  # a result: on stdout
    assert not server.is_valid(access_token)
    assert 1 == len(keys)
    (record,) = _records(cli, keys)
    assert record is not None
    assert ("logout", None) == (record["reason"], record.get("token"))
    assert (0, "No account is signed in with this store.\n") == (status.returncode, status.stdout)
    assert 6 == token.returncode
    assert "deviceflow login" in token.stderr


def test_wrong_key_exits_7_and_leaves_the_files_alone(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """With another key every command stops with exit 7 and a hint, and nothing is changed."""
    cli, server = signed_in
    before = cli.snapshot()
    devices = len(server.requests("device"))

    commands = {
        "token": ["token", "--account", "ci"],
        "login": ["login", "--account", "ci"],
        "logout": ["logout"],
        "status": ["status"],
    }
    wrong: dict[str, str | None] = {"DEVICEFLOW_KEY": generate_key()}
    results = dict(zip(commands, cli.run_many(*commands.values(), env=wrong), strict=True))

    assert dict.fromkeys(commands, 7) == {name: r.returncode for name, r in results.items()}
    for result in results.values():
        assert 1 == len(result.stderr.splitlines())
        assert "wrong key" in result.stderr
        assert "set DEVICEFLOW_KEY or --key-file to that key" in result.stderr
    assert before == cli.snapshot()
    assert devices == len(server.requests("device"))  # login stopped before asking for a code


def test_key_file_is_created_on_first_use_with_a_note(cli: Cli, server: ServerThread) -> None:
    """Without DEVICEFLOW_KEY a 0600 key file is created once, with a note, and then reused."""
    no_key: dict[str, str | None] = {"DEVICEFLOW_KEY": None}
    key_file = Path(cli.environment()["XDG_CONFIG_HOME"]) / "deviceflow" / "store.key"

    first = login_approved(cli, server, *cli.server_args(), env=no_key)
    second = cli.run("token", env=no_key)

    assert (0, True) == (first.returncode, key_file.exists())
    assert f"created a new store key in {key_file}" in first.stderr
    assert 0o600 == stat.S_IMODE(key_file.stat().st_mode)
    assert (0, "") == (second.returncode, second.stderr)


def test_keygen_prints_or_writes_a_private_key_file(cli: Cli) -> None:
    """keygen prints a key; -o writes a new 0600 key file the store reads, never overwriting."""
    path = cli.home / "keys" / "store.key"
    printed, written = cli.run_many(["keygen"], ["keygen", "--output", str(path)])
    content = path.read_text()
    again = cli.run("keygen", "--output", str(path))

    assert (0, 44, "") == (printed.returncode, len(printed.stdout.strip()), printed.stderr)
    assert (0, "", 0o600) == (written.returncode, written.stderr, stat.S_IMODE(path.stat().st_mode))
    assert written.stdout.startswith(f"Wrote a new store key to {path} (mode 0600).")
    assert (1, content) == (again.returncode, path.read_text())
    assert "already exists" in again.stderr
    assert printed.stdout.strip() not in content
    KeySet.from_file(path)  # what --key-file and DEVICEFLOW_KEY_FILE read: no error


@pytest.mark.redis
def test_login_and_status_with_a_redis_store(
    cli: Cli, server: ServerThread, redis_server: _Redis
) -> None:
    """--store redis://... keeps the token and the account index in Redis."""
    store = {"DEVICEFLOW_STORE": redis_server.url}
    login = login_approved(cli, server, *cli.server_args(), "--account", "in-redis", env=store)
    token, status = cli.run_many(["token", "--account", "in-redis"], ["status"], env=store)
    assert (0, 0, 0) == (login.returncode, token.returncode, status.returncode)
    assert server.is_valid(token.stdout.strip())
    assert ["in-redis", server.issuer, "cli-test"] == status.stdout.splitlines()[1].split()[:3]
    assert {} == cli.snapshot()  # nothing was written to the file store
