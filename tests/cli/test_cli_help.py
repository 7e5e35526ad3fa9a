"""Help, "did you mean", shell completion, and what --debug shows (and never shows)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_harness import Cli, ServerThread, login_approved

from deviceflow.cli import main
from deviceflow.stores import EncryptedFileStore, generate_key
from deviceflow.testing import Fault
from helpers import time_factor

_COMMANDS = ("login", "token", "status", "logout", "keygen", "reset", "demo", "completion")
WINDOW = 12  # as tests/hygiene: no 12-character piece of a secret may show


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private environment for calling main() in this process."""
    for name in [n for n in os.environ if n.startswith("DEVICEFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("DEVICEFLOW_KEY", generate_key())
    monkeypatch.setenv("DEVICEFLOW_STORE", str(tmp_path / "store"))
    return tmp_path


def test_deviceflow_alone_prints_help_and_exits_0(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`deviceflow` with no command prints the help on stdout, with every command, exit 0."""
    assert 0 == main([])
    out, err = capsys.readouterr()
    assert ("", True) == (err, out.startswith("usage: deviceflow"))
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ")}
    assert set(_COMMANDS) <= listed


@pytest.mark.parametrize(
    ("args", "usage", "suggestion"),
    [
        (["login", "--isuer", "x"], "usage: deviceflow login", "did you mean --issuer?"),
        (["token", "--acount=ci"], "usage: deviceflow token", "did you mean --account?"),
        (["status", "--jsn"], "usage: deviceflow status", "did you mean --json?"),
        (["logout", "--no-qr"], "usage: deviceflow logout", "--no-qr is an option of login only"),
        (["logni"], "usage: deviceflow ", "did you mean login?"),
        (["--debgu", "status"], "usage: deviceflow status", "did you mean --debug?"),
    ],
)
def test_a_mistyped_option_gets_the_command_usage_and_the_closest_option(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    usage: str,
    suggestion: str,
) -> None:
    """A mistyped option: the subcommand's usage, and the option that was probably meant."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert 2 == exited.value.code
    assert err.startswith(usage)
    assert err.rstrip().endswith(suggestion)


@pytest.mark.parametrize("name", _COMMANDS)
def test_each_command_help_has_examples(
    name: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command's --help ends with examples that start with `deviceflow`."""
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    out = capsys.readouterr().out
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert 0 == exited.value.code
    assert examples
    assert any("deviceflow " + name in line for line in examples)


def _bash(script: str) -> str:
    return subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_bash_completion_is_registered_and_completes(cli: Cli, tmp_path: Path) -> None:
    """`source <(deviceflow completion bash)` registers the completion; it completes commands,
    each command's options and the provider names."""
    printed = cli.run("completion", "bash")
    assert (0, "") == (printed.returncode, printed.stderr)
    (tmp_path / "deviceflow.bash").write_text(printed.stdout)
    out = _bash(
        f"source {tmp_path / 'deviceflow.bash'}\n"
        "complete -p deviceflow\n"
        "complete_words() { COMP_WORDS=($@); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); "
        '_deviceflow; echo "${COMPREPLY[*]}"; }\n'
        "complete_words deviceflow lo\n"
        "complete_words deviceflow login --iss\n"
        "complete_words deviceflow login --provider ke\n"
        "complete_words deviceflow completion f\n"
    )
    assert [
        "complete -o default -F _deviceflow deviceflow",
        "login logout",
        "--issuer",
        "keycloak",
        "fish",
    ] == out.splitlines()


def test_zsh_and_fish_completion_scripts(cli: Cli) -> None:
    """The zsh script is a #compdef function naming every command and option, the fish script
    one `complete` line per command and option; each shell, where installed, parses it."""
    zsh, fish = cli.run_many(["completion", "zsh"], ["completion", "fish"])
    assert (0, 0) == (zsh.returncode, fish.returncode)
    assert zsh.stdout.startswith("#compdef deviceflow\n")
    fish_lines = [line for line in fish.stdout.splitlines() if not line.startswith("#")]
    assert all(line.startswith("complete -c deviceflow ") for line in fish_lines)
    for name in _COMMANDS:
        assert f"'{name}:" in zsh.stdout
        assert f" -a {name} " in fish.stdout
    for option in ("--issuer", "--client-id", "--yes", "--json", "--output"):
        assert f"'{option}[" in zsh.stdout
        assert f" -l {option[2:]} " in fish.stdout
    for shell, result in (("zsh", zsh), ("fish", fish)):
        if shutil.which(shell):  # not on every test machine: checked where present
            subprocess.run(
                [shell, "-n"],
                input=result.stdout,
                text=True,
                check=True,
                timeout=30 * time_factor(),
            )


def _secrets(cli: Cli, server: ServerThread) -> list[str]:
    """Every token, code and device code the server handed out to the CLI's account."""

    async def read() -> list[str]:
        store = EncryptedFileStore(cli.store, key=cli.key)
        index = await store.get("deviceflow-cli-index")
        assert index is not None
        found = []
        for entry in json.loads(index.value)["accounts"]:
            record = await store.get(entry["key"])
            assert record is not None
            token = json.loads(record.value)["token"]
            found += [token["access_token"], token["refresh_token"]]
        await store.aclose()
        return found

    device_codes = [
        r.form["device_code"] for r in server.requests("token") if "device_code" in r.form
    ]
    return asyncio.run(read()) + device_codes + [cli.key]


def test_debug_shows_each_request_and_no_secret(cli: Cli, server: ServerThread) -> None:
    """--debug: one line per request (method, URL without query, status, time) with the OAuth
    error fields; no token, device code or key, not even a piece of one; no lock chatter."""
    server.call(server.server.faults.add, Fault(endpoint="token", status=503, times=1))
    login = login_approved(cli, server, "--debug", *cli.server_args())
    token = cli.run("--debug", "token")  # --debug takes the full path, with the client
    logout = cli.run("logout", "--debug")
    assert [0, 0, 0] == [r.returncode for r in (login, token, logout)]

    lines = [line for r in (login, token, logout) for line in r.stderr.splitlines()]
    http = [line for line in lines if line.startswith("deviceflow: DEBUG ") and " ms" in line]
    issuer = server.issuer
    assert http[0].startswith(
        f"deviceflow: DEBUG GET {issuer}/.well-known/openid-configuration 200 "
    )
    assert any(
        line.startswith(f"deviceflow: DEBUG POST {issuer}/device_authorization 200 ")
        for line in http
    )
    assert any(f"POST {issuer}/token 503 " in line for line in http)
    assert any(f"POST {issuer}/revoke 200 " in line for line in http)
    assert [] == [line for line in lines if "filelock" in line or "acquire" in line]
    text = "\n".join(lines) + login.stdout + logout.stdout
    for secret in _secrets(cli, server):
        pieces = {secret[i : i + WINDOW] for i in range(max(1, len(secret) - WINDOW + 1))}
        assert [] == [piece for piece in pieces if piece in text]


def test_debug_shows_the_oauth_error_fields(cli: Cli, server: ServerThread) -> None:
    """An OAuth error answer's error and error_description appear in its --debug line."""
    process = cli.popen("login", "--no-browser", "--debug", *cli.server_args())
    server.deny(server.wait_for_code())
    _, stderr = process.communicate(timeout=30 * time_factor())
    assert 3 == process.returncode
    denied = [line for line in stderr.splitlines() if " 400 " in line and "access_denied" in line]
    assert denied
    assert "error='access_denied' error_description=" in denied[-1]
