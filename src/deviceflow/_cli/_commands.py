"""The commands: login, token, status, logout, keygen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from deviceflow._client import DeviceFlowClient
from deviceflow._models import FlowState, Token
from deviceflow._provider import Provider
from deviceflow.exceptions import (
    DiscoveryError,
    ProtocolError,
    ReauthorizationRequiredError,
    TransportError,
)
from deviceflow.stores import TokenStore, generate_key

from ._errors import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, CliError
from ._identity import signed_in_as, signed_in_as_each
from ._presets import PRESET_OPTIONS, PRESETS, build_provider, preset_named
from ._settings import Settings
from ._store import (
    AccountEntry,
    AccountIndex,
    open_store,
    read_token,
    record_key,
    signed_in,
    write_key_file,
)
from ._terminal import (
    Console,
    LoginView,
    can_open_browser,
    humanize,
    open_link_in_background,
)

__all__ = ["keygen", "login", "logout", "status", "token"]


# --- which server, client and account -----------------------------------------------------


@attrs.frozen(kw_only=True)
class Target:
    """The provider, client and account a command works on."""

    provider: Provider
    client_id: str
    client_secret: str | None = attrs.field(default=None, repr=False)
    scope: str | None
    account: str
    preset: str | None
    arguments: Mapping[str, str]

    @property
    def key(self) -> str:
        """The store key of the account's token."""
        return record_key(self.provider.identity, self.client_id, self.account)

    @property
    def issuer(self) -> str:
        """How the server is named in messages."""
        return self.provider.identity or self.provider.name

    def entry(self, scope: str | None) -> AccountEntry:
        """The account's entry for the index."""
        return AccountEntry(
            key=self.key,
            issuer=self.provider.identity,
            client_id=self.client_id,
            account=self.account,
            scope=scope,
            provider=self.preset,
            arguments=dict(self.arguments),
        )


async def resolve_target(settings: Settings, known: Sequence[AccountEntry]) -> Target:
    """The target the settings name; without --issuer or --provider, the account's index entry."""
    account = settings.value("account") or "default"
    client_id = settings.value("client-id")
    issuer = settings.value("issuer")
    name = settings.value("provider")
    preset = preset_named(name) if name else None
    for option in PRESET_OPTIONS:
        if settings.on_command_line(option) and (preset is None or option not in preset.options):
            users = [n for n, p in PRESETS.items() if option in p.options]
            raise CliError(
                f"--{option} applies only to --provider {' or '.join(users)}",
                code=EXIT_CONFIG,
            )
    if preset is not None:
        if issuer and "issuer" not in preset.options:
            raise CliError(
                f"both {settings.origin('issuer')} and {settings.origin('provider')} name a "
                f"server; --provider {preset.name} does not take an issuer",
                hint="give one of them",
            )
        arguments = {opt: v for opt in preset.options if (v := settings.value(opt))}
        provider = await build_provider(preset, arguments)
        client_id = client_id or preset.default_client_id
        scope = settings.value("scope")
        return _target(settings, provider, client_id, scope, account, preset.name, arguments)
    if issuer:
        provider = _issuer_provider(issuer, settings.origin("issuer"))
        return _target(settings, provider, client_id, settings.value("scope"), account, None, {})
    entry = _entry_for(known, account, client_id)
    if entry.provider is not None:
        provider = await build_provider(preset_named(entry.provider), entry.arguments)
    else:
        provider = _issuer_provider(entry.issuer, "the stored issuer")
    scope = settings.value("scope") or entry.scope
    return _target(
        settings, provider, entry.client_id, scope, account, entry.provider, entry.arguments
    )


def _issuer_provider(issuer: str, origin: str) -> Provider:
    try:
        return Provider(issuer=issuer)
    except (ValueError, ProtocolError) as exc:
        raise CliError(f"{origin}: {exc}", hint="give the issuer's https URL") from None


def _target(
    settings: Settings,
    provider: Provider,
    client_id: str | None,
    scope: str | None,
    account: str,
    preset: str | None,
    arguments: Mapping[str, str],
) -> Target:
    if not client_id:
        raise CliError(
            "no client id: the provider must know which application asks",
            hint="give --client-id, DEVICEFLOW_CLIENT_ID, or client-id in a profile",
        )
    return Target(
        provider=provider,
        client_id=client_id,
        client_secret=settings.value("client-secret"),
        scope=scope,
        account=account,
        preset=preset,
        arguments=arguments,
    )


