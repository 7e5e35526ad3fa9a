"""The CLI's token store: which store, which key, and the index of signed-in accounts.

The TokenStore protocol has no listing (a Redis or file store holding 100,000 tenants should not
be enumerated), so ``login`` records each account it signs in in one small record of the store,
``deviceflow-cli-index``, and ``logout`` takes it out again; both update it with
compare-and-set, so two CLIs running at once lose no entry. The index holds names only (issuer,
client id, account, provider preset and its arguments), never a secret; ``status`` reads each
account's token record beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from deviceflow._crypto import KeySet, generate_key
from deviceflow._models import Token
from deviceflow._records import RecordCodec, Tombstone, record_key
from deviceflow.exceptions import ConflictError, StoreError

from ._errors import EXIT_STORE, CliError
from ._settings import Settings, default_config_dir, default_data_dir

if TYPE_CHECKING:
    from deviceflow.stores import TokenStore

__all__ = [
    "INDEX_KEY",
    "REFRESH_SKEW",
    "AccountEntry",
    "AccountIndex",
    "StoredToken",
    "default_key_file",
    "existing_keys",
    "open_store",
    "read_token",
    "record_key",
    "signed_in",
    "store_folder",
    "store_name",
    "write_key_file",
]

#: The store key of the CLI's account index (token keys always contain "/", this one does not).
INDEX_KEY = "deviceflow-cli-index"
_INDEX_VERSION = 1
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: Seconds before expiry a token is refreshed (the client's default; the fast path of ``token``
#: applies the same rule to decide that a stored token is still fresh).
REFRESH_SKEW = 60.0


# --- the key ---------------------------------------------------------------------------------


def write_key_file(path: Path, key: str) -> bool:
    """Create ``path`` (mode 0600, folder 0700) holding ``key``; False if it already exists.

    The key is written to a temporary file first and linked into place, so a process that reads
    the file never sees it half written, and two processes creating it at once agree on one key.
    """
    from deviceflow.stores._file import _private_dirs

    _private_dirs(path.parent)  # missing folders 0700 whatever the umask
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# deviceflow store key, created {stamp}.\n"
        "# Keep it secret and keep a copy: without it the stored tokens cannot be read.\n"
        f"{key}\n"
    )
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with open(fd, "wb") as handle:
            handle.write(text.encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def default_key_file() -> Path:
    """Where the CLI keeps the store key it creates: ``store.key`` in the user config folder."""
    return default_config_dir() / "store.key"


def store_folder(settings: Settings) -> Path | None:
    """The file store's folder, or None for a Redis store."""
    location = settings.value("store")
    if location and location.startswith(_REDIS_SCHEMES):
        return None
    return Path(location).expanduser() if location else default_data_dir() / "tokens"


def store_name(settings: Settings) -> str:
    """The store, for messages: its folder, or its Redis URL without a password."""
    folder = store_folder(settings)
    if folder is not None:
        return str(folder)
    parts = urllib.parse.urlsplit(str(settings.value("store")))
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"the Redis store {parts.scheme}://{host}{port}{parts.path}"


def existing_keys(settings: Settings) -> KeySet | None:
    """The store key: ``--key-file`` on the command line, else ``DEVICEFLOW_KEY``, else the key
    file of the environment or profile, else the default key file; None when that one does not
    exist yet. A key that cannot be read or decoded is a CliError saying how to make one."""
    given = settings.value("key-file")
    try:
        if given and settings.on_command_line("key-file"):
            return KeySet.from_file(given)
        if settings.env.get("DEVICEFLOW_KEY", "").strip():
            return KeySet.from_env("DEVICEFLOW_KEY")
        if given:
            return KeySet.from_file(given)
        path = default_key_file()
        return KeySet.from_file(path) if path.exists() else None
    except StoreError as exc:
        raise _key_error(exc) from None


def _key_error(exc: StoreError) -> CliError:
    text = str(exc)
    if "chmod" in text:  # the message says what to run
        return CliError(text, code=EXIT_STORE)
    if text.startswith("cannot read key file"):
        return CliError(text, code=EXIT_STORE, hint="check the key file's path")
    return CliError(
        f"the store key is not usable: {text}",
        code=EXIT_STORE,
        hint="make a key with `deviceflow keygen` (or `deviceflow keygen -o FILE` for a key "
        "file) and set DEVICEFLOW_KEY or --key-file to it",
    )


def _holds_records(folder: Path | None) -> bool:
    """True when the file store's folder holds anything the store wrote."""
    if folder is None:
        # A Redis store cannot be listed cheaply; a lost key shows there as a wrong key.
        return False
    try:
        return any(folder.iterdir())
    except OSError:
        return False


def _store_keys(settings: Settings, notes: TextIO, *, create: bool) -> KeySet:
    """The store key (see :func:`existing_keys`). Without one, ``create`` makes the default key
    file, unless the store already holds records (they were written with a key that is lost:
    a new key would only hide them); read-only commands never create a key."""
    keys = existing_keys(settings)
    if keys is not None:
        return keys
    path = default_key_file()
    if _holds_records(store_folder(settings)):
        raise CliError(
            f"the store key file {path} is missing, but the token store at {store_name(settings)} "
            "holds tokens written with a key",
            code=EXIT_STORE,
            hint=f"restore the key file to {path} (or set DEVICEFLOW_KEY or --key-file to the "
            "key), or start over with `deviceflow reset`, which deletes the stored tokens",
        )
    if not create:
        raise NoKeyError(f"no account is signed in with the token store at {store_name(settings)}")
    try:
        created = write_key_file(path, generate_key())
    except OSError as exc:
        raise StoreError(f"cannot create the store key file {path}: {exc}") from None
    if created:
        print(
            f"deviceflow: created a new store key in {path} (mode 0600). Keep it safe: "
            "the stored tokens cannot be read without it. Set DEVICEFLOW_KEY to use "
            "another key.",
            file=notes,
            flush=True,
        )
    return KeySet.from_file(path)


