"""The commands: token, status, logout, keygen, reset (login is in ``_login``), and what
they share: which server, client and account a command means."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from deviceflow._client import DeviceFlowClient
from deviceflow._models import Token
from deviceflow._provider import Provider
from deviceflow._transport import AiohttpTransport, ClientAuth
from deviceflow.exceptions import (
    DecryptionError,
    DiscoveryError,
    ProtocolError,
    ReauthorizationRequiredError,
    TransportError,
)
from deviceflow.stores import TokenStore, generate_key

from ._errors import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_STORE, EXIT_USAGE, CliError
from ._fast import print_token
from ._http import WatchedTransport
from ._identity import signed_in_as_each
from ._presets import PRESET_OPTIONS, PRESETS, build_provider, preset_named
from ._settings import Settings
from ._store import (
    REFRESH_SKEW,
    AccountEntry,
    AccountIndex,
    NoKeyError,
    default_key_file,
    open_store,
    read_token,
    record_key,
    signed_in,
    store_folder,
    store_name,
    write_key_file,
)
from ._terminal import (
    Console,
    humanize,
)

__all__ = ["keygen", "logout", "reset", "status", "token"]


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
            hint="sign in first: `deviceflow login --issuer URL --client-id ID"
            f"{_account_flag(account)}` (or --provider NAME, DEVICEFLOW_ISSUER, or a profile)",
        )
    choices = "; ".join(f"{e.issuer} (client {e.client_id})" for e in matches)
    raise CliError(
        f"account {account!r} is signed in at more than one server: {choices}",
        hint="say which with --issuer or --provider, and --client-id",
    )


class NotSignedInError(CliError):
    """No server was named and the index knows no such account."""


def _account_flag(account: str) -> str:
    return "" if account == "default" else f" --account {account}"


@asynccontextmanager
async def _opened(
    settings: Settings, console: Console, *, create_key: bool = False
) -> AsyncIterator[TokenStore]:
    store = open_store(settings, console.err, create_key=create_key)
    try:
        yield store
    except DecryptionError as exc:
        raise CliError(
            f"cannot read the token store at {store_name(settings)}: wrong key (the store was "
            "written with another one)",
            code=EXIT_STORE,
            hint="set DEVICEFLOW_KEY or --key-file to that key, or start over with "
            "`deviceflow reset`, which deletes the stored tokens. Nothing was changed or deleted",
        ) from exc
    finally:
        await store.aclose()


def _transport(
    target: Target, console: Console, notes: Callable[[str], None] | None = None
) -> WatchedTransport:
    """The client's transport, watched: --debug lines and notes while retrying (``notes``
    takes them, else stderr)."""

    def retrying(text: str) -> None:
        if notes is not None:
            notes(text)
        else:
            print(f"deviceflow: {text}", file=console.err, flush=True)

    provider = target.provider
    auth_method = provider.client_auth if target.client_secret is not None else None
    inner = AiohttpTransport(
        auth=ClientAuth.choose(target.client_id, target.client_secret, auth_method),
        dialect=provider.dialect,
    )
    return WatchedTransport(inner, on_retry=retrying)


def _client(
    target: Target, store: TokenStore, transport: WatchedTransport, scope: str | None = None
) -> DeviceFlowClient:
    try:
        return DeviceFlowClient(
            target.provider,
            client_id=target.client_id,
            client_secret=target.client_secret,
            scope=scope if scope is not None else target.scope,
            store=store,
            transport=transport,
            refresh_skew=REFRESH_SKEW,
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


# --- token ---------------------------------------------------------------------------------


async def token(settings: Settings, console: Console) -> int:
    """Print a valid access token (refreshed if needed) and nothing else on stdout."""
    account = settings.value("account") or "default"
    try:
        async with _opened(settings, console) as store:
            index = AccountIndex(store)
            known = await index.entries() if _needs_index(settings) else []
            target = await resolve_target(settings, known)
            async with _client(target, store, _transport(target, console)) as client:
                try:
                    current = await client.get_token(target.account)
                except ReauthorizationRequiredError:
                    raise CliError(
                        f"account {target.account!r} has no usable token at {target.issuer} "
                        "(never signed in, signed out, or the grant ended)",
                        hint=f"sign in first: `{_login_command(target)}`",
                    ) from None
    except NoKeyError as exc:
        raise NotSignedInError(
            f"account {account!r} is not signed in: {exc}",
            hint="sign in first: `deviceflow login --issuer URL --client-id ID"
            f"{_account_flag(account)}`",
        ) from None
    print_token(
        settings,
        current,
        account=target.account,
        issuer=target.provider.identity,
        client_id=target.client_id,
    )
    return EXIT_OK


def _login_command(target: Target) -> str:
    """The ``deviceflow login`` command line that signs ``target`` in."""
    if target.preset is None:
        server = f"--issuer {target.provider.identity}"
    else:
        options = "".join(f" --{name} {value}" for name, value in target.arguments.items())
        server = f"--provider {target.preset}{options}"
    return f"deviceflow login {server} --client-id {target.client_id}" + _account_flag(
        target.account
    )


def _needs_index(settings: Settings) -> bool:
    return settings.value("issuer") is None and settings.value("provider") is None


# --- status --------------------------------------------------------------------------------


async def status(settings: Settings, console: Console) -> int:
    """List the accounts signed in to the store: issuer, scope, expiry, refresh token."""
    rows: list[dict[str, Any]] = []
    try:
        async with _opened(settings, console) as store:
            entries = await AccountIndex(store).entries()
            identities = await signed_in_as_each(entries, store, settings.value("client-secret"))
            for entry in entries:
                stored = await read_token(store, entry.key)
                current = stored.token if stored else None
                who = identities[entry.key] if current else None
                rows.append(_status_row(entry, current, who))
    except NoKeyError:
        pass  # no key: nothing was ever signed in with this store
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


def _status_row(entry: AccountEntry, current: Token | None, who: str | None) -> dict[str, Any]:
    return {
        "account": entry.account,
        "issuer": entry.issuer,
        "client_id": entry.client_id,
        "provider": entry.provider,
        "scope": current.scope if current and current.scope else entry.scope,
        "signed_in": current is not None,
        "expires_at": (current.expires_at.isoformat() if current and current.expires_at else None),
        "has_refresh_token": bool(current and current.refresh_token),
        "identity": who,
        "_expiry": _expiry(current) if current else "signed out",
    }


# --- logout --------------------------------------------------------------------------------


async def logout(settings: Settings, console: Console) -> int:
    """Revoke the account's grant where the provider supports it, and delete the token."""
    account = settings.value("account") or "default"
    try:
        async with _opened(settings, console) as store:
            index = AccountIndex(store)
            try:
                target = await resolve_target(settings, await index.entries())
            except NotSignedInError:
                _result(console, f"Account {account!r} is not signed in with this store.")
                return EXIT_OK
            current = await store.get(target.key)  # DecryptionError here: nothing is deleted
            revoked = False
            if signed_in(current.value if current is not None else None):
                async with _client(target, store, _transport(target, console)) as client:
                    try:
                        revoked = await client.logout(target.account)
                    except (TransportError, DiscoveryError, ProtocolError) as exc:
                        print(
                            f"deviceflow: warning: could not revoke the grant: {exc}",
                            file=console.err,
                            flush=True,
                        )
                        await store.delete(target.key)
            await index.remove(target.key)
    except NoKeyError:
        _result(console, f"Account {account!r} is not signed in with this store.")
        return EXIT_OK
    if not signed_in(current.value if current is not None else None):
        _result(console, f"Account {target.account!r} at {target.issuer} was not signed in.")
    elif revoked:
        _result(
            console,
            f"Signed out account {target.account!r}: the server revoked the grant "
            "and the stored token was deleted.",
        )
    else:
        _result(
            console,
            f"Signed out account {target.account!r}: the stored token was deleted. The server "
            "did not revoke the grant (no revocation endpoint, or it refused), so it may stay "
            "valid until it expires.",
        )
    return EXIT_OK


