"""Options from the command line, the environment and profiles; presets; usage errors; demo.

The checks of how options are resolved call ``deviceflow.cli.main()`` in this process (no
server is involved, and a process start costs more than the check); everything that talks to a
server runs the real console script.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_harness import Cli, ServerThread, login_approved, logins_approved

from deviceflow import Provider
from deviceflow.cli import EXIT_CODES, main
from deviceflow.stores import generate_key


def _accounts(cli: Cli) -> list[list[str]]:
    """(account, issuer, client id) of each row of `deviceflow status`, sorted."""
    return sorted(row.split()[:3] for row in cli.run("status").stdout.splitlines()[1:])


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


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_profile_then_environment_then_command_line(cli: Cli, server: ServerThread) -> None:
    """A profile names the server; the environment overrides it, and the command line both."""
    profiles = cli.home / "profiles.toml"
    profiles.write_text(
        f'[work]\nissuer = "{server.issuer}"\nclient-id = "team-app"\naccount = "from-profile"\n'
        '\n[default]\nclient_id = "default-app"\n',
        encoding="utf-8",
    )
    env = {"DEVICEFLOW_PROFILE_FILE": str(profiles)}
    results = logins_approved(
        cli,
        server,
        [
            (["--profile", "work"], env),
            ([], {**env, "DEVICEFLOW_PROFILE": "work", "DEVICEFLOW_ACCOUNT": "from-env"}),
            (
                ["--account", "from-flag", "--issuer", server.issuer],
                {**env, "DEVICEFLOW_ACCOUNT": "from-env"},
            ),
        ],
    )
    assert [0, 0, 0] == [r.returncode for r in results]
    assert [
        ["from-env", server.issuer, "team-app"],
        ["from-flag", server.issuer, "default-app"],  # the client id of the [default] profile
        ["from-profile", server.issuer, "team-app"],
    ] == _accounts(cli)


def test_profile_errors_are_configuration_errors(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing profile, an unknown setting or bad TOML exits 6 with one line naming it."""
    good, broken = home / "profiles.toml", home / "broken.toml"
    good.write_text('[work]\nissuer = "https://idp.example.com"\ncolour = "blue"\n')
    broken.write_text("[work\n")
    missing = _main(capsys, "login", "--profile", "home", "--profile-file", str(good))
    unknown = _main(capsys, "login", "--profile", "work", "--profile-file", str(good))
    invalid = _main(capsys, "token", "--profile-file", str(broken))
    assert [(6, "", 1)] * 3 == [
        (c, out, len(err.splitlines())) for c, out, err in (missing, unknown, invalid)
    ]
    assert "no profile [home]" in missing[2]
    assert "(profiles: work)" in missing[2]
    assert "unknown setting 'colour' in profile [work]" in unknown[2]
    assert "is not valid TOML" in invalid[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "keycloak"], "--provider keycloak needs --base-url and --realm"),
        (
            ["--provider", "aws-sso", "--region", "eu-west-1"],
            "--provider aws_sso needs --start-url",
        ),
        (["--provider", "myidp"], "unknown provider 'myidp'"),
        (["--provider", "github", "--realm", "x"], "--realm applies only to --provider keycloak"),
        (["--issuer", "http://idp.example.com"], "is plain http"),
        (["--issuer", "idp.example.com"], "must be an absolute https URL"),
        (
            ["--issuer", "https://idp.example.com", "--provider", "google"],
            "--provider google does not take an issuer",
        ),
        ([], "no server given, and no account 'default' was signed in"),
        (["--issuer", "https://idp.example.com", "--client-id", ""], "no client id"),
    ],
)
def test_server_configuration_errors_exit_6(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """A preset without its required option, or a bad or missing server option, exits 6."""
    code, out, err = _main(capsys, "login", "--client-id", "x", *args)
    assert (6, "", 1) == (code, out, len(err.splitlines()))
    assert message in err


@pytest.mark.parametrize(
    ("preset", "options", "server_options"),
    [
        ("devolutions", ["--base-url", "{issuer}"], {"issuer_path": "/dvls"}),
        ("github", ["--base-url", "{issuer}"], {"profile": "github"}),
    ],
)
def test_login_with_a_provider_preset(
    cli: Cli, preset: str, options: list[str], server_options: dict[str, str]
) -> None:
    """--provider with its options reaches the server the preset describes."""
    if not hasattr(Provider, preset):
        pytest.skip(f"Provider.{preset} has not landed yet")
    with ServerThread(interval=1, **server_options) as server:
        args = ["--provider", preset, *(o.format(issuer=server.issuer) for o in options)]
        result = login_approved(cli, server, *args, "--client-id", "x")
    assert 0 == result.returncode
    assert "Signed in account 'default' at " + server.issuer in result.stdout


def test_bad_command_lines_exit_2_with_usage(cli: Cli) -> None:
    """A bad command line gets argparse's usage message on stderr and exit 2."""
    results = cli.run_many(["login", "--bogus"], ["frobnicate"])
    assert [(2, "", True)] * 2 == [
        (r.returncode, r.stdout, r.stderr.startswith("usage: deviceflow")) for r in results
    ]


@pytest.mark.parametrize("args", [["token", "extra"], ["keygen", "--output"], ["status", "-x"]])
def test_more_bad_command_lines_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """Missing commands, extra arguments and missing values are usage errors too."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert 2 == exited.value.code
    assert capsys.readouterr().err.startswith("usage: deviceflow")


def test_debug_adds_the_traceback(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors are one line; --debug (after or before the command) or DEVICEFLOW_DEBUG adds the
    traceback."""
    args = ["--issuer", "https://idp.example.com", "--provider", "github"]
    plain = _main(capsys, "token", *args)
    after = _main(capsys, "token", "--debug", *args)
    before = _main(capsys, "--debug", "token", *args)
    monkeypatch.setenv("DEVICEFLOW_DEBUG", "1")
    by_env = _main(capsys, "token", *args)
    assert [6, 6, 6, 6] == [r[0] for r in (plain, after, before, by_env)]
    assert 1 == len(plain[2].splitlines())
    assert [True, True, True] == ["Traceback" in r[2] for r in (after, before, by_env)]
    assert plain[2].splitlines()[-1] == after[2].splitlines()[-1]


def test_exit_codes_are_distinct() -> None:
    """Every outcome has its own exit code."""
    assert len(EXIT_CODES) == len(set(EXIT_CODES.values()))


def test_demo_runs_the_whole_tour(cli: Cli) -> None:
    """`deviceflow demo --auto-approve --no-browser` runs every step and exits 0; off a
    terminal the sign-in is shown as login shows it (on stderr), in the demo's name."""
    result = cli.run("demo", "--auto-approve", "--no-browser")
    assert 0 == result.returncode
    assert "4. Refreshed" in result.stdout
    assert "the refresh token was rotated: True" in result.stdout
    shown = result.stderr.splitlines()
    assert shown[0].startswith("deviceflow demo: to sign in account 'demo' at http://127.0.0.1")
    assert "and enter the code" in shown[0]
    assert "deviceflow demo: waiting for approval (Ctrl-C to cancel)..." == shown[1]