class NoKeyError(CliError):
    """There is no store key yet: nothing was ever signed in with this store."""


def open_store(settings: Settings, notes: TextIO, *, create_key: bool = False) -> TokenStore:
    """The store ``--store`` names (a folder or a Redis URL), with its key.

    Only ``create_key`` (``login``) makes a new key file; notes for the person (a key file was
    created) go to ``notes``. NoKeyError when there is no key and none may be made.
    """
    location = settings.value("store")
    keys = _store_keys(settings, notes, create=create_key)
    folder = store_folder(settings)
    if folder is None:
        from deviceflow import stores

        try:
            redis_store = stores.RedisStore
        except ModuleNotFoundError:
            raise CliError(
                f"{settings.origin('store')} is a Redis URL, but the redis package is missing",
                hint=(
                    "install it: pip install 'redis>=5.0.1' "
                    "(or, in a checkout of deviceflow, pip install '.[redis]')"
                ),
            ) from None
        try:
            return redis_store(str(location), key=keys)
        except ValueError as exc:
            raise CliError(f"{settings.origin('store')}: {exc}") from None
    from deviceflow.stores import EncryptedFileStore

    try:
        return EncryptedFileStore(folder, key=keys)
    except ValueError as exc:
        raise CliError(f"{settings.origin('store')}: {exc}") from None


# --- the index -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AccountEntry:
    """One signed-in account, as the index remembers it (names only, no secret)."""

    key: str
    issuer: str
    client_id: str
    account: str
    scope: str | None = None
    provider: str | None = None  # a preset name, or None for --issuer
    arguments: Mapping[str, str] = attrs.field(factory=dict)  # the preset's options

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        return {
            "key": self.key,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "account": self.account,
            "scope": self.scope,
            "provider": self.provider,
            "arguments": dict(self.arguments),
        }

    @classmethod
    def from_dict(cls, data: Any) -> AccountEntry:
        """The inverse of :meth:`to_dict`; StoreError when it is damaged."""
        try:
            entry = cls(
                key=_text(data["key"]),
                issuer=_text(data["issuer"]),
                client_id=_text(data["client_id"]),
                account=_text(data["account"]),
                scope=_optional_text(data.get("scope")),
                provider=_optional_text(data.get("provider")),
                arguments={_text(k): _text(v) for k, v in (data.get("arguments") or {}).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError):
            raise StoreError("the CLI's account index is damaged") from None
        return entry


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


class AccountIndex:
    """The accounts the CLI has signed in to a store (see the module docstring)."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    async def entries(self) -> list[AccountEntry]:
        """Every entry, in the order they were added."""
        current = await self._store.get(INDEX_KEY)
        return self.decode(current.value) if current else []

    async def add(self, entry: AccountEntry) -> None:
        """Add ``entry``, replacing the one with the same key."""
        await self._update(lambda old: [e for e in old if e.key != entry.key] + [entry])

    async def remove(self, key: str) -> None:
        """Remove the entry with ``key``, if there is one."""
        await self._update(lambda old: [e for e in old if e.key != key])

    async def _update(
        self, change: Callable[[list[AccountEntry]], list[AccountEntry]], attempts: int = 20
    ) -> None:
        for _ in range(attempts):
            current = await self._store.get(INDEX_KEY)
            old = self.decode(current.value) if current else []
            new = change(old)
            if new == old:
                return
            try:
                await self._store.put(
                    INDEX_KEY,
                    self._encode(new),
                    expected_version=current.version if current else None,
                )
            except ConflictError:
                continue  # another CLI changed it: apply the change to theirs
            return
        raise StoreError("the CLI's account index kept changing during the update; try again")

    @staticmethod
    def _encode(entries: Sequence[AccountEntry]) -> bytes:
        document = {"v": _INDEX_VERSION, "accounts": [e.to_dict() for e in entries]}
        return json.dumps(document, separators=(",", ":")).encode()

    @staticmethod
    def decode(value: bytes) -> list[AccountEntry]:
        """The entries of the index record ``value``; StoreError when it is damaged."""
        try:
            document = json.loads(value)
        except (ValueError, RecursionError):
            raise StoreError("the CLI's account index is not valid JSON") from None
        if not isinstance(document, dict) or document.get("v") != _INDEX_VERSION:
            raise StoreError("the CLI's account index has an unknown format")
        accounts = document.get("accounts")
        if not isinstance(accounts, list):
            raise StoreError("the CLI's account index is damaged")
        return [AccountEntry.from_dict(item) for item in accounts]


# --- token records ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StoredToken:
    """An account's stored token and when it was obtained (for ``status``)."""

    token: Token
    obtained_at: datetime | None


async def read_token(store: TokenStore, key: str) -> StoredToken | None:
    """The token record under ``key``, or None when there is none (or the account signed out)."""
    current = await store.get(key)
    if current is None:
        return None
    try:
        content = RecordCodec.decode(current.value)
    except StoreError:
        raise StoreError(f"the token record of {key!r} is damaged") from None
    if isinstance(content, Tombstone):
        return None
    return StoredToken(token=content.token, obtained_at=content.obtained)


def signed_in(value: bytes | None) -> bool:
    """True unless ``value`` (a stored record) is missing or a signed-out account's tombstone;
    a damaged record counts as signed in (logout can still discard it)."""
    if value is None:
        return False
    try:
        return not isinstance(RecordCodec.decode(value), Tombstone)
    except StoreError:
        return True
