"""``deviceflow demo``: a whole sign-in against the built-in server, shown as login shows it."""

from __future__ import annotations

import argparse

from deviceflow._client import DeviceFlowClient
from deviceflow._provider import Provider
from deviceflow._version import __version__

from ._errors import EXIT_OK
from ._login import show_flow
from ._terminal import Console, LoginView, can_open_browser, describe_token

__all__ = ["demo"]


async def demo(args: argparse.Namespace, console: Console) -> int:
    """Start the built-in server, sign in to it as ``login`` does, then show the token, the
    cached token and a refresh. Results go where login's go: the terminal, else stderr."""
    from deviceflow.testing import AuthorizationServer

    def say(text: str) -> None:
        print(text, file=console.out, flush=True)

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
        async with DeviceFlowClient(
            provider, client_id="deviceflow-demo", scope="openid offline_access"
        ) as client:
            say("2. The device flow, as `deviceflow login` shows it:")
            if args.auto_approve:
                say("   --auto-approve: the demo server approves after the first poll.")
            view = LoginView(console, qr=console.interactive and args.qr, prefix="deviceflow demo")
            browser = args.browser and not args.auto_approve and can_open_browser()
            token = await show_flow(client, "demo", server.issuer, view, browser)
            say(f"3. Granted: {describe_token(token)}")
            again = await client.get_token("demo")
            say(f"   get_token() again returns the cached token: {again is token}")
            refreshed = await client.refresh("demo")
            rotated = refreshed.refresh_token != token.refresh_token
            say(f"4. Refreshed: {describe_token(refreshed)}")
            say(f"   the refresh token was rotated: {rotated}")
            say(f"Done: the demo server saw {len(server.requests)} requests.")
    say("Next: `deviceflow login --issuer URL --client-id ID` signs in to a real provider,")
    say("and `deviceflow token` prints its token for scripts (see docs/cli.md).")
    return EXIT_OK
