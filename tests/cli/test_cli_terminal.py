"""deviceflow login on a (pseudo-)terminal, and the browser it opens."""

from __future__ import annotations

import re
import sys
import webbrowser
from pathlib import Path

import pexpect
import pytest
import segno
from cli_harness import COMMAND, Cli, ServerThread

from deviceflow._cli._terminal import open_link
from helpers import time_factor, wait_until

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_COUNTDOWN = re.compile(r"expires in (?:\x1b\[[0-9;]*m)?(\d+):(\d\d)")
# Half-block characters -> (top module, bottom module); True is dark. Light modules are drawn.
_HALVES = {"█": (False, False), " ": (True, True), "▀": (False, True), "▄": (True, False)}


def _spawn(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> pexpect.spawn:
    return pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], *args],
        # The size the terminal has (a LINES or COLUMNS of the test run would override it).
        env=cli.environment(
            {"TERM": "xterm-256color", "LINES": "80", "COLUMNS": "120", **(env or {})}
        ),
        dimensions=(80, 120),
        encoding="utf-8",
        timeout=15 * time_factor(),
    )


def qr_modules(screen: str) -> list[list[bool]]:
    """The QR code drawn on ``screen``, as rows of modules (True: dark), quiet zone trimmed."""
    return _qr_drawing(screen)[0]


def qr_quiet_zone(screen: str) -> int:
    """The width of the light margin around the QR code drawn on ``screen``, in modules."""
    return _qr_drawing(screen)[1]


def _qr_drawing(screen: str) -> tuple[list[list[bool]], int]:
    lines = [line.strip() for line in screen.splitlines()]
    start = next(i for i, line in enumerate(lines) if "QR code" in line) + 1
    end = next(
        (i for i in range(start, len(lines)) if not lines[i] or set(lines[i]) - set(_HALVES)),
        len(lines),
    )
    drawn = lines[start:end]
    assert drawn
    rows: list[list[bool]] = []
    for line in drawn:
        pairs = [_HALVES[char] for char in line]
        rows += [[top for top, _ in pairs], [bottom for _, bottom in pairs]]
    rows = [row for row in rows if not all(row)]  # the padding under an odd number of rows
    dark = [i for i, row in enumerate(rows) if any(row)]
    columns = [j for j in range(len(rows[0])) if any(row[j] for row in rows)]
    quiet = min(dark[0], len(rows) - 1 - dark[-1], columns[0], len(rows[0]) - 1 - columns[-1])
    rows = rows[dark[0] : dark[-1] + 1]
    return [row[columns[0] : columns[-1] + 1] for row in rows], quiet


def encodes(modules: list[list[bool]], data: str) -> bool:
    """True when ``modules`` is the QR code of ``data`` at some error correction level."""
    for level in "lmqh":
        code = segno.make(data, error=level, micro=False)
        expected = [[bool(bit) for bit in row] for row in code.matrix_iter(border=0)]
        if expected == modules:
            return True
    return False


def test_login_on_a_terminal_shows_code_link_qr_and_a_moving_countdown(
    cli: Cli, server: ServerThread
) -> None:
    """On a terminal: the user code, the link, a QR code of the link, a countdown that moves."""
    child = _spawn(cli, "login", "--no-browser", *cli.server_args())
    try:
        user_code = server.wait_for_code()
        child.expect(_COUNTDOWN)
        raw = child.before
        screen = _ANSI.sub("", raw)
        first = int(child.match.group(1)) * 60 + int(child.match.group(2))
        later = first
        while later == first:
            child.expect(_COUNTDOWN)
            later = int(child.match.group(1)) * 60 + int(child.match.group(2))
        server.approve(user_code)
        child.expect("Signed in")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)

    link = f"{server.issuer}/device?user_code={user_code}"
    assert 0 == child.exitstatus
    assert f" {user_code} " in screen
    assert f"{server.issuer}/device\r\n" in screen
    assert link in screen
    assert encodes(qr_modules(screen), link)
    assert 4 <= qr_quiet_zone(screen)
    # White on black set explicitly on every row: the same code on light and dark terminals.
    rows = [line.strip() for line in raw.splitlines() if "▄" in line]
    assert rows
    assert all(row.startswith("\x1b[97;40m") and row.endswith("\x1b[0m") for row in rows)
    assert first - 1 == later
    assert 60 - 5 * time_factor() <= first <= 60  # the code lives 60 s


def _recorder(cli: Cli) -> tuple[dict[str, str | None], Path]:
    """A display and a BROWSER command that writes the URL it is given to a file."""
    opened = cli.home / "opened.txt"
    recorder = cli.home / "browser.py"
    recorder.write_text(
        f"import sys, pathlib\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n"
    )
    return {"DISPLAY": ":99", "BROWSER": f"{sys.executable} {recorder} %s"}, opened


def test_no_qr_and_no_browser_on_a_terminal(cli: Cli, server: ServerThread) -> None:
    """--no-qr leaves the QR code out, --no-browser opens nothing even with a display; a retry
    is noted on the terminal."""
    from deviceflow.testing import Fault

    server.call(server.server.faults.add, Fault(endpoint="token", status=503, times=1))
    env, opened = _recorder(cli)
    child = _spawn(cli, "login", "--no-browser", "--no-qr", *cli.server_args(), env=env)
    try:
        server.approve(server.wait_for_code())
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    screen = _ANSI.sub("", child.before)
    assert 0 == child.exitstatus
    assert "enter the code" in screen
    assert "QR code" not in screen
    assert "▄" not in screen
    assert f"  {server.issuer}/token answered HTTP 503; trying again\r\n" in screen
    assert not opened.exists()


def test_login_opens_the_browser_on_the_complete_link(
    cli: Cli, server: ServerThread, tmp_path: Path
) -> None:
    """With a display, login opens verification_uri_complete with the user's browser, and says
    so once the browser's launcher has returned."""
    env, opened = _recorder(cli)
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = cli.popen("login", *cli.server_args(), env=env, stderr=stderr)
    user_code = server.wait_for_code()
    # Approved only after the note: on a loaded machine the launcher can return after the
    # sign-in has ended, and then there is nothing left to say.
    wait_until(lambda: "A browser was opened" in log.read_text())
    server.approve(user_code)
    process.communicate(timeout=30 * time_factor())
    assert 0 == process.returncode
    assert f"{server.issuer}/device?user_code={user_code}" == opened.read_text()


def test_insecure_links_are_never_opened(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_link() refuses plain http to a host that is not loopback, and non-http links."""
    env, opened = _recorder(cli)
    monkeypatch.setenv("BROWSER", str(env["BROWSER"]))
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # register browsers again, from BROWSER
    assert [False, False] == [
        open_link("http://idp.example.com/device?user_code=ABCD"),
        open_link("javascript:alert(1)"),
    ]
    assert not opened.exists()
