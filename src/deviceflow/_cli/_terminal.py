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


def qr_text(data: str, *, unicode: bool) -> str:
    """A QR code of ``data`` for a terminal: half blocks when ``unicode``, else ANSI colours.

    Light modules are drawn in the foreground colour, as terminals with a dark background
    need; phone cameras read it either way.
    """
    import segno

    out = io.StringIO()
    code = segno.make(data, error="m", micro=False)
    code.terminal(out=out, border=2, compact=unicode)
    return out.getvalue()


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

    def __init__(self, console: Console, *, qr: bool) -> None:
        self._console = console
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
                f"deviceflow: to sign in account {account!r} at {issuer}, open "
                f"{code.verification_uri} and enter the code {code.user_code}{link}. "
                f"The code expires at {code.expires_at:%H:%M:%S} UTC."
            )
            if code.message:
                console.say(f"deviceflow: the provider says: {code.message}")
            console.say("deviceflow: waiting for approval (Ctrl-C to cancel)...")
            return
        self._show_interactive(code, account=account, issuer=issuer)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _show_interactive(self, code: DeviceCode, *, account: str, issuer: str) -> None:
        console = self._console
        say, style = console.say, console.style
        say(f"Signing in account {style(account, 1)} at {issuer}")
        if code.message:
            say()
            say(f"  {code.message}")
        say()
        say("  Open this link in a browser:")
        say()
        say(f"      {style(code.verification_uri, 1, 4)}")
        say()
        say("  and enter the code:")
        say()
        banner = big_text(code.user_code, pixel="█" if console.unicode else "#")
        if banner is not None and 6 + max(map(len, banner)) <= console.width:
            for row in banner:
                say(f"      {style(row, 1)}")
            say()
        say(f"      {style(f' {code.user_code} ', 1, 7)}")
        say()
        if code.link != code.verification_uri:
            say("  or open this link, which fills in the code for you:")
            say()
            say(f"      {style(code.link, 4)}")
            say()
        if self._qr:
            say("  or scan this QR code with your phone:")
            say()
            for row in qr_text(code.link, unicode=console.unicode).splitlines():
                say(f"    {row}")
            say()

    def note(self, text: str) -> None:
        """A line of its own, above the countdown (nothing once the view is closed)."""
        if self._closed:
            return
        self._clear_line()
        if self._console.interactive:
            self._console.say(f"  {text}")
        else:
            self._console.say(f"deviceflow: {text}")
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
        text = (
            f"  {spin} Waiting for approval. The code expires in {console.style(remaining, 1)}"
            f" (Ctrl-C to cancel)"
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
