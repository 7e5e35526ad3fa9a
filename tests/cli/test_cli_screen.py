"""What a person sees: ``deviceflow login`` in a real terminal of 80x24 and 120x40.

The command runs inside tmux, a real terminal emulator, and the tests read tmux's visible
screen (``capture-pane``), so what scrolled away above the screen does not count.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import COMMAND, Cli, ServerThread
from test_cli_terminal import encodes, qr_modules, qr_quiet_zone

from helpers import wait_until


class Screen:
    """A command running in a detached tmux session of a given size."""

    def __init__(self, socket: Path, columns: int, lines: int) -> None:
        self._tmux = ["tmux", "-S", str(socket), "-f", "/dev/null"]
        self.columns = columns
        self.lines = lines

    def start(self, cli: Cli, *args: str) -> None:
        """Run ``deviceflow *args`` in the terminal (then keep the pane open for a while)."""
        env = cli.environment({"COLUMNS": None, "LINES": None, "TERM": "xterm-256color"})
        command = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *COMMAND])
        command += " " + shlex.join(args) + "; echo EXIT=$?; sleep 30"
        size = ["-x", str(self.columns), "-y", str(self.lines)]
        subprocess.run([*self._tmux, "new-session", "-d", *size, command], check=True)

    def visible(self) -> str:
        """The text on the screen now, one line per terminal row."""
        return subprocess.run(
            [*self._tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True
        ).stdout

    def close(self) -> None:
        subprocess.run([*self._tmux, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def screen(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Screen]:
    columns, lines = request.param
    running = Screen(tmp_path / "tmux.sock", columns, lines)
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
