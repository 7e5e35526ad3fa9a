"""The ``deviceflow`` command.

Exit codes (distinct, documented in docs/cli.md):

====  =====================================================================
0     success
1     any other error
2     bad command line (usage)
3     the authorization was denied
4     the device code expired before approval
5     network or server failure
6     configuration error (provider, client, discovery)
7     token store error (wrong key, unreadable store)
130   interrupted (Ctrl-C)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import webbrowser
from collections.abc import Sequence
from typing import TextIO

from . import __version__
from ._client import DeviceFlowClient
from ._machine import require_secure_url
from ._models import DeviceCode, Token
from ._provider import Provider
from .exceptions import (
    AccessDeniedError,
    DeviceFlowError,
    DiscoveryError,
    ExpiredTokenError,
    InsecureEndpointError,
    InvalidClientError,
    ReauthorizationRequiredError,
    StoreError,
    TransportError,
)

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_EXPIRED = 4
EXIT_NETWORK = 5
EXIT_CONFIG = 6
EXIT_STORE = 7
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    "ok": EXIT_OK,
    "error": EXIT_ERROR,
    "usage": EXIT_USAGE,
    "denied": EXIT_DENIED,
    "expired": EXIT_EXPIRED,
    "network": EXIT_NETWORK,
    "config": EXIT_CONFIG,
    "store": EXIT_STORE,
    "interrupted": EXIT_INTERRUPTED,
}


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(error, AccessDeniedError):
        return EXIT_DENIED
    if isinstance(error, ExpiredTokenError):
        return EXIT_EXPIRED
    if isinstance(error, TransportError):
        return EXIT_NETWORK
    if isinstance(
        error,
        (DiscoveryError, InsecureEndpointError, InvalidClientError, ReauthorizationRequiredError),
    ):
        return EXIT_CONFIG
    if isinstance(error, StoreError):
        return EXIT_STORE
    return EXIT_ERROR


def redact(secret: str | None) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    if not secret:
        return "(none)"
    return f"{secret[:4]}…({len(secret)} chars)"


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


def describe_token(token: Token) -> str:
    expiry = token.expires_at.isoformat(timespec="seconds") if token.expires_at else "never"
    return (
        f"access token {redact(token.access_token)}, type {token.token_type}, "
        f"expires {expiry}, refresh token {redact(token.refresh_token)}"
    )


# --- demo --------------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from .testing import AuthorizationServer

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    async with AuthorizationServer(
        port=args.port,
        interval=args.interval,
        auto_approve_after=1 if args.auto_approve else None,
        access_token_lifetime=3600,
    ) as server:
        say(f"deviceflow {__version__} demo: a built-in authorization server is at {server.issuer}")
        say(f"1. Discovery: {server.issuer}/.well-known/openid-configuration")
        provider = await Provider.discover(server.issuer)
        say(f"   device endpoint {provider.device_authorization_endpoint}")
        say(f"   token endpoint  {provider.token_endpoint}")

        def show_code(code: DeviceCode, account: str) -> None:
            say("2. Device code issued. To sign in, open")
            say(f"      {code.verification_uri}")
            say(f"   and enter the code   {code.user_code}")
            say(f"   (or open {code.link}); it expires at {code.expires_at:%H:%M:%S} UTC.")
            if args.auto_approve:
                say("   --auto-approve: the demo server approves after the first poll.")
            elif args.browser and can_open_browser() and open_link(code.link):
                say("   A browser was opened on the verification page.")
            say(f"3. Polling every {code.interval:g} s (RFC 8628 3.4) ...")

        async with DeviceFlowClient(
            provider, client_id="deviceflow-demo", scope="openid offline_access", on_code=show_code
        ) as client:
            token = await client.get_token("demo")
            say(f"4. Granted: {describe_token(token)}")
            again = await client.get_token("demo")
            say(f"   get_token() again returns the cached token: {again is token}")
            refreshed = await client.refresh("demo")
            rotated = refreshed.refresh_token != token.refresh_token
            say(f"5. Refreshed: {describe_token(refreshed)}")
            say(f"   the refresh token was rotated: {rotated}")
            say(f"Done. The server saw {len(server.requests)} requests.")
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deviceflow",
        description="OAuth 2.0 device authorization grant (RFC 8628) from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"deviceflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="a full device flow against the built-in test server",
        description="Start the built-in authorization server, run a whole device flow against "
        "it (discovery, code, polling, approval, token, refresh) and show each step.",
    )
    demo.add_argument(
        "--auto-approve", action="store_true", help="approve the code without a person"
    )
    demo.add_argument(
        "--no-browser", dest="browser", action="store_false", help="never open a browser"
    )
    demo.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    demo.add_argument(
        "--interval", type=float, default=1.0, help="polling interval the server asks for"
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="deviceflow: %(levelname)s %(message)s",
    )
    try:
        return asyncio.run(args.handler(args, sys.stdout))
    except KeyboardInterrupt:
        print("deviceflow: interrupted; nothing was stored", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DeviceFlowError as exc:
        if args.debug:
            raise
        print(f"deviceflow: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
