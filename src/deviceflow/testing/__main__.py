"""``python -m deviceflow.testing``: run the test authorization server on its own.

The first line printed is the issuer, so scripts can read it::

    $ python -m deviceflow.testing --port 8765 --auto-approve
    http://127.0.0.1:8765
    verification page: http://127.0.0.1:8765/device
    ...

Stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ._profiles import PROFILES
from ._server import AuthorizationServer

__all__ = ["main"]


def _interval(value: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds or 'none'") from None
    if seconds.is_integer():
        seconds = int(seconds)  # sent as 5, not 5.0
    if seconds < 0:
        raise argparse.ArgumentTypeError("expected a value of at least 0")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deviceflow.testing",
        description="Run deviceflow's RFC 8628 test authorization server on loopback.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback address (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument(
        "--interval",
        type=_interval,
        default=5,
        help="polling interval in seconds, or 'none' to omit it (default %(default)s)",
    )
    parser.add_argument(
        "--auto-approve",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="POLLS",
        help="approve every code by itself, after POLLS pending polls (default 0)",
    )
    parser.add_argument(
        "--code-lifetime", type=int, default=600, help="device code lifetime in seconds"
    )
    parser.add_argument(
        "--access-token-lifetime",
        type=int,
        default=3600,
        help="access token lifetime in seconds",
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="rfc", help="provider profile"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    async with AuthorizationServer(
        host=args.host,
        port=args.port,
        interval=args.interval,
        auto_approve_after=args.auto_approve,
        code_lifetime=args.code_lifetime,
        access_token_lifetime=args.access_token_lifetime,
        profile=args.profile,
    ) as server:
        print(server.issuer, flush=True)
        print(f"verification page: {server.verification_uri}", flush=True)
        print("press Ctrl-C to stop", flush=True)
        while True:
            user_code = await server.wait_for_code(timeout=None)
            print(f"code issued: {user_code}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0  # pragma: no cover - _serve only ends by an exception


if __name__ == "__main__":
    sys.exit(main())
