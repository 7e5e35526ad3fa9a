"""The places a newcomer gets stuck, each with the hint that gets them out.

Lost, changed and malformed store keys, ``token`` before any ``login``, an issuer with a
trailing slash too many, a host that does not answer or does not exist, signing in again over a
valid sign-in, and where results and progress go.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import pexpect
from cli_harness import COMMAND, Cli, ServerThread, login_approved

from deviceflow._cli._login import _denied, _issuer_mismatch
from deviceflow._cli._settings import load_settings
from deviceflow._cli._store import store_name
from deviceflow.exceptions import AccessDeniedError, DiscoveryError
from deviceflow.stores import generate_key
from deviceflow.testing import Fault
from helpers import time_factor

#: Makes every *.invalid name fail to resolve at once (RFC 2606 reserves the TLD: it never
#: resolves), whatever resolver the machine has or lacks; other names resolve as usual.
_NO_DNS = """
import socket
_real = socket.getaddrinfo
def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.rstrip(".").endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _real(host, *args, **kwargs)
socket.getaddrinfo = _getaddrinfo
"""


def _key_file(cli: Cli) -> Path:
    return Path(cli.environment()["XDG_CONFIG_HOME"]) / "deviceflow" / "store.key"


def _error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert 1 == len(lines), stderr
    assert lines[0].startswith("deviceflow: error: ")
    return lines[0]


def test_token_before_any_login_points_to_login_and_creates_no_key(cli: Cli) -> None:
    """`token` and `status` on a fresh machine: token says to run `deviceflow login`, status
    lists nothing, and neither creates a key file or a store."""
    no_key: dict[str, str | None] = {"DEVICEFLOW_KEY": None}
    token, status = cli.run_many(["token"], ["status"], env=no_key)
    assert 6 == token.returncode
    assert "Hint: sign in first: `deviceflow login --issuer URL --client-id ID`" in (
        _error_line(token.stderr)
    )
    assert (0, "No account is signed in with this store.\n", "") == (
        status.returncode,
        status.stdout,
        status.stderr,
    )
    assert not _key_file(cli).exists()
    assert not cli.store.exists()


def test_token_for_an_unknown_account_with_a_key_points_to_login(cli: Cli) -> None:
    """With a key but no sign-in, `token --issuer ...` names the login command to run."""
    result = cli.run("token", *cli.server_args(), "--account", "ci")
    line = _error_line(result.stderr)
    assert 6 == result.returncode
    assert (
        f"sign in first: `deviceflow login --issuer {cli.issuer} --client-id cli-test --account ci`"
    ) in line


def test_lost_key_says_where_the_store_is_and_how_to_start_over(
    cli: Cli, server: ServerThread
) -> None:
    """The key file is gone but tokens remain: every command says where the store and the key
    were and offers `deviceflow reset`; no new key hides the old tokens; reset then starts
    over and login works again."""
    no_key: dict[str, str | None] = {"DEVICEFLOW_KEY": None}
    assert 0 == login_approved(cli, server, *cli.server_args(), env=no_key).returncode
    _key_file(cli).unlink()
    before = cli.snapshot()

    results = cli.run_many(["token"], ["status"], ["login", *cli.server_args()], env=no_key)

    for result in results:
        line = _error_line(result.stderr)
        assert 7 == result.returncode
        assert f"the store key file {_key_file(cli)} is missing" in line
        assert f"the token store at {cli.store} holds tokens" in line
        assert "start over with `deviceflow reset`" in line
    assert not _key_file(cli).exists()
    assert before == cli.snapshot()

    refused = cli.run("reset", env=no_key)  # no terminal, no --yes: it asks for --yes
    assert (2, before) == (refused.returncode, cli.snapshot())
    assert "add --yes" in refused.stderr
    reset = cli.run("reset", "--yes", env=no_key)
    assert 0 == reset.returncode
    assert f"Deleted every stored token in {cli.store}" in reset.stdout
    assert {} == cli.snapshot()
    assert 0 == login_approved(cli, server, *cli.server_args(), env=no_key).returncode


def test_changed_key_names_the_store_and_reset(signed_in: tuple[Cli, ServerThread]) -> None:
    """With another key: where the store is, the variable to set, and `deviceflow reset`."""
    cli, _ = signed_in
    result = cli.run("status", env={"DEVICEFLOW_KEY": generate_key()})
    line = _error_line(result.stderr)
    assert 7 == result.returncode
    assert f"cannot read the token store at {cli.store}: wrong key" in line
    assert "set DEVICEFLOW_KEY or --key-file to that key" in line
    assert "`deviceflow reset`" in line


def test_malformed_key_says_make_one_with_keygen(cli: Cli) -> None:
    """A key that is not a key: the hint is `deviceflow keygen`, not the store's path."""
    bad_file = cli.home / "bad.key"
    bad_file.write_text("not-a-key\n")
    bad_file.chmod(0o600)
    from_env, from_file = cli.run_many(
        ["token"], ["token", "--key-file", str(bad_file)], env={"DEVICEFLOW_KEY": "not-a-key"}
    )
    for result in (from_env, from_file):
        line = _error_line(result.stderr)
        assert 7 == result.returncode
        assert "make a key with `deviceflow keygen`" in line
        assert "--store" not in line