def _entry_for(known: Sequence[AccountEntry], account: str, client_id: str | None) -> AccountEntry:
    matches = [
        e for e in known if e.account == account and (client_id is None or e.client_id == client_id)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotSignedInError(
            f"no server given, and no account {account!r} was signed in with this store",
            hint="name the server with --issuer URL or --provider NAME, "
            "DEVICEFLOW_ISSUER, or a profile",
        )
    choices = "; ".join(f"{e.issuer} (client {e.client_id})" for e in matches)
    raise CliError(
        f"account {account!r} is signed in at more than one server: {choices}",
        hint="say which with --issuer or --provider, and --client-id",
    )


class NotSignedInError(CliError):
    """No server was named and the index knows no such account."""


@asynccontextmanager
async def _opened(settings: Settings, console: Console) -> AsyncIterator[TokenStore]:
    store = open_store(settings, console.err)
    try:
        yield store
    finally:
        await store.aclose()


def _client(target: Target, store: TokenStore) -> DeviceFlowClient:
    try:
        return DeviceFlowClient(
            target.provider,
            client_id=target.client_id,
            client_secret=target.client_secret,
            scope=target.scope,
            store=store,
        )
    except ValueError as exc:
        needs_secret = target.provider.requires_client_secret and target.client_secret is None
        hint = "give --client-secret or DEVICEFLOW_CLIENT_SECRET" if needs_secret else None
        raise CliError(str(exc), hint=hint) from None


def _expiry(token: Token, now: datetime | None = None) -> str:
    if token.expires_at is None:
        return "never"
    now = now or datetime.now(timezone.utc)
    seconds = (token.expires_at - now).total_seconds()
    when = f"{token.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    if seconds >= 0:
        return f"{when} (in {humanize(seconds)})"
    return f"{when} (expired {humanize(-seconds)} ago)"


# --- login ---------------------------------------------------------------------------------


async def login(settings: Settings, console: Console) -> int:
    """Run a device flow for the account and store its token."""
    async with _opened(settings, console) as store:
        index = AccountIndex(store)
        target = await resolve_target(settings, await index.entries())
        # Fail on a wrong key now, not after the person has approved the code.
        await store.get(target.key)
        view = LoginView(console, qr=console.interactive and not settings.flag("no-qr"))
        browser = not settings.flag("no-browser") and can_open_browser()
        async with _client(target, store) as client:
            granted: Token | None = None
            try:
                async for event in client.authorize(target.account):
                    code = event.code
                    if code is not None and event.state is FlowState.PENDING and not view.shown:
                        view.show_code(code, account=target.account, issuer=target.issuer)
                        if browser:
                            _open_browser(code.link, view)
                    if event.interval is not None:
                        view.interval_changed(event.interval)
                    if event.error is not None:
                        raise event.error
                    if event.state is FlowState.GRANTED:
                        granted = event.token
            finally:
                await view.close()
            scope = client.scope
            who = await signed_in_as(client, target.account)
        if granted is None:  # pragma: no cover - authorize() ends in GRANTED or an error
            raise ProtocolError("the device flow ended without a token")
        await index.add(target.entry(scope))
    _report_login(console, target, granted)
    if who is not None:
        console.say(f"Signed in as {who}")
    return EXIT_OK


def _open_browser(url: str, view: LoginView) -> None:
    opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def done(future: asyncio.Future[bool]) -> None:
        if future.result():
            view.note("A browser was opened on the sign-in page.")

    opened.add_done_callback(done)
    open_link_in_background(url, opened)


def _report_login(console: Console, target: Target, token: Token) -> None:
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
        hint = "" if target.account == "default" else f" --account {target.account}"
        console.say(f"    Print it with: deviceflow token{hint}")
    else:
        console.say(
            f"deviceflow: signed in account {target.account!r} at {target.issuer}; "
            f"the access token expires {expiry}; {refresh}"
        )


# --- token ---------------------------------------------------------------------------------


async def token(settings: Settings, console: Console) -> int:
    """Print a valid access token (refreshed if needed) and nothing else on stdout."""
    async with _opened(settings, console) as store:
        index = AccountIndex(store)
        known = await index.entries() if _needs_index(settings) else []
        target = await resolve_target(settings, known)
        async with _client(target, store) as client:
            try:
                current = await client.get_token(target.account)
            except ReauthorizationRequiredError:
                raise CliError(
                    f"account {target.account!r} has no usable token at {target.issuer} "
                    "(never signed in, signed out, or the grant ended)",
                    hint="sign in first: run `deviceflow login` with the same options",
                ) from None
    if settings.flag("json"):
        print(json.dumps(token_json(current, target), indent=2), file=console.out, flush=True)
    else:
        print(current.access_token, file=console.out, flush=True)
    return EXIT_OK


def _needs_index(settings: Settings) -> bool:
    return settings.value("issuer") is None and settings.value("provider") is None


def token_json(current: Token, target: Target, now: datetime | None = None) -> dict[str, Any]:
    """What ``token --json`` prints. The refresh token stays in the store: a script that used
    it would break rotation for everyone sharing the store."""
    now = now or datetime.now(timezone.utc)
    expires_in = (
        max(0, int((current.expires_at - now).total_seconds())) if current.expires_at else None
    )
    return {
        "access_token": current.access_token,
        "token_type": current.token_type,
        "expires_at": current.expires_at.isoformat() if current.expires_at else None,
        "expires_in": expires_in,
        "scope": current.scope,
        "id_token": current.id_token,
        "has_refresh_token": current.refresh_token is not None,
        "account": target.account,
        "issuer": target.provider.identity,
        "client_id": target.client_id,
    }


# --- status --------------------------------------------------------------------------------


async def status(settings: Settings, console: Console) -> int:
    """List the accounts signed in to the store: issuer, scope, expiry, refresh token."""
    rows: list[dict[str, Any]] = []
    async with _opened(settings, console) as store:
        entries = await AccountIndex(store).entries()
        identities = await signed_in_as_each(entries, store, settings.value("client-secret"))
        for entry in entries:
            stored = await read_token(store, entry.key)
            current = stored.token if stored else None
            rows.append(
                {
                    "account": entry.account,
                    "issuer": entry.issuer,
                    "client_id": entry.client_id,
                    "provider": entry.provider,
                    "scope": current.scope if current and current.scope else entry.scope,
                    "signed_in": current is not None,
                    "expires_at": (
                        current.expires_at.isoformat() if current and current.expires_at else None
                    ),
                    "has_refresh_token": bool(current and current.refresh_token),
                    "identity": identities[entry.key] if current else None,
                    "_expiry": _expiry(current) if current else "signed out",
                }
            )
    if settings.flag("json"):
        public = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        print(json.dumps(public, indent=2), file=console.out, flush=True)
        return EXIT_OK
    if not rows:
        print("No account is signed in with this store.", file=console.out, flush=True)
        return EXIT_OK
    table = [
        ["ACCOUNT", "ISSUER", "CLIENT ID", "SCOPE", "EXPIRES", "REFRESH TOKEN", "SIGNED IN AS"]
    ]
    for row in rows:
        refresh = "yes" if row["has_refresh_token"] else "no"
        table.append(
            [
                row["account"],
                row["issuer"],
                row["client_id"],
                row["scope"] or "-",
                row["_expiry"],
                refresh if row["signed_in"] else "-",
                row["identity"] or "-",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for number, line in enumerate(table):
        text = "  ".join(
            cell.ljust(width) for cell, width in zip(line, widths, strict=True)
        ).rstrip()
        print(console.style(text, 1) if number == 0 else text, file=console.out)
    console.out.flush()
    return EXIT_OK


# --- logout --------------------------------------------------------------------------------


async def logout(settings: Settings, console: Console) -> int:
    """Revoke the account's grant where the provider supports it, and delete the token."""
    async with _opened(settings, console) as store:
        index = AccountIndex(store)
        try:
            target = await resolve_target(settings, await index.entries())
        except NotSignedInError:
            account = settings.value("account") or "default"
            console.say(f"Account {account!r} is not signed in with this store.")
            return EXIT_OK
        current = await store.get(target.key)  # DecryptionError here: nothing is deleted
        revoked = False
        if signed_in(current.value if current is not None else None):
            async with _client(target, store) as client:
                try:
                    revoked = await client.logout(target.account)
                except (TransportError, DiscoveryError, ProtocolError) as exc:
                    console.say(f"deviceflow: warning: could not revoke the grant: {exc}")
                    await store.delete(target.key)
        await index.remove(target.key)
    if not signed_in(current.value if current is not None else None):
        console.say(f"Account {target.account!r} at {target.issuer} was not signed in.")
    elif revoked:
        console.say(
            f"Signed out account {target.account!r}: the server revoked the grant "
            "and the stored token was deleted."
        )
    else:
        console.say(
            f"Signed out account {target.account!r}: the stored token was deleted. The server "
            "did not revoke the grant (no revocation endpoint, or it refused), so it may stay "
            "valid until it expires."
        )
    return EXIT_OK


# --- keygen --------------------------------------------------------------------------------


def keygen(output: str | None, console: Console) -> int:
    """Print a new store key, or write it to a new file (mode 0600)."""
    key = generate_key()
    if output is None:
        print(key, file=console.out, flush=True)
        return EXIT_OK
    path = Path(output).expanduser()
    try:
        created = write_key_file(path, key)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc}", code=EXIT_ERROR) from None
    if not created:
        raise CliError(
            f"{path} already exists; it was not overwritten",
            code=EXIT_ERROR,
            hint="choose another path; a store key that is lost cannot be recovered",
        )
    print(
        f"deviceflow: wrote a new store key to {path} (mode 0600). Use it with "
        f"--key-file {path} or DEVICEFLOW_KEY_FILE={path}.",
        file=console.err,
        flush=True,
    )
    return EXIT_OK
