"""``deviceflow credential``: git's credential helper protocol, driven by a real git in a
private HOME, against the built-in server."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cli_harness import COMMAND, Cli, ServerThread, login_approved
from howto_pages import DOCS, commands, fenced, run_shell, shim, substitute

from deviceflow import DeviceFlowClient, ProtocolError, Provider, Token
from deviceflow._cli import _credential as credential
from deviceflow._cli._credential import (
    CredentialRequest,
    HostPattern,
    choose_settings,
    read_request,
)
from deviceflow._cli._errors import EXIT_CONFIG, CliError
from deviceflow._cli._settings import Settings, load_settings
from deviceflow._cli._terminal import Console
from deviceflow._records import record_key
from deviceflow.cli import build_parser
from deviceflow.stores import EncryptedFileStore, generate_key
from deviceflow.testing import AuthorizationServer
from helpers import time_factor


@pytest.fixture
def git(cli: Cli, server: ServerThread) -> Cli:
    """The CLI home with git's helper set to deviceflow and a profile for the server's host."""
    host = server.issuer.removeprefix("http://")
    cli.env.update(GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    profiles = cli.home / "config" / "deviceflow" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text(
        f'[work]\nissuer = "{server.issuer}"\nclient-id = "git-app"\nhosts = ["{host}"]\n',
        encoding="utf-8",
    )
    configured = subprocess.run(
        ["git", "config", "--global", "credential.helper", f"!{shlex.join(COMMAND)} credential"],
        env=cli.environment(),
        timeout=30 * time_factor(),
        check=False,
        capture_output=True,
        text=True,
    )
    assert 0 == configured.returncode, configured.stderr
    return cli


def fill(cli: Cli, host: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """``git credential fill`` for http://host."""
    return subprocess.run(
        ["git", "credential", "fill"],
        input=f"protocol=http\nhost={host}\n\n",
        env=cli.environment(env),
        capture_output=True,
        text=True,
        timeout=60 * time_factor(),
        check=False,
    )