def test_trailing_slash_issuer_offers_the_issuer_to_use(cli: Cli, server: ServerThread) -> None:
    """An issuer that differs from the server's by a slash: the hint is the exact issuer."""
    result = cli.run("login", "--issuer", f"{server.issuer}/", "--client-id", "x")
    line = _error_line(result.stderr)
    assert 6 == result.returncode
    assert f"the server names itself '{server.issuer}'" in line
    assert f"Hint: use --issuer {server.issuer}." in line
    assert "check_issuer" not in line


def test_connection_refused_fails_fast_in_plain_words(cli: Cli) -> None:
    """Nothing listens on the port: exit 5 with "connection refused", no library class names."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    result = cli.run("login", "--issuer", f"http://127.0.0.1:{port}", "--client-id", "x")
    line = _error_line(result.stderr)
    assert 5 == result.returncode
    assert "connection refused" in line
    assert "Client" not in line
    assert "Error" not in line.removeprefix("deviceflow: error: ")


def test_unknown_host_fails_fast_in_plain_words(cli: Cli) -> None:
    """A host name that does not exist: exit 5 with "host not found", no class names."""
    shim = cli.home / "no-dns"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_NO_DNS)
    result = cli.run(
        "login",
        "--issuer",
        "https://idp.deviceflow-test.invalid",
        "--client-id",
        "x",
        env={"PYTHONPATH": f"{shim}:{cli.environment().get('PYTHONPATH', '')}"},
    )
    line = _error_line(result.stderr)
    assert 5 == result.returncode
    assert "host not found" in line
    assert "Client" not in line


def test_retries_show_progress(cli: Cli, server: ServerThread) -> None:
    """A server answering 503 is retried, and the person is told so while it happens."""
    server.call(server.server.faults.add, Fault(endpoint="device", status=503, times=1))
    result = login_approved(cli, server, *cli.server_args())
    assert 0 == result.returncode
    assert (
        f"deviceflow: {server.issuer}/device_authorization answered HTTP 503; trying again"
    ) in result.stderr.splitlines()


def test_login_over_a_valid_sign_in_needs_yes_off_a_terminal(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """Off a terminal, login for an account with a valid token refuses (exit 2) and says to
    add --yes, before asking the server for anything; the store is left alone."""
    cli, server = signed_in
    before, devices = cli.snapshot(), len(server.requests("device"))
    result = cli.run("login", "--account", "ci")
    line = _error_line(result.stderr)
    assert 2 == result.returncode
    assert "is already signed in with a valid token. Hint: add --yes" in line
    assert (before, devices) == (cli.snapshot(), len(server.requests("device")))


def test_login_over_a_valid_sign_in_asks_on_a_terminal(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """On a terminal login asks before replacing a valid sign-in; "n" keeps it."""
    cli, server = signed_in
    before, devices = cli.snapshot(), len(server.requests("device"))
    child = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "login", "--no-browser", "--account", "ci"],
        env=cli.environment({"TERM": "xterm-256color"}),
        dimensions=(40, 120),
        encoding="utf-8",
        timeout=15 * time_factor(),
    )
    try:
        child.expect(r"Sign in again and replace it\? \[y/N\] ")
        child.sendline("n")
        child.expect("Kept the sign-in of account 'ci'; nothing was changed.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert 0 == child.exitstatus
    assert (before, devices) == (cli.snapshot(), len(server.requests("device")))


def test_login_with_yes_replaces_a_valid_sign_in(cli: Cli, server: ServerThread) -> None:
    """--yes signs in again without asking, and the new token is stored."""
    assert 0 == login_approved(cli, server, *cli.server_args()).returncode
    first = cli.run("token").stdout
    again = login_approved(cli, server, *cli.server_args(), "--yes")
    second = cli.run("token").stdout
    assert (0, True) == (again.returncode, first != second)
    assert server.is_valid(second.strip())


def test_scope_defaults_to_openid_and_offline_access_when_offered(cli: Cli) -> None:
    """Without --scope, login asks an issuer for openid, plus offline_access when the server
    lists it in scopes_supported."""
    offers = ["openid", "profile", "offline_access"]
    with (
        ServerThread(interval=0.25, scopes_supported=offers) as offering,
        ServerThread(interval=0.25) as silent,
    ):
        results = [
            login_approved(cli, running, "--issuer", running.issuer, "--client-id", "x")
            for running in (offering, silent)
        ]
        asked = [running.requests("device")[-1].form.get("scope") for running in (offering, silent)]
    assert [0, 0] == [r.returncode for r in results]
    assert ["openid offline_access", "openid"] == asked


def test_results_on_stdout_and_scope_only_where_it_means_something(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """status and token --json print results on stdout with nothing on stderr; --scope on a
    command that does not use it is a usage error that says where it belongs."""
    cli, _ = signed_in
    status, token, scoped = cli.run_many(
        ["status", "--json"], ["token", "--account", "ci", "--json"], ["token", "--scope", "x"]
    )
    assert ("", "") == (status.stderr, token.stderr)
    assert {"ci", "bob"} == {row["account"] for row in json.loads(status.stdout)}
    assert "ci" == json.loads(token.stdout)["account"]
    assert 2 == scoped.returncode
    assert scoped.stderr.startswith("usage: deviceflow token")
    assert "--scope is an option of login only" in scoped.stderr


def test_a_dropped_connection_is_retried_with_a_note(cli: Cli, server: ServerThread) -> None:
    """A connection the server drops is retried, and the person is told so."""
    server.call(server.server.faults.add, Fault(endpoint="device", drop=True, times=1))
    result = login_approved(cli, server, *cli.server_args())
    assert 0 == result.returncode
    notes = [line for line in result.stderr.splitlines() if line.endswith("; trying again")]
    assert 1 == len(notes)
    assert notes[0].startswith(
        f"deviceflow: device_authorization request to {server.issuer}/device_authorization failed"
    )


def test_reset_asks_on_a_terminal_and_deletes_on_yes(cli: Cli, server: ServerThread) -> None:
    """On a terminal reset asks; "y" deletes the stored tokens and the CLI's own key file."""
    no_key: dict[str, str | None] = {"DEVICEFLOW_KEY": None}
    assert 0 == login_approved(cli, server, *cli.server_args(), env=no_key).returncode
    child = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "reset"],
        env=cli.environment({"TERM": "xterm-256color", "DEVICEFLOW_KEY": None}),
        dimensions=(40, 200),
        encoding="utf-8",
        timeout=15 * time_factor(),
    )
    try:
        child.expect(r"The grants are not revoked\. \[y/N\] ")
        child.sendline("y")
        child.expect("Sign in again with `deviceflow login`.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert (0, {}, False) == (child.exitstatus, cli.snapshot(), _key_file(cli).exists())


def test_reset_leaves_what_is_not_a_token_store(cli: Cli) -> None:
    """reset refuses a folder holding files the store does not make, and a Redis store; an
    empty store has nothing to reset."""
    empty = cli.run("reset", "--yes")
    cli.store.mkdir()
    (cli.store / "notes.txt").write_text("mine")
    stray = cli.run("reset", "--yes")
    redis = cli.run("reset", "--yes", env={"DEVICEFLOW_STORE": "redis://127.0.0.1:1/0"})
    assert (0, 7, 6) == (empty.returncode, stray.returncode, redis.returncode)
    assert f"Nothing to reset: the token store at {cli.store} is empty." in empty.stdout
    assert "holds files a token store does not make (notes.txt); nothing was deleted" in (
        stray.stderr
    )
    assert (cli.store / "notes.txt").exists()
    assert "this store is in Redis" in redis.stderr


def test_key_files_that_cannot_be_used_say_why(cli: Cli) -> None:
    """A key file open to others says to chmod it; a missing one, to check its path."""
    shared = cli.home / "shared.key"
    shared.write_text(generate_key() + "\n")
    shared.chmod(0o644)
    open_file, missing = cli.run_many(
        ["status", "--key-file", str(shared)], ["status", "--key-file", str(cli.home / "nope")]
    )
    assert (7, 7) == (open_file.returncode, missing.returncode)
    assert f"run: chmod 600 {shared}" in _error_line(open_file.stderr)
    assert "Hint: check the key file's path." in _error_line(missing.stderr)


def test_login_over_an_expired_sign_in_does_not_ask(cli: Cli, server: ServerThread) -> None:
    """A stored token that has expired with no refresh token is nothing to keep: login signs
    in again without --yes, even off a terminal."""
    server.configure(issue_refresh_tokens=False, access_token_lifetime=1)
    assert 0 == login_approved(cli, server, *cli.server_args()).returncode
    time.sleep(1.5)
    again = login_approved(cli, server, *cli.server_args())
    assert 0 == again.returncode
    assert "error" not in again.stderr


def test_a_denial_without_a_reason_and_other_discovery_errors() -> None:
    """A denial with no error_description says it was declined on the sign-in page; a
    discovery error that is not an issuer mismatch is left as it is."""
    declined = _denied(AccessDeniedError("access_denied"))
    assert (3, "the sign-in was declined (access_denied)") == (declined.code, str(declined))
    assert "declined on the sign-in page" in str(declined.hint)
    settings = load_settings("login", argparse.Namespace(issuer="https://idp.example.com"), {})
    assert None is _issuer_mismatch(DiscoveryError("no discovery document"), settings)


def test_messages_name_a_redis_store_without_its_password() -> None:
    """Where a message names a Redis store, the URL's password is left out."""
    given = argparse.Namespace(store="redis://:hunter2@redis.example:6380/0")
    assert "the Redis store redis://redis.example:6380/0" == store_name(
        load_settings("status", given, {})
    )
