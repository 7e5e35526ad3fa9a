"""What a person sees while signing in, and the rules for when they see it.

On a terminal (stdout is a TTY): the user code large and in bold, the link, a QR code of the
link, and a countdown to the code's expiry that rewrites one line each second. Otherwise: plain
lines on stderr, no colour, no QR code, no countdown, so stdout stays parseable.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import sys
import threading
import webbrowser
from datetime import datetime, timezone
from typing import TextIO

from deviceflow._models import DeviceCode, Token
from deviceflow._urls import require_secure_url
from deviceflow.exceptions import DeviceFlowError

__all__ = [
    "Console",
    "LoginView",
    "big_text",
    "can_open_browser",
    "describe_token",
    "format_remaining",
    "humanize",
    "open_link",
    "open_link_in_background",
    "qr_text",
    "redact",
]


def redact(secret: str | None) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    if not secret:
        return "(none)"
    return f"{secret[:4]}…({len(secret)} chars)"


def describe_token(token: Token) -> str:
    """A one-line description of a token that shows no secret in full."""
    expiry = token.expires_at.isoformat(timespec="seconds") if token.expires_at else "never"
    return (
        f"access token {redact(token.access_token)}, type {token.token_type}, "
        f"expires {expiry}, refresh token {redact(token.refresh_token)}"
    )


def can_open_browser() -> bool:
    """True when a browser can plausibly be opened (a display, or a desktop OS)."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_link(url: str) -> bool:
    """Open ``url`` in a browser, but only an https (or loopback http) link."""
    try:
        require_secure_url(url, "verification link")
    except DeviceFlowError:
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def open_link_in_background(url: str, on_opened: asyncio.Future[bool]) -> None:
    """Open ``url`` in a daemon thread and resolve ``on_opened`` with the result.

    Some browser launchers wait for the browser to exit, so the opening must neither block the
    event loop nor keep the process alive at exit (Ctrl-C must not wait for a browser).
    """
    loop = on_opened.get_loop()

    def report(opened: bool) -> None:
        if not on_opened.done():
            on_opened.set_result(opened)

    def run() -> None:
        opened = open_link(url)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(report, opened)

    threading.Thread(target=run, name="deviceflow-browser", daemon=True).start()


