"""The ``deviceflow`` command: login, token, status, logout, keygen and demo.

Exit codes (distinct, documented in docs/cli.md):

====  =====================================================================
0     success
1     any other error
2     bad command line (usage)
3     the authorization was denied
4     the device code expired before approval
5     network or server failure
6     configuration error (provider, client, discovery, profile, not signed in)
7     token store error (wrong key, unreadable store)
130   interrupted (Ctrl-C)
====  =====================================================================

Errors are one line on stderr, with a hint where there is one; ``--debug`` adds the traceback
and debug logging. Options, environment variables and the profile file are described in
``deviceflow._cli._settings`` and docs/cli.md; the commands live in ``deviceflow._cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

import attrs

from . import __version__
from ._cli import _commands
from ._cli._errors import (
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_EXPIRED,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_STORE,
    EXIT_USAGE,
    CliError,
    exit_code_for,
    one_line,
)
from ._cli._settings import add_options, load_settings
from ._cli._terminal import (
    Console,
    can_open_browser,
    describe_token,
    open_link,
)
from ._client import DeviceFlowClient
from ._models import DeviceCode
from ._provider import Provider
from .exceptions import DeviceFlowError

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_DENIED",
    "EXIT_ERROR",
    "EXIT_EXPIRED",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_STORE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


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
    say("Next: `deviceflow login --issuer URL --client-id ID` signs in to a real provider,")
    say("and `deviceflow token` prints its token for scripts (see docs/cli.md).")
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------

_Handler = Callable[[argparse.Namespace, Console], Coroutine[Any, Any, int]]


async def _run_login(args: argparse.Namespace, console: Console) -> int:
    return await _commands.login(load_settings("login", args), console)


async def _run_token(args: argparse.Namespace, console: Console) -> int:
    settings = load_settings("token", args)
    if args.format == "exec-credential":
        from ._cli import _kube

        return await _kube.run(settings, console)
    if args.format == "json":
        settings = attrs.evolve(settings, cli={**settings.cli, "json": True})
    return await _commands.token(settings, console)


async def _run_credential(args: argparse.Namespace, console: Console) -> int:
    from ._cli import _credential

    settings = load_settings("credential", args)
    return await _credential.run(args.action, settings, console, sys.stdin)


async def _run_status(args: argparse.Namespace, console: Console) -> int:
    return await _commands.status(load_settings("status", args), console)


async def _run_logout(args: argparse.Namespace, console: Console) -> int:
    return await _commands.logout(load_settings("logout", args), console)


async def _run_keygen(args: argparse.Namespace, console: Console) -> int:
    return _commands.keygen(args.output, console)


async def _run_demo(args: argparse.Namespace, console: Console) -> int:
    return await _demo(args, console.out)


_COMMANDS: dict[str, tuple[_Handler, str, str]] = {
    "login": (
        _run_login,
        "sign in with a device code and store the token",
        "Run the device flow: show the user code, the link and a QR code, open the browser, "
        "wait for approval, and store the token (encrypted) under --account.",
    ),
    "token": (
        _run_token,
        "print a valid access token (refreshed if needed)",
        "Print the account's access token and nothing else on stdout, refreshing it first if "
        'needed: curl -H "Authorization: Bearer $(deviceflow token)" ... Never starts a device '
        "flow (run login first), except as kubectl's plugin when kubectl says a person is "
        "there (--format exec-credential).",
    ),
    "status": (
        _run_status,
        "list the signed-in accounts (no secrets)",
        "List the accounts signed in with this store: issuer, client, scope, expiry, and "
        "whether a refresh token is stored. Never shows a secret.",
    ),
    "logout": (
        _run_logout,
        "revoke the grant (where supported) and delete the token",
        "Revoke the account's grant where the provider supports it (RFC 7009) and delete the "
        "stored token.",
    ),
    "credential": (
        _run_credential,
        "git credential helper: the token as git's password",
        "Speak git's credential helper protocol (get, store, erase): "
        "git config --global credential.helper '!deviceflow credential'. The profile whose "
        "hosts match the request's host gives the server; see docs/howto/git.md.",
    ),
    "keygen": (
        _run_keygen,
        "print or write a new store key",
        "Print a new random store key (base64 of 32 bytes), or write it to a new file with "
        "mode 0600.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deviceflow`` command."""
    parser = argparse.ArgumentParser(
        prog="deviceflow",
        description="OAuth 2.0 device authorization grant (RFC 8628) from the command line.",
        epilog="Every option also reads DEVICEFLOW_<OPTION> and the profile file; see "
        "docs/cli.md. Exit codes: 0 ok, 1 error, 2 usage, 3 denied, 4 expired, 5 network, "
        "6 configuration, 7 store, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"deviceflow {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log details and show tracebacks [env DEVICEFLOW_DEBUG]",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for name, (handler, summary, description) in _COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=description)
        add_options(command, name)
        if name == "token":
            command.add_argument(
                "--format",
                choices=("token", "json", "exec-credential"),
                default="token",
                help="token: the access token alone (the default); json: as --json; "
                "exec-credential: a kubectl ExecCredential (see docs/howto/kubectl.md)",
            )
        if name == "credential":
            command.add_argument(
                "action", metavar="ACTION", help="get, store or erase (given by git)"
            )
        if name == "keygen":
            command.add_argument(
                "--output",
                "-o",
                metavar="PATH",
                help="write the key to this new file (mode 0600) instead of printing it",
            )
        _add_debug(command)
        command.set_defaults(handler=handler)

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
    _add_debug(demo)
    demo.set_defaults(handler=_run_demo)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: "deviceflow --debug login" keeps the value the main parser set.
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def _debug_requested(args: argparse.Namespace) -> bool:
    if args.debug:
        return True
    return os.environ.get("DEVICEFLOW_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = _debug_requested(args)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="deviceflow: %(levelname)s %(message)s",
    )
    console = Console(sys.stdout, sys.stderr)
    handler: _Handler = args.handler
    try:
        return asyncio.run(handler(args, console))
    except KeyboardInterrupt:
        # A flow interrupted while polling has stored nothing: the token is written on success.
        note = "; nothing was stored" if args.command == "login" else ""
        print(f"\ndeviceflow: interrupted{note}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (DeviceFlowError, CliError) as exc:
        if debug:
            traceback.print_exc()
        print(f"deviceflow: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return exit_code_for(exc)
    except BrokenPipeError:
        # The reader went away (`deviceflow token | head -c0`): say nothing more on stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # a bug, or an error no layer translated: still one line
        if debug:
            traceback.print_exc()
        text = " ".join(str(exc).split())
        print(
            f"deviceflow: error: unexpected {type(exc).__name__}: {text}. Hint: run again with "
            "--debug for the details, and report it if it looks like a bug.",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
