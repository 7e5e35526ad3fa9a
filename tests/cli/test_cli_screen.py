"""What a person sees: ``deviceflow login`` in a real terminal of 80x24 and 120x40.

The command runs inside tmux, a real terminal emulator, and the tests read tmux's visible
screen (``capture-pane``), so what scrolled away above the screen does not count (without tmux,
see :class:`Screen`).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pexpect
import pytest
from cli_harness import COMMAND, Cli, ServerThread
from test_cli_terminal import encodes, qr_modules, qr_quiet_zone

from helpers import time_factor, wait_until


class Screen:
    """A command running in a terminal of a given size, and what that terminal shows.

    The terminal is tmux (a real emulator; ``capture-pane`` shows its visible screen). Where
    tmux is not installed, a pseudo-terminal of the same size (pexpect) feeds a small emulator
    of what the CLI writes: text, carriage return, newline, erase-line, colours, wrapping at
    the right margin and scrolling at the bottom.
    """

    def __init__(self, socket: Path, columns: int, lines: int, *, tmux: bool) -> None:
        self._tmux = ["tmux", "-S", str(socket), "-f", "/dev/null"]
        self._use_tmux = tmux
        self._child: pexpect.spawn | None = None
        self._emulator = _Emulator(columns, lines)
        self.columns = columns
        self.lines = lines

    def start(self, cli: Cli, *args: str) -> None:
        """Run ``deviceflow *args`` in the terminal (then keep the pane open for a while)."""
        env = cli.environment({"COLUMNS": None, "LINES": None, "TERM": "xterm-256color"})
        command = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *COMMAND])
        command += " " + shlex.join(args) + "; echo EXIT=$?; sleep 30"
        if not self._use_tmux:
            self._child = pexpect.spawn(
                "sh", ["-c", command], dimensions=(self.lines, self.columns), encoding="utf-8"
            )
            return
        size = ["-x", str(self.columns), "-y", str(self.lines)]
        subprocess.run(
            [*self._tmux, "new-session", "-d", *size, command],
            check=True,
            timeout=30 * time_factor(),
        )

    def visible(self) -> str:
        """The text on the screen now, one line per terminal row."""
        if self._child is not None:
            while True:
                try:
                    self._emulator.feed(self._child.read_nonblocking(65536, timeout=0.05))
                except (pexpect.TIMEOUT, pexpect.EOF):
                    return self._emulator.text()
        return subprocess.run(
            [*self._tmux, "capture-pane", "-p"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30 * time_factor(),
        ).stdout

    def close(self) -> None:
        if self._child is not None:
            self._child.close(force=True)
        else:
            subprocess.run(
                [*self._tmux, "kill-server"],
                capture_output=True,
                check=False,
                timeout=30 * time_factor(),
            )


_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


class _Emulator:
    """The screen of a terminal that receives what the CLI writes (see Screen)."""

    def __init__(self, columns: int, lines: int) -> None:
        self._columns = columns
        self._lines = lines
        self._rows: list[list[str]] = [[]]
        self._column = 0

    def feed(self, text: str) -> None:
        at = 0
        while at < len(text):
            escape = _CSI.match(text, at)
            if escape is not None:
                if escape.group(2) == "K":  # erase in line: 2 all of it, else to its end
                    row = self._rows[-1]
                    del row[0 if escape.group(1) == "2" else self._column :]
                at = escape.end()
                continue
            char = text[at]
            at += 1
            if char == "\r":
                self._column = 0
            elif char == "\n":
                self._rows.append([])
            elif char >= " ":
                if self._column >= self._columns:  # wrap at the right margin
                    self._rows.append([])
                    self._column = 0
                row = self._rows[-1]
                row.extend(" " * (self._column - len(row) + 1))
                row[self._column] = char
                self._column += 1

    def text(self) -> str:
        shown = self._rows[-self._lines :]  # what scrolled off the top is gone
        return "".join("".join(row).rstrip() + "\n" for row in shown)


@pytest.fixture
def screen(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Screen]:
    """A terminal of (columns, lines): tmux where installed, else the emulator."""
    columns, lines = request.param
    running = Screen(tmp_path / "tmux.sock", columns, lines, tmux=shutil.which("tmux") is not None)
    yield running
    running.close()


@pytest.mark.parametrize("screen", [(80, 24), (120, 40)], indirect=True, ids=["80x24", "120x40"])
def test_code_and_link_stay_on_the_visible_screen(
    cli: Cli, server: ServerThread, screen: Screen
) -> None:
    """While login waits, the user code, the link and the countdown are all on the screen;
    where there is room the QR code too, with its quiet zone, and it reads as the link."""
    screen.start(cli, "login", "--no-browser", *cli.server_args())
    user_code = server.wait_for_code()
    wait_until(lambda: "expires in" in screen.visible(), within=15)
    shown = screen.visible()
    rows = shown.splitlines()
    server.approve(user_code)
    wait_until(lambda: "EXIT=0" in screen.visible(), within=15)

    assert len(rows) <= screen.lines
    assert f"{server.issuer}/device" in shown
    assert user_code in next(row for row in rows if "enter the code" in row)
    countdown = next(row for row in rows if "expires in" in row)
    assert user_code in countdown  # the code again, beside the countdown
    link = f"{server.issuer}/device?user_code={user_code}"
    assert link in shown
    if screen.lines >= 40:
        assert "QR code" in shown
        assert encodes(qr_modules(shown), link)
        assert 4 <= qr_quiet_zone(shown)
    else:
        assert "QR code" not in shown  # 24 lines cannot hold it and the code: left out


@pytest.mark.parametrize("screen", [(80, 24)], indirect=True, ids=["80x24"])
def test_demo_shows_what_login_shows(screen: Screen, cli: Cli) -> None:
    """`deviceflow demo` presents its code as login does: big code, link, countdown, named
    as the demo's."""
    screen.start(cli, "demo", "--no-browser", "--interval", "30")
    wait_until(lambda: "expires in" in screen.visible(), within=15)
    shown = screen.visible()
    assert "The demo signs in account demo at http://127.0.0.1:" in shown
    assert "Open this link in a browser:" in shown
    assert "█" in shown  # the big letters
    assert "Waiting for approval of " in shown


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_the_emulator_shows_what_tmux_shows(
    cli: Cli, server: ServerThread, tmp_path: Path, size: tuple[int, int]
) -> None:
    """The emulator used where tmux is missing agrees with tmux on login's screen."""
    if shutil.which("tmux") is None:  # pragma: no cover - nothing to compare with
        pytest.skip("tmux is not installed: the emulator has nothing to be compared with")
    screens = [
        Screen(tmp_path / f"{name}.sock", *size, tmux=name == "tmux") for name in ("tmux", "pty")
    ]
    try:
        for screen in screens:
            screen.start(cli, "login", "--no-browser", "--no-qr", *cli.server_args())
            server.wait_for_code()
            wait_until(partial(_counting_down, screen), within=15)
        shown = [_without_moving_parts(screen.visible()) for screen in screens]
    finally:
        for screen in screens:
            screen.close()
    assert shown[0] == shown[1]


def _counting_down(screen: Screen) -> bool:
    return "expires in" in screen.visible()


def _without_moving_parts(text: str) -> list[str]:
    """The screen's lines with the code, spinner and countdown masked (they differ by run)."""
    text = re.sub(r"[A-Z]{4}-[A-Z]{4}", "CODE-CODE", text)
    text = re.sub(r"expires in \d+:\d\d", "expires in M:SS", text)
    text = re.sub("[" + "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" + "]", "*", text)
    rows = [line.rstrip() for line in text.splitlines()]
    banner = [row for row in rows if "█" not in row]  # the big letters spell the code
    while banner and not banner[-1]:
        banner.pop()
    return banner