def format_remaining(seconds: float) -> str:
    """``seconds`` as ``M:SS`` (or ``H:MM:SS``), never negative."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def humanize(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3 h 5 min``, ``90 days``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 2 * 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{whole // 86400} days"


# --- the big user code -----------------------------------------------------------------------

# A 5x5 font for what user codes are made of (RFC 8628 6.1 recommends base-20 letters; some
# providers use digits). 0 is slashed and O round, I has serifs and 1 a flag, so they differ.
_FONT: dict[str, tuple[str, ...]] = {
    "A": (" ### ", "#   #", "#####", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#### ", "#   #", "#### "),
    "C": (" ####", "#    ", "#    ", "#    ", " ####"),
    "D": ("#### ", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#### ", "#    ", "#####"),
    "F": ("#####", "#    ", "#### ", "#    ", "#    "),
    "G": (" ####", "#    ", "#  ##", "#   #", " ####"),
    "H": ("#   #", "#   #", "#####", "#   #", "#   #"),
    "I": ("#####", "  #  ", "  #  ", "  #  ", "#####"),
    "J": ("#####", "    #", "    #", "#   #", " ### "),
    "K": ("#   #", "#  # ", "###  ", "#  # ", "#   #"),
    "L": ("#    ", "#    ", "#    ", "#    ", "#####"),
    "M": ("#   #", "## ##", "# # #", "#   #", "#   #"),
    "N": ("#   #", "##  #", "# # #", "#  ##", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", " ### "),
    "P": ("#### ", "#   #", "#### ", "#    ", "#    "),
    "Q": (" ### ", "#   #", "# # #", "#  # ", " ## #"),
    "R": ("#### ", "#   #", "#### ", "#  # ", "#   #"),
    "S": (" ####", "#    ", " ### ", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", " ### "),
    "V": ("#   #", "#   #", "#   #", " # # ", "  #  "),
    "W": ("#   #", "#   #", "# # #", "## ##", "#   #"),
    "X": ("#   #", " # # ", "  #  ", " # # ", "#   #"),
    "Y": ("#   #", " # # ", "  #  ", "  #  ", "  #  "),
    "Z": ("#####", "   # ", "  #  ", " #   ", "#####"),
    "0": (" ### ", "#  ##", "# # #", "##  #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "  ## ", " #   ", "#####"),
    "3": ("#### ", "    #", " ### ", "    #", "#### "),
    "4": ("#   #", "#   #", "#####", "    #", "    #"),
    "5": ("#####", "#    ", "#### ", "    #", "#### "),
    "6": (" ### ", "#    ", "#### ", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", "  #  "),
    "8": (" ### ", "#   #", " ### ", "#   #", " ### "),
    "9": (" ### ", "#   #", " ####", "    #", " ### "),
    "-": ("   ", "   ", "###", "   ", "   "),
    " ": ("  ", "  ", "  ", "  ", "  "),
}


def big_text(text: str, *, pixel: str = "█") -> list[str] | None:
    """``text`` in 5-line block letters, or None when a character is not in the font."""
    glyphs = []
    for char in text.upper():
        glyph = _FONT.get(char)
        if glyph is None:
            return None
        glyphs.append(glyph)
    return [
        "  ".join(glyph[row] for glyph in glyphs).replace("#", pixel).rstrip() for row in range(5)
    ]


def qr_text(data: str, *, unicode: bool, colour: bool = False) -> list[str]:
    """A QR code of ``data`` for a terminal, as lines: half blocks when ``unicode``, else ANSI
    colours; with the 4-module quiet zone the QR standard asks for.

    Light modules are drawn in the foreground colour. With ``colour`` the foreground is set to
    white and the background to black, so the code reads the same on light and dark
    terminals; without it (``NO_COLOR``) it suits the usual light-on-dark terminal, and phone
    cameras read most inverted codes too.
    """
    import segno

    out = io.StringIO()
    code = segno.make(data, error="m", micro=False)
    code.terminal(out=out, border=_QUIET_ZONE, compact=unicode)
    lines = out.getvalue().splitlines()
    if colour and unicode:
        return [f"\x1b[97;40m{line}\x1b[0m" for line in lines]
    return lines


#: Modules of light margin around a QR code (ISO/IEC 18004 asks for 4).
_QUIET_ZONE = 4


# --- the console -----------------------------------------------------------------------------


class Console:
    """Where messages go and how they look.

    ``interactive`` when stdout is a terminal: colour (unless ``NO_COLOR`` or ``TERM=dumb``),
    the QR code and the countdown go to stdout. Otherwise every message goes to stderr, plain.
    """

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.interactive = _isatty(out)
        self.colour = (
            self.interactive
            and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM", "") != "dumb"
        )
        self.unicode = _can_encode(out, "█▀▄…⠋")

    @property
    def messages(self) -> TextIO:
        """The stream for messages to the person."""
        return self.out if self.interactive else self.err

    def say(self, text: str = "") -> None:
        """Print a message line."""
        print(text, file=self.messages, flush=True)

    def style(self, text: str, *codes: int) -> str:
        """``text`` with ANSI SGR ``codes`` (1 bold, 2 dim, 32 green...) when colour is on."""
        if not self.colour or not codes:
            return text
        return f"\x1b[{';'.join(map(str, codes))}m{text}\x1b[0m"

    @property
    def width(self) -> int:
        """The terminal's width in columns (80 when unknown)."""
        return shutil.get_terminal_size((80, 24)).columns

    @property
    def height(self) -> int:
        """The terminal's height in lines (24 when unknown)."""
        return shutil.get_terminal_size((80, 24)).lines

    def ask(self, question: str, stdin: TextIO | None = None) -> bool | None:
        """Ask a yes/no question on the terminal: True for yes, False for anything else, None
        when there is no terminal to ask on (stdin or stdout is not one)."""
        stdin = stdin if stdin is not None else sys.stdin
        if not (self.interactive and _isatty(stdin)):
            return None
        print(f"{question} [y/N] ", end="", file=self.out, flush=True)
        try:
            answer = stdin.readline()
        except (EOFError, OSError):
            answer = ""
        return answer.strip().lower() in ("y", "yes")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def _rows(line: str, width: int) -> int:
    """How many terminal rows ``line`` takes (a long one wraps)."""
    return max(1, -(-_visible_len(line) // max(1, width)))


def _fit(width: int, text: str, *extras: str) -> str:
    """``text`` followed by as many of ``extras`` as fit in ``width`` columns, in order."""
    for extra in extras:
        if _visible_len(text + extra) <= width:
            text += extra
    return text


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _can_encode(stream: TextIO, sample: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class LoginView:
    """Shows one device code and a live countdown until the flow ends.

    On a terminal the countdown is one line rewritten every second; elsewhere a single
    "waiting" line is printed, once.
    """

    def __init__(self, console: Console, *, qr: bool, prefix: str = "deviceflow") -> None:
        self._console = console
        self._prefix = prefix  # of the plain lines: "deviceflow", or "deviceflow demo"
        self._qr = qr
        self._code: DeviceCode | None = None
        self._interval: float | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._line_open = False
        self._ticks = 0
        self._closed = False

    @property
    def shown(self) -> bool:
        """True once a code has been shown."""
        return self._code is not None

    def show_code(self, code: DeviceCode, *, account: str, issuer: str) -> None:
        """Present ``code`` (once per flow), then start the countdown."""
        self._code = code
        self._interval = code.interval
        console = self._console
        if not console.interactive:
            link = (
                f" (or open {code.verification_uri_complete})"
                if code.link != code.verification_uri
                else ""
            )
            console.say(
                f"{self._prefix}: to sign in account {account!r} at {issuer}, open "
                f"{code.verification_uri} and enter the code {code.user_code}{link}. "
                f"The code expires at {code.expires_at:%H:%M:%S} UTC."
            )
            if code.message:
                console.say(f"{self._prefix}: the provider says: {code.message}")
            console.say(f"{self._prefix}: waiting for approval (Ctrl-C to cancel)...")
            return
        self._show_interactive(code, account=account, issuer=issuer)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _show_interactive(self, code: DeviceCode, *, account: str, issuer: str) -> None:
        for line in self.layout(code, account=account, issuer=issuer):
            self._console.say(line)

    def layout(self, code: DeviceCode, *, account: str, issuer: str) -> list[str]:
        """The lines that present ``code`` on the terminal, chosen to fit its size.

        The user code and the link are always there; the big letters and the QR code are left
        out when they do not fit (first the letters, then the QR code, then both), so that
        nothing scrolls away above the countdown, which repeats the code.
        """
        console = self._console
        width, height = console.width, console.height
        banner = big_text(code.user_code, pixel="█" if console.unicode else "#")
        if banner is not None and 6 + max(map(len, banner)) > width:
            banner = None
        qr = None
        if self._qr:
            qr = qr_text(code.link, unicode=console.unicode, colour=console.colour)
        if qr is not None and 4 + max(map(_visible_len, qr)) > width:
            qr = None
        # Room for the countdown line and a note (browser opened, slow down) under the code.
        room = height - 3
        for with_banner, with_qr in ((True, True), (False, True), (True, False), (False, False)):
            lines = self._lines(
                code,
                account=account,
                issuer=issuer,
                banner=banner if with_banner else None,
                qr=qr if with_qr else None,
            )
            if sum(_rows(line, width) for line in lines) <= room:
                return lines
        return lines

    def _lines(
        self,
        code: DeviceCode,
        *,
        account: str,
        issuer: str,
        banner: list[str] | None,
        qr: list[str] | None,
    ) -> list[str]:
        style = self._console.style
        what = "The demo signs in" if self._prefix.endswith("demo") else "Signing in"
        lines = [f"{what} account {style(account, 1)} at {issuer}", ""]
        if code.message:
            lines += [f"  {code.message}", ""]
        lines += [
            f"  Open this link in a browser:  {style(code.verification_uri, 1, 4)}",
            f"  and enter the code:           {style(f' {code.user_code} ', 1, 7)}",
            "",
        ]
        if banner is not None:
            lines += [f"      {style(row, 1)}" for row in banner] + [""]
        if code.link != code.verification_uri:
            lines += [
                "  Or open this link, which fills in the code for you:",
                f"      {style(code.link, 4)}",
                "",
            ]
        if qr is not None:
            lines += ["  Or scan this QR code with your phone:"]
            lines += [f"    {row}" for row in qr]
        return lines

    def note(self, text: str) -> None:
        """A line of its own, above the countdown (nothing once the view is closed)."""
        if self._closed:
            return
        self._clear_line()
        if self._console.interactive:
            self._console.say(f"  {text}")
        else:
            self._console.say(f"{self._prefix}: {text}")
        self._draw()

    def interval_changed(self, interval: float) -> None:
        """The server asked to slow down (RFC 8628 3.5): say so once."""
        if self._interval is not None and interval != self._interval:
            self.note(f"the server asked to slow down: polling every {interval:g} s")
        self._interval = interval

    async def close(self) -> None:
        """Stop the countdown and leave the cursor on a fresh line."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        self._clear_line()

    def _remaining(self) -> float:
        assert self._code is not None
        return (self._code.expires_at - datetime.now(timezone.utc)).total_seconds()

    def _draw(self) -> None:
        if self._code is None or not self._console.interactive or self._ticker is None:
            return
        console = self._console
        spin = (
            _SPINNER[self._ticks % len(_SPINNER)] if console.unicode else "-\\|/"[self._ticks % 4]
        )
        remaining = format_remaining(self._remaining())
        text = _fit(
            console.width - 1,
            f"  {spin} Waiting for approval of {console.style(self._code.user_code, 1)}, "
            f"expires in {console.style(remaining, 1)}",
            f" at {self._code.verification_uri}",
            " (Ctrl-C to cancel)",
        )
        console.out.write(f"\r\x1b[2K{text}")
        console.out.flush()
        self._line_open = True

    def _clear_line(self) -> None:
        if self._line_open:
            self._console.out.write("\r\x1b[2K")
            self._console.out.flush()
            self._line_open = False

    async def _tick(self) -> None:
        # Redraw just after each whole second of the remaining time, so the count is even.
        while True:
            self._draw()
            self._ticks += 1
            remaining = self._remaining()
            await asyncio.sleep(max(0.05, remaining - int(remaining)) + 0.01)
