"""The ``deviceflow`` command: login, token, status, logout, keygen, reset, demo, completion.

Exit codes (distinct, documented in docs/cli.md):

====  =====================================================================
0     success
1     any other error
2     bad command line (usage), or a question that needs --yes off a terminal
3     the authorization was denied
4     the device code expired before approval
5     network or server failure
6     configuration error (provider, client, discovery, profile, not signed in)
7     token store error (wrong or missing key, unreadable store)
130   interrupted (Ctrl-C)
====  =====================================================================

Results go to stdout, progress and diagnostics to stderr (on a terminal, ``login`` draws its
code and countdown on stdout). Errors are one line on stderr, with a hint where there is one;
``--debug`` logs each HTTP request and adds the traceback. Options, environment variables and
the profile file are described in ``deviceflow._cli._settings`` and docs/cli.md; the commands
live in ``deviceflow._cli``.

This module imports only what parsing needs: ``deviceflow token`` with a fresh stored token
(``_cli._fast``) never imports the HTTP client or the event loop.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

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
from ._cli._settings import OPTIONS, Settings, add_options, load_settings
from ._version import __version__
from .exceptions import DeviceFlowError

if TYPE_CHECKING:
    from ._cli._terminal import Console

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


# --- the commands --------------------------------------------------------------------------

_Handler = Callable[[argparse.Namespace, "Console"], Coroutine[Any, Any, int]]


async def _run_login(args: argparse.Namespace, console: Console) -> int:
    from ._cli import _login

    return await _login.login(load_settings("login", args), console)


async def _run_token(args: argparse.Namespace, console: Console) -> int:
    settings = load_settings("token", args)
    if args.format == "exec-credential":
        from ._cli import _kube

        return await _kube.run(settings, console)
    from ._cli import _commands

    return await _commands.token(_with_format(settings, args), console)


def _with_format(settings: Settings, args: argparse.Namespace) -> Settings:
    """``token --format json`` is ``token --json``."""
    if getattr(args, "format", "token") != "json":
        return settings
    import attrs

    return attrs.evolve(settings, cli={**settings.cli, "json": True})


async def _run_credential(args: argparse.Namespace, console: Console) -> int:
    from ._cli import _credential

    settings = load_settings("credential", args)
    return await _credential.run(args.action, settings, console, sys.stdin)


async def _run_status(args: argparse.Namespace, console: Console) -> int:
    from ._cli import _commands

    return await _commands.status(load_settings("status", args), console)


async def _run_logout(args: argparse.Namespace, console: Console) -> int:
    from ._cli import _commands

    return await _commands.logout(load_settings("logout", args), console)


async def _run_reset(args: argparse.Namespace, console: Console) -> int:
    from ._cli import _commands

    return await _commands.reset(load_settings("reset", args), console)


async def _run_keygen(args: argparse.Namespace, console: Console) -> int:
    from ._cli import _commands

    return _commands.keygen(args.output, console)


async def _run_demo(args: argparse.Namespace, console: Console) -> int:
    from ._cli._demo import demo

    return await demo(args, console)


async def _run_completion(args: argparse.Namespace, console: Console) -> int:
    from ._cli._completion import script

    print(script(args.shell, build_parser()), file=console.out, end="", flush=True)
    return EXIT_OK


#: name -> (handler, one-line summary, description, examples)
_COMMANDS: dict[str, tuple[_Handler, str, str, str]] = {
    "login": (
        _run_login,
        "sign in with a device code and store the token",
        "Run the device flow: show the user code, the link and a QR code, open the browser, "
        "wait for approval, and store the token (encrypted) under --account. When the account "
        "already has a valid sign-in, login asks before replacing it (--yes does not ask).",
        "  deviceflow login --issuer https://idp.example.com --client-id my-cli\n"
        "  deviceflow login --provider entra --tenant contoso.com --client-id 0000-...\n"
        "  deviceflow login --profile work --account ci --no-browser --yes",
    ),
    "token": (
        _run_token,
        "print a valid access token (refreshed if needed)",
        "Print the account's access token and nothing else on stdout, refreshing it first if "
        "needed. Never starts a device flow (run login first), except as kubectl's plugin when "
        "kubectl says a person is there (--format exec-credential).",
        '  curl -H "Authorization: Bearer $(deviceflow token)" https://api.example.com/\n'
        "  deviceflow token --account ci --json\n"
        "  deviceflow token --format exec-credential   # in a kubeconfig's exec block",
    ),
    "status": (
        _run_status,
        "list the signed-in accounts (no secrets)",
        "List the accounts signed in with this store: issuer, client, scope, expiry, and "
        "whether a refresh token is stored. Never shows a secret.",
        "  deviceflow status\n  deviceflow status --json",
    ),
    "logout": (
        _run_logout,
        "revoke the grant (where supported) and delete the token",
        "Revoke the account's grant where the provider supports it (RFC 7009) and delete the "
        "stored token.",
        "  deviceflow logout\n  deviceflow logout --account ci",
    ),
    "credential": (
        _run_credential,
        "git credential helper: the token as git's password",
        "Speak git's credential helper protocol (get, store, erase): "
        "git config --global credential.helper '!deviceflow credential'. The profile whose "
        "hosts match the request's host gives the server; see docs/howto/git.md.",
        "  git config --global credential.helper '!deviceflow credential'\n"
        "  printf 'protocol=https\\nhost=git.example.com\\n\\n' | deviceflow credential get",
    ),
    "keygen": (
        _run_keygen,
        "print or write a new store key",
        "Print a new random store key (base64 of 32 bytes), or write it to a new file with "
        "mode 0600.",
        "  export DEVICEFLOW_KEY=$(deviceflow keygen)\n"
        "  deviceflow keygen -o ~/.config/deviceflow/team.key",
    ),
    "reset": (
        _run_reset,
        "start over: delete the stored tokens (and the CLI's key file)",
        "Delete every token of the file store (the stored grants are not revoked) and the "
        "store key file the CLI created; for a lost or changed key. Asks first on a terminal; "
        "elsewhere needs --yes.",
        "  deviceflow reset\n  deviceflow reset --store ~/tokens --yes",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deviceflow`` command."""
    parser = _Parser(
        prog="deviceflow",
        description="OAuth 2.0 device authorization grant (RFC 8628) from the command line.",
        epilog="Every option also reads DEVICEFLOW_<OPTION> and the profile file; see\n"
        "docs/cli.md. Exit codes: 0 ok, 1 error, 2 usage, 3 denied, 4 expired,\n"
        "5 network, 6 configuration, 7 store, 130 interrupted.\n\n"
        "examples:\n"
        "  deviceflow login --issuer https://idp.example.com --client-id my-cli\n"
        '  curl -H "Authorization: Bearer $(deviceflow token)" https://api.example.com/\n'
        "  deviceflow demo --auto-approve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deviceflow {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log each HTTP request and show tracebacks [env DEVICEFLOW_DEBUG]",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    for name, (handler, summary, description, examples) in _COMMANDS.items():
        command = _subcommand(sub, name, summary, description, examples)
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

    demo = _subcommand(
        sub,
        "demo",
        "a full device flow against the built-in test server",
        "Start the built-in authorization server and sign in to it as login does (code, link, "
        "QR code, countdown), then show the token, the cached token and a refresh.",
        "  deviceflow demo\n  deviceflow demo --auto-approve --no-browser",
    )
    demo.add_argument(
        "--auto-approve", action="store_true", help="approve the code without a person"
    )
    demo.add_argument(
        "--no-browser", dest="browser", action="store_false", help="never open a browser"
    )
    demo.add_argument("--no-qr", dest="qr", action="store_false", help="do not show a QR code")
    demo.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    demo.add_argument(
        "--interval", type=float, default=1.0, help="polling interval the server asks for"
    )
    _add_debug(demo)
    demo.set_defaults(handler=_run_demo)

    completion = _subcommand(
        sub,
        "completion",
        "print a shell completion script (bash, zsh, fish)",
        "Print the completion script for SHELL on stdout.",
        "  source <(deviceflow completion bash)          # in ~/.bashrc\n"
        "  deviceflow completion zsh > ~/.zfunc/_deviceflow  # a folder on $fpath\n"
        "  deviceflow completion fish > ~/.config/fish/completions/deviceflow.fish",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL")
    _add_debug(completion)
    completion.set_defaults(handler=_run_completion)
    return parser


def _subcommand(
    sub: argparse._SubParsersAction[_Parser],
    name: str,
    summary: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: "deviceflow --debug login" keeps the value the main parser set.
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped option."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{self.suggestion(message)}\n")

    def suggestion(self, message: str) -> str:
        """ "; did you mean --issuer?" for the first unknown option (or command) of
        ``message``."""
        import difflib

        wrong = re.search(r"invalid choice: '([^']*)'", message)
        if wrong is not None:  # a mistyped command
            names = [str(c) for a in self._actions if a.choices for c in a.choices]
            close = difflib.get_close_matches(wrong.group(1), names, n=1, cutoff=0.6)
            return f"; did you mean {close[0]}?" if close else ""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        unknown = [w.split("=", 1)[0] for w in message[len(prefix) :].split() if w[:2] == "--"]
        if not unknown:
            return ""
        owners = [o for o in OPTIONS if o.flag == unknown[0]]
        if owners:
            return f"; {unknown[0]} is an option of {' and '.join(sorted(owners[0].commands))} only"
        mine = [s for action in self._actions for s in action.option_strings if s[:2] == "--"]
        close = difflib.get_close_matches(unknown[0], mine, n=1, cutoff=0.6)
        return f"; did you mean {close[0]}?" if close else ""


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Report it against the command's own parser: its usage, its options to suggest.
        command = _subparser(parser, args.command) if args.command else parser
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(name)  # pragma: no cover - the parser always has its commands


def _debug_requested(args: argparse.Namespace) -> bool:
    if args.debug:
        return True
    return os.environ.get("DEVICEFLOW_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _fast_token(args: argparse.Namespace) -> int | None:
    """``token`` for a fresh stored token, without the client; None: take the full path."""
    from ._cli._fast import fresh_token, print_token

    try:
        settings = _with_format(load_settings("token", args), args)
        found = fresh_token(settings)
        if found is None:
            return None
        current, entry = found
        if args.format == "exec-credential":  # kubectl runs the plugin for every command
            import json

            from ._cli._kube import exec_credential, read_exec_info

            info = read_exec_info(settings.env, sys.stdin)
            credential = exec_credential(current, info.api_version, account=entry.account)
            print(json.dumps(credential), flush=True)
            return EXIT_OK
        print_token(
            settings, current, account=entry.account, issuer=entry.issuer, client_id=entry.client_id
        )
    except CliError:
        return None  # the full path says it, with the rest of its checks
    return EXIT_OK


def _configure_logging(debug: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="deviceflow: %(levelname)s %(message)s")
    # Only deviceflow's own lines: the libraries' debug chatter (filelock's lock and unlock
    # lines, asyncio's) says nothing about the sign-in.
    logging.getLogger("deviceflow").setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return EXIT_OK
    debug = _debug_requested(args)
    try:
        if args.command == "token" and not debug:
            fast = _fast_token(args)
            if fast is not None:
                return fast
        return _run(args, debug)
    except BrokenPipeError:
        # The reader went away (`deviceflow token | head -c0`): say nothing more on stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


def _run(args: argparse.Namespace, debug: bool) -> int:
    import asyncio
    import traceback

    from ._cli._terminal import Console

    _configure_logging(debug)
    console = Console(sys.stdout, sys.stderr)
    handler: _Handler = args.handler
    try:
        return asyncio.run(handler(args, console))
    except KeyboardInterrupt:
        # A flow interrupted while polling has stored nothing: the token is written on success.
        note = "; nothing was stored" if args.command in ("login", "demo") else ""
        print(f"\ndeviceflow: interrupted{note}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (DeviceFlowError, CliError) as exc:
        if debug:
            traceback.print_exc()
        print(f"deviceflow: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return exit_code_for(exc)
    except BrokenPipeError:
        raise
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