def answer(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The key=value lines of a helper's or git's answer."""
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def host_of(server: ServerThread) -> str:
    return server.issuer.removeprefix("http://")


def test_git_credential_fill_gets_the_token(git: Cli, server: ServerThread) -> None:
    """After a login, real `git credential fill` answers user oauth2 and a valid access token
    from the profile matched by host."""
    assert 0 == login_approved(git, server, "--profile", "work").returncode
    result = fill(git, host_of(server))
    assert 0 == result.returncode, result.stderr
    got = answer(result)
    assert "oauth2" == got["username"]
    assert server.is_valid(got["password"])


def test_get_answers_expiry_and_configured_username(git: Cli, server: ServerThread) -> None:
    """The helper itself answers password_expiry_utc (Unix seconds) and the username option."""
    assert 0 == login_approved(git, server, "--profile", "work").returncode
    request = f"protocol=http\nhost={host_of(server)}\npath=team/app.git\n\n"
    result = subprocess.run(
        [*COMMAND, "credential", "get"],
        input=request,
        env=git.environment({"DEVICEFLOW_USERNAME": "alice"}),
        capture_output=True,
        text=True,
        timeout=30 * time_factor(),
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    got = answer(result)
    assert ["username", "password", "password_expiry_utc"] == list(got)
    assert "alice" == got["username"]
    assert 3000 < int(got["password_expiry_utc"]) - time.time() <= 3600


def test_unmatched_host_gets_nothing_so_git_asks_elsewhere(git: Cli, server: ServerThread) -> None:
    """No profile lists the host: the helper prints nothing and exits 0; git goes on (and,
    with prompts off, fails on its own)."""
    assert 0 == login_approved(git, server, "--profile", "work").returncode
    direct = subprocess.run(
        [*COMMAND, "credential", "get"],
        input="protocol=https\nhost=other.example.com\n\n",
        env=git.environment(),
        capture_output=True,
        text=True,
        timeout=30 * time_factor(),
        check=False,
    )
    assert (0, "", "") == (direct.returncode, direct.stdout, direct.stderr)
    result = fill(git, "127.0.0.1:9")
    assert 0 != result.returncode
    assert "password" not in answer(result)


def test_reject_erases_the_token_and_the_next_get_signs_in(git: Cli, server: ServerThread) -> None:
    """`git credential reject` with the current token tombstones it: without a terminal the
    next get says to sign in; with one, it runs a device flow (code on stderr)."""
    assert 0 == login_approved(git, server, "--profile", "work").returncode
    host = host_of(server)
    old = answer(fill(git, host))["password"]
    rejected = subprocess.run(
        ["git", "credential", "reject"],
        input=f"protocol=http\nhost={host}\nusername=oauth2\npassword={old}\n\n",
        env=git.environment(),
        capture_output=True,
        text=True,
        timeout=30 * time_factor(),
        check=False,
    )
    assert 0 == rejected.returncode, rejected.stderr
    refused = fill(git, host)
    assert "password" not in answer(refused)
    assert "deviceflow login --profile work" in refused.stderr
    prompting = subprocess.Popen(
        [*COMMAND, "credential", "get"],
        env=git.environment({"GIT_TERMINAL_PROMPT": None}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    git.started.append(prompting)  # ended by the fixture if the test fails midway
    assert prompting.stdin is not None
    prompting.stdin.write(f"protocol=http\nhost={host}\n\n")
    prompting.stdin.close()
    prompting.stdin = None  # communicate() must not flush the closed pipe
    server.approve(server.wait_for_code())
    stdout, stderr = prompting.communicate(timeout=30 * time_factor())
    assert 0 == prompting.returncode, stderr
    assert "enter the code" in stderr
    new = dict(line.split("=", 1) for line in stdout.splitlines())["password"]
    assert old != new
    assert server.is_valid(new)


def test_erase_of_another_password_keeps_the_token(git: Cli, server: ServerThread) -> None:
    """An erase for a password that is not the current token (another helper's) erases
    nothing; store is a no-op."""
    assert 0 == login_approved(git, server, "--profile", "work").returncode
    host = host_of(server)
    token = answer(fill(git, host))["password"]
    before = git.snapshot()
    for action in ("erase", "store", "future-action"):
        result = subprocess.run(
            [*COMMAND, "credential", action],
            input=f"protocol=http\nhost={host}\nusername=oauth2\npassword=not-ours\n\n",
            env=git.environment(),
            capture_output=True,
            text=True,
            timeout=30 * time_factor(),
            check=False,
        )
        assert (0, "") == (result.returncode, result.stdout)
    assert before == git.snapshot()
    assert token == answer(fill(git, host))["password"]


# --- matching, in process -----------------------------------------------------------------------


def settings_for(tmp_path: Path, profiles: str, *args: str) -> Settings:
    """The credential command's settings with ``profiles`` as the profile file."""
    path = tmp_path / "profiles.toml"
    path.write_text(profiles, encoding="utf-8")
    namespace = build_parser().parse_args(["credential", "get", "--profile-file", str(path), *args])
    return load_settings("credential", namespace, env={})


PROFILES = """
[all]
issuer = "https://git.example.com"
client-id = "a"
hosts = ["git.example.com", "git.example.com:8443"]

[team]
issuer = "https://git.example.com"
client-id = "t"
hosts = "git.example.com/team"
username = "robot"

[elsewhere]
issuer = "https://other.example.com"
client-id = "o"

[local]
issuer = "http://localhost:8080"
client-id = "l"
hosts = ["localhost", "[::1]:8080", "127.0.0.2:8080"]
"""


@pytest.mark.parametrize(
    ("request_text", "chosen"),
    [
        ("protocol=https\nhost=git.example.com\n", "all"),
        ("protocol=https\nhost=GIT.example.com\npath=team/app.git\n", "team"),
        ("protocol=https\nhost=git.example.com\npath=team.git\n", "team"),
        ("protocol=https\nhost=git.example.com\npath=teams/app.git\n", "all"),
        ("protocol=https\nhost=git.example.com:8443\n", "all"),
        ("protocol=https\nhost=git.example.com:444\n", None),
        ("protocol=http\nhost=git.example.com\n", None),  # never in cleartext
        ("protocol=https\nhost=other.example.com\n", None),  # a profile without hosts
        ("host=git.example.com\n", None),
        ("protocol=http\nhost=localhost\n", "local"),  # loopback: plain http is fine
        ("protocol=http\nhost=[::1]:8080\n", "local"),
        ("protocol=http\nhost=127.0.0.2:8080\n", "local"),
    ],
)
def test_profiles_are_matched_by_host_and_path(
    tmp_path: Path, request_text: str, chosen: str | None
) -> None:
    """The longest matching host/path pattern picks the profile; none: no answer."""
    settings = settings_for(tmp_path, PROFILES)
    request = read_request(io.StringIO(request_text + "\n" + "ignored=after the blank line\n"))
    found = choose_settings(settings, request)
    assert chosen == (None if found is None or found.profile is None else found.profile.name)


def test_named_profile_answers_only_for_its_hosts(tmp_path: Path) -> None:
    """--profile answers any host unless the profile lists hosts; a server on the command
    line answers any host."""
    on_host = CredentialRequest(protocol="https", host="git.example.com")
    off_host = CredentialRequest(protocol="https", host="x.example.com")
    team = settings_for(tmp_path, PROFILES, "--profile", "team")
    assert choose_settings(team, on_host) is None  # team lists git.example.com/team only
    elsewhere = settings_for(tmp_path, PROFILES, "--profile", "elsewhere")
    assert elsewhere is choose_settings(elsewhere, off_host)
    given = settings_for(
        tmp_path, PROFILES, "--issuer", "https://git.example.com", "--client-id", "c"
    )
    assert given is choose_settings(given, off_host)


def test_host_patterns_parse() -> None:
    """host[:port][/path], case-insensitive, .git and slashes trimmed."""
    assert HostPattern("git.example.com:8443", "team/app") == HostPattern.parse(
        " Git.Example.com:8443/team/app.git/ "
    )
    assert HostPattern("git.example.com", None) == HostPattern.parse("git.example.com")


def test_hosts_must_be_words(tmp_path: Path) -> None:
    """A hosts list with something other than single words is a configuration error."""
    from deviceflow._cli._errors import CliError

    bad = '[x]\nissuer = "https://a.example"\nclient-id = "c"\nhosts = ["a b"]\n'
    with pytest.raises(CliError, match="must list words"):
        settings_for(tmp_path, bad, "--profile", "x")
    worse = '[x]\nissuer = "https://a.example"\nclient-id = "c"\nhosts = 3\n'
    with pytest.raises(CliError, match="a list of words"):
        settings_for(tmp_path, worse, "--profile", "x")


# --- the how-to page ----------------------------------------------------------------------------


def test_howto_git_commands_run(cli: Cli, server: ServerThread) -> None:
    """docs/howto/git.md, as a reader follows it: its profile, then each of its commands, with
    git.example.com played by the test server."""
    page = DOCS / "howto" / "git.md"
    host = host_of(server)
    replacements = {"https://git.example.com": server.issuer, "git.example.com": host}
    profile = substitute(fenced(page, "toml")[0], replacements)
    profiles = cli.home / "config" / "deviceflow" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text(profile, encoding="utf-8")
    env = {"PATH": shim(cli), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    script = "\n".join(commands(page))
    steps = substitute(
        script, {"git.example.com": host, "protocol=https": "protocol=http"}
    ).splitlines()
    results = []
    for step in steps:
        if step.startswith("deviceflow login"):
            running = cli.popen(*shlex.split(step)[1:], "--no-browser", env=env)
            server.approve(server.wait_for_code())
            stdout, stderr = running.communicate(timeout=30 * time_factor())
            results.append(subprocess.CompletedProcess(step, running.returncode, stdout, stderr))
        else:
            results.append(run_shell(cli, step, env))
    assert [0] * len(steps) == [r.returncode for r in results], [r.stderr for r in results]
    got = answer(results[-1])
    assert "oauth2" == got["username"]
    assert server.is_valid(got["password"])


# --- erase and get, in process ----------------------------------------------------------------


class InProcess:
    """The helper run in this process against the built-in server, with a private store."""

    def __init__(self, tmp_path: Path, server: AuthorizationServer, key: str) -> None:
        self.server = server
        self.host = server.issuer.removeprefix("http://")
        profiles = tmp_path / "profiles.toml"
        profiles.write_text(
            f'[work]\nissuer = "{server.issuer}"\nclient-id = "git-app"\nhosts = ["{self.host}"]\n',
            encoding="utf-8",
        )
        self.args = ["--profile-file", str(profiles), "--store", str(tmp_path / "store")]
        self.store = EncryptedFileStore(tmp_path / "store", key=key)

    async def seed(self, access_token: str | None = None, *, dpop: bool = False) -> Token:
        """Store a token of a new grant for "default", as a login would (one bound to a new
        DPoP key with ``dpop``)."""
        from deviceflow._dpop import DPoPKey

        issued = self.server.issue_tokens("git-app")
        token = Token(
            access_token=access_token or issued["access_token"],
            token_type="DPoP" if dpop else "Bearer",
            refresh_token=issued["refresh_token"],
            expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
            dpop_key=DPoPKey.generate() if dpop else None,
        )
        async with DeviceFlowClient(
            Provider(issuer=self.server.issuer), client_id="git-app", store=self.store
        ) as client:
            await client.save_token("default", token)
        return token

    async def run(self, action: str, password: str | None = None) -> tuple[int, str]:
        """Run ``credential ACTION`` for the server's host; (exit code, stdout)."""
        lines = f"protocol=http\nhost={self.host}\n"
        if password is not None:
            lines += f"password={password}\n"
        namespace = build_parser().parse_args(["credential", action, *self.args])
        settings = load_settings("credential", namespace, env=dict(os.environ))
        out, err = io.StringIO(), io.StringIO()
        code = await credential.run(action, settings, Console(out, err), io.StringIO(lines))
        return code, out.getvalue()

    async def record(self) -> bytes | None:
        current = await self.store.get(record_key(self.server.issuer, "git-app", "default"))
        return None if current is None else current.value


@pytest.fixture
def in_process(
    tmp_path: Path, authorization_server: AuthorizationServer, monkeypatch: pytest.MonkeyPatch
) -> InProcess:
    key = generate_key()
    for name, value in {
        "HOME": tmp_path,
        "XDG_CONFIG_HOME": tmp_path / "config",
        "XDG_DATA_HOME": tmp_path / "data",
        "DEVICEFLOW_KEY": key,
        "GIT_TERMINAL_PROMPT": "0",
    }.items():
        monkeypatch.setenv(name, str(value))
    return InProcess(tmp_path, authorization_server, key)


async def test_erase_edge_cases_erase_nothing(in_process: InProcess) -> None:
    """No password, no stored record, or a record already signed out: erase does nothing;
    erasing the current token twice leaves one tombstone."""
    assert (0, "") == await in_process.run("erase", password="x")  # nothing stored
    token = await in_process.seed()
    before = await in_process.record()
    assert (0, "") == await in_process.run("erase")  # git sent no password
    assert before == await in_process.record()
    assert (0, "") == await in_process.run("erase", password=token.access_token)
    tombstone = await in_process.record()
    assert tombstone is not None
    assert b"rejected" in tombstone
    assert (0, "") == await in_process.run("erase", password=token.access_token)
    assert tombstone == await in_process.record()


async def test_token_unfit_for_the_protocol_is_refused(in_process: InProcess) -> None:
    """A token with a line break in it would forge protocol lines: get refuses it."""
    await in_process.seed(access_token="good\npassword=forged")
    with pytest.raises(ProtocolError, match="b64token"):
        await in_process.run("get")


async def test_dpop_token_is_not_given_to_git(in_process: InProcess) -> None:
    """git sends the password as a bearer credential: a DPoP-bound token is refused with a
    configuration error and a hint, and nothing is printed."""
    token = await in_process.seed(dpop=True)
    with pytest.raises(CliError, match=r"'default'.*DPoP-bound") as caught:
        await in_process.run("get")
    assert (EXIT_CONFIG, True) == (caught.value.code, "request_headers" in str(caught.value.hint))
    assert token.access_token not in str(caught.value)