def _result(console: Console, text: str) -> None:
    """A command's result: on stdout, like status's table."""
    print(text, file=console.out, flush=True)


# --- reset ---------------------------------------------------------------------------------

#: What an EncryptedFileStore's folder holds: shard folders named by two hex digits, and the
#: key-derivation files of a passphrase key. reset deletes nothing else.
_SHARD = re.compile(r"[0-9a-f]{2}")
_STORE_FILES = frozenset({"kdf.json", "kdf.lock", "kdf.json.tmp"})


async def reset(settings: Settings, console: Console) -> int:
    """Delete every stored token of the file store, and the key file the CLI created."""
    folder = store_folder(settings)
    if folder is None:
        raise CliError(
            "reset deletes a file store; this store is in Redis",
            hint="delete the store's keys with redis-cli, or use a new --store",
        )
    key_file = default_key_file()
    own_key = (
        not settings.value("key-file")
        and not settings.env.get("DEVICEFLOW_KEY", "").strip()
        and key_file.exists()
    )
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    stray = [p.name for p in entries if not (_SHARD.fullmatch(p.name) or p.name in _STORE_FILES)]
    if stray:
        raise CliError(
            f"{folder} holds files a token store does not make ({', '.join(stray[:3])}); "
            "nothing was deleted",
            code=EXIT_STORE,
            hint="check --store (DEVICEFLOW_STORE)",
        )
    if not entries and not own_key:
        _result(console, f"Nothing to reset: the token store at {folder} is empty.")
        return EXIT_OK
    what = f"every stored token in {folder}" + (f" and the store key {key_file}" if own_key else "")
    if not settings.flag("yes"):
        answer = console.ask(f"Delete {what}? The grants are not revoked.")
        if answer is None:
            raise CliError(
                f"reset would delete {what}",
                code=EXIT_USAGE,
                hint="add --yes to delete them",
            )
        if not answer:
            _result(console, "Nothing was deleted.")
            return EXIT_OK
    for path in entries:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if own_key:
        key_file.unlink()
    _result(console, f"Deleted {what}. Sign in again with `deviceflow login`.")
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
    _result(
        console,
        f"Wrote a new store key to {path} (mode 0600). Use it with "
        f"--key-file {path} or DEVICEFLOW_KEY_FILE={path}.",
    )
    return EXIT_OK
