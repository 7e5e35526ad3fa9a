"""deviceflow login and token, run as real processes against the test server."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

from cli_harness import Cli, ServerThread, login_approved

from helpers import time_factor, wait_until

# Reads a token on stdin and calls the test server's protected resource with it, as
# `curl -H "Authorization: Bearer $(deviceflow token)"` would.
_CALL_API = """
import sys, urllib.request
token = sys.stdin.read().strip()  # as $(...) strips the newline
request = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + token})
with urllib.request.urlopen(request, timeout=10) as response:
    print(response.status)
"""


def test_piped_login_shows_progress_on_stderr_and_its_result_on_stdout(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """Login with stdout piped shows the code and link on stderr, plainly; stdout has only
    the result, one line."""
    cli, server = signed_in
    result = next(r for r in cli.logins if "account 'ci'" in r.stderr)
    assert 0 == result.returncode
    # One line (with who signed in: the CLI asks for openid by default).
    assert [f"Signed in account 'ci' at {server.issuer} as alice (alice@example.com)"] == [
        line.split(";")[0] for line in result.stdout.splitlines()
    ]
    assert "enter the code" in result.stderr
    assert f"{server.issuer}/device" in result.stderr
    assert "\x1b" not in result.stderr  # no colour, no countdown when not on a terminal
    assert "█" not in result.stderr  # no QR code


def test_token_prints_only_a_valid_token(signed_in: tuple[Cli, ServerThread]) -> None:
    """`deviceflow token` prints the access token, one line, nothing else, nothing on stderr."""
    cli, server = signed_in
    printed = cli.run("token", *cli.server_args(), "--account", "ci")
    assert (0, "") == (printed.returncode, printed.stderr)
    token = printed.stdout.removesuffix("\n")
    assert [token] == printed.stdout.splitlines()
    assert server.is_valid(token)


def test_token_piped_into_another_process_authorizes_a_request(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """`deviceflow token | program` hands the program a token the resource server accepts."""
    cli, server = signed_in
    producer = cli.popen("token", "--account", "ci")
    consumer = subprocess.run(
        [sys.executable, "-c", _CALL_API, server.server.resource_url],
        stdin=producer.stdout,
        capture_output=True,
        text=True,
        timeout=30 * time_factor(),
        check=False,
    )
    assert producer.stdout is not None
    assert producer.stderr is not None
    producer.stdout.close()
    assert 0 == producer.wait(timeout=30 * time_factor())
    with producer.stderr:
        assert "" == producer.stderr.read()
    assert (0, "200\n", "") == (consumer.returncode, consumer.stdout, consumer.stderr)


def test_token_json_without_server_options_uses_the_signed_in_account(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """`token --json` needs no server options after login, and never prints the refresh token."""
    cli, server = signed_in
    calls = len(server.requests())
    printed = cli.run("token", "--account", "ci", "--json")
    assert 0 == printed.returncode
    document = json.loads(printed.stdout)
    assert ("ci", server.issuer, "cli-test", "Bearer", True) == (
        document["account"],
        document["issuer"],
        document["client_id"],
        document["token_type"],
        document["has_refresh_token"],
    )
    assert "refresh_token" not in document
    assert server.is_valid(document["access_token"])
    assert calls == len(server.requests())  # a fresh stored token needs no request


def test_token_refreshes_an_expiring_token(cli: Cli, server: ServerThread) -> None:
    """A token near its expiry is refreshed once by `token`; the new one is valid and stored."""
    lifetime = math.ceil(2 * time_factor())
    server.configure(access_token_lifetime=lifetime)
    assert 0 == login_approved(cli, server, *cli.server_args()).returncode
    time.sleep(0.6 * lifetime)  # into the last half of the lifetime: due for refresh
    printed = cli.run("token", *cli.server_args())
    refreshes = [r for r in server.requests("token") if r.form.get("grant_type") == "refresh_token"]
    assert (0, 1) == (printed.returncode, len(refreshes))
    assert server.is_valid(printed.stdout.strip())


def test_denied_code_exits_3_with_one_line(cli: Cli, server: ServerThread) -> None:
    """A code denied on the verification page ends login with exit 3 and one error line."""
    process = cli.popen("login", "--no-browser", *cli.server_args())
    server.deny(server.wait_for_code())
    _, stderr = process.communicate(timeout=30 * time_factor())
    assert 3 == process.returncode
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert 1 == len(errors)
    # The server's own words (its error_description), not a guess at why.
    assert errors[0].startswith(
        "deviceflow: error: the sign-in was refused: the user denied the request (access_denied)"
    )
    assert "Hint:" in errors[0]
    assert "Traceback" not in stderr
    assert [] == [name for name in cli.snapshot() if name.endswith(".tok")]  # nothing stored


def test_expired_code_exits_4(cli: Cli, server: ServerThread) -> None:
    """A code nobody approves before it expires ends login with exit 4 and one line."""
    server.configure(code_lifetime=2)
    result = cli.run("login", "--no-browser", *cli.server_args())
    assert 4 == result.returncode
    assert result.stderr.splitlines()[-1].startswith("deviceflow: error: expired_token")
    assert "Traceback" not in result.stderr


def test_ctrl_c_while_polling_exits_130_and_leaves_the_store_alone(
    signed_in: tuple[Cli, ServerThread],
) -> None:
    """SIGINT during polling exits 130 at once, and the stored token is left as it was."""
    cli, server = signed_in
    before = cli.snapshot()

    process = cli.popen("login", "--no-browser", "--yes", "--account", "ci")
    server.wait_for_code()
    polls = len(server.requests("token"))
    wait_until(lambda: len(server.requests("token")) > polls)  # polling has begun
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=10 * time_factor())
    except subprocess.TimeoutExpired:
        process.kill()  # it ignored Ctrl-C: end it here, then fail
        raise

    assert 130 == process.returncode
    assert stderr.splitlines()[-1] == "deviceflow: interrupted; nothing was stored"
    assert "Traceback" not in stderr
    assert before == cli.snapshot()


def test_malformed_server_answer_exits_5(cli: Cli, server: ServerThread) -> None:
    """A device endpoint answering garbage is a server failure: exit 5, one line."""
    from deviceflow.testing import Fault

    server.call(
        server.server.faults.add,
        Fault(endpoint="device", status=200, content_type="text/html", body="<html>portal"),
    )
    result = cli.run("login", "--no-browser", *cli.server_args())
    assert 5 == result.returncode
    assert "Traceback" not in result.stderr
    assert 1 == len([line for line in result.stderr.splitlines() if "error" in line])
