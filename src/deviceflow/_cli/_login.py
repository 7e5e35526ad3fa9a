"""``login``: a device flow shown to a person, and the account it stores."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone

import attrs

from deviceflow._client import DeviceFlowClient
from deviceflow._models import FlowState, Token
from deviceflow._provider import fetch_metadata
from deviceflow.exceptions import (
    AccessDeniedError,
    DecryptionError,
    DiscoveryError,
    ProtocolError,
    StoreError,
)
from deviceflow.stores import TokenStore

from ._commands import (
    Target,
    _account_flag,
    _client,
    _expiry,
    _opened,
    _result,
    _transport,
    resolve_target,
)
from ._errors import EXIT_DENIED, EXIT_OK, EXIT_USAGE, CliError
from ._http import WatchedTransport
from ._identity import signed_in_as
from ._settings import Settings
from ._store import (
    AccountIndex,
    read_token,
)
from ._terminal import (
    Console,
    LoginView,
    can_open_browser,
    open_link_in_background,
)

__all__ = ["login", "show_flow"]


async def login(settings: Settings, console: Console) -> int:
    """Run a device flow for the account and store its token."""
    async with _opened(settings, console, create_key=True) as store:
        index = AccountIndex(store)
        target = await resolve_target(settings, await index.entries())
        # Fail on a wrong key now, not after the person has approved the code.
        try:
            current = await read_token(store, target.key)
        except DecryptionError:
            raise
        except StoreError:
            current = None  # a damaged record: nothing worth keeping
        if current is not None and not _confirm_replace(settings, console, target, current.token):
            console.say(f"Kept the sign-in of account {target.account!r}; nothing was changed.")
            return EXIT_OK
        view = LoginView(console, qr=console.interactive and not settings.flag("no-qr"))
        browser = not settings.flag("no-browser") and can_open_browser()
        transport = _transport(target, console, view.note if console.interactive else None)
        try:
            target, granted, scope, who = await _sign_in(target, store, transport, view, browser)
        except DiscoveryError as exc:
            raise _issuer_mismatch(exc, settings) or exc from None
        except AccessDeniedError as exc:
            raise _denied(exc) from None
        await index.add(target.entry(scope))
    _report_login(console, target, granted, who)
    return EXIT_OK


async def _sign_in(
    target: Target,
    store: TokenStore,
    transport: WatchedTransport,
    view: LoginView,
    browser: bool,
) -> tuple[Target, Token, str | None, str | None]:
    """The device flow of ``login``: the target (with its discovered endpoints), the token,
    the scope asked for and who signed in (None when the provider does not say)."""
    scope = target.scope
    try:
        if scope is None and target.preset is None and target.provider.default_scope is None:
            target, scope = await _default_scope(target, transport)
        client = _client(target, store, transport, scope)
    except BaseException:
        await transport.aclose()
        raise
    async with client:
        granted = await show_flow(client, target.account, target.issuer, view, browser)
        return target, granted, client.scope, await signed_in_as(client, target.account)


async def show_flow(
    client: DeviceFlowClient, account: str, issuer: str, view: LoginView, browser: bool
) -> Token:
    """Run ``client``'s device flow for ``account``, shown in ``view``; the token granted."""
    try:
        async for event in client.authorize(account):
            code = event.code
            if code is not None and event.state is FlowState.PENDING and not view.shown:
                view.show_code(code, account=account, issuer=issuer)
                if browser:
                    _open_browser(code.link, view)
            if event.interval is not None:
                view.interval_changed(event.interval)
            if event.error is not None:
                raise event.error
            if event.state is FlowState.GRANTED and event.token is not None:
                return event.token
    finally:
        await view.close()
    raise ProtocolError("the device flow ended without a token")  # pragma: no cover


