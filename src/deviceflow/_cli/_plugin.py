"""The token a credential plugin hands over (kubectl's exec plugin, git's credential helper).

Cached, refreshed, or, when a person is there to approve it, from a device flow whose code goes
to stderr (stdout belongs to the program that runs the plugin). Without a person, a missing
token is an error that says how to sign in.
"""

from __future__ import annotations

from deviceflow._models import DeviceCode, Token
from deviceflow.exceptions import ReauthorizationRequiredError

from ._commands import _client, _needs_index, _opened, _transport, resolve_target
from ._errors import EXIT_CONFIG, CliError
from ._settings import Settings
from ._store import AccountIndex
from ._terminal import Console, LoginView

__all__ = ["plugin_token"]


async def plugin_token(
    settings: Settings, console: Console, *, interactive: bool, why_not: str
) -> Token:
    """``settings``' account's token; a device flow shown on stderr only when ``interactive``
    (``why_not`` says, in the error, why there is no person to ask)."""
    login = "deviceflow login"
    if settings.profile is not None:
        login += f" --profile {settings.profile.name}"
    async with _opened(settings, console) as store:
        index = AccountIndex(store)
        known = await index.entries() if _needs_index(settings) else []
        target = await resolve_target(settings, known)
        async with _client(target, store, _transport(target, console)) as client:
            view = LoginView(Console(console.err, console.err), qr=False)

            def show(code: DeviceCode, account: str) -> None:
                view.show_code(code, account=account, issuer=target.issuer)

            if interactive:
                client.on_code = show
            try:
                token = await client.get_token(target.account)
            except ReauthorizationRequiredError:
                raise CliError(
                    f"account {target.account!r} has no usable token at {target.issuer} "
                    f"(never signed in, signed out, or the grant ended), and {why_not}",
                    code=EXIT_CONFIG,
                    hint=f"sign in first: run `{login}` with the same server and account",
                ) from None
            finally:
                await view.close()
            if view.shown:  # signed in here: `status` and `token` know the account from now on
                await index.add(target.entry(client.scope))
    return token