def _confirm_replace(settings: Settings, console: Console, target: Target, token: Token) -> bool:
    """True when a valid sign-in of the account may be replaced: it is not valid, --yes was
    given, or the person says so. Off a terminal without --yes: a usage error."""
    if settings.flag("yes"):
        return True
    now = datetime.now(timezone.utc)
    if token.refresh_token is None and token.expires_at is not None and token.expires_at <= now:
        return True  # expired with nothing to refresh it: there is nothing to keep
    where = f"account {target.account!r} at {target.issuer}"
    answer = console.ask(
        f"Account {console.style(target.account, 1)} is already signed in at {target.issuer} "
        f"(the access token expires {_expiry(token, now)}). Sign in again and replace it?"
    )
    if answer is None:
        raise CliError(
            f"{where} is already signed in with a valid token",
            code=EXIT_USAGE,
            hint="add --yes to sign in again and replace it, or use another --account",
        )
    return answer


async def _default_scope(target: Target, transport: WatchedTransport) -> tuple[Target, str | None]:
    """No --scope for an issuer: ask for ``openid``, and ``offline_access`` (a refresh token)
    when the server lists it; when the server lists its scopes and not ``openid``, not that.
    The metadata fetched here is handed on to the client, so discovery happens once."""
    metadata = await fetch_metadata(transport, target.provider)
    provider = target.provider.with_metadata(metadata)
    supported = metadata.extra.get("scopes_supported")
    if not isinstance(supported, list):
        scopes = ["openid"]
    else:
        scopes = [name for name in ("openid", "offline_access") if name in supported]
    return attrs.evolve(target, provider=provider), " ".join(scopes) or None


_MISMATCH = re.compile(r"discovery document's issuer '([^']+)' is not the issuer asked for \('")


def _issuer_mismatch(exc: DiscoveryError, settings: Settings) -> CliError | None:
    """A discovery document naming another issuer (often the same one with or without a
    trailing slash): say which issuer to give."""
    found = _MISMATCH.search(str(exc))
    if found is None:
        return None
    named = found.group(1)
    return CliError(
        f"the server names itself {named!r}, not {settings.value('issuer')!r} as "
        f"{settings.origin('issuer')} says, and an issuer must match exactly (OpenID Connect "
        "Discovery 4.3)",
        hint=f"use --issuer {named}",
    )


def _denied(exc: AccessDeniedError) -> CliError:
    """A denial in the server's own words when it gives them."""
    if exc.description:
        return CliError(
            f"the sign-in was refused: {exc.description} ({exc.server_error})",
            code=EXIT_DENIED,
            hint="run `deviceflow login` to try again",
        )
    return CliError(
        f"the sign-in was declined ({exc.server_error})",
        code=EXIT_DENIED,
        hint="the request was declined on the sign-in page; run `deviceflow login` to try again",
    )


def _open_browser(url: str, view: LoginView) -> None:
    opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def done(future: asyncio.Future[bool]) -> None:
        if future.result():
            view.note("A browser was opened on the sign-in page.")

    opened.add_done_callback(done)
    open_link_in_background(url, opened)


def _report_login(console: Console, target: Target, token: Token, who: str | None) -> None:
    """The outcome of login, with who signed in when the provider says (``who``): its last
    line on a terminal; off a terminal, one line on stdout for scripts."""
    expiry = _expiry(token)
    refresh = (
        "a refresh token keeps it fresh"
        if token.refresh_token
        else "no refresh token was issued: sign in again when it expires"
    )
    if console.interactive:
        mark = console.style("✓" if console.unicode else "OK", 1, 32)
        console.say(f"  {mark} Signed in. Account {console.style(target.account, 1)} is stored.")
        console.say(f"    The access token expires {expiry}; {refresh}.")
        console.say(f"    Print it with: deviceflow token{_account_flag(target.account)}")
        if who is not None:
            console.say(f"Signed in as {who}")
    else:
        as_who = f" as {who}" if who is not None else ""
        _result(
            console,
            f"Signed in account {target.account!r} at {target.issuer}{as_who}; "
            f"the access token expires {expiry}; {refresh}.",
        )
