"""``deviceflow token`` without the client, when the stored token is fresh.

A script that runs ``curl -H "Authorization: Bearer $(deviceflow token)"`` in a loop pays the
command's start-up on every call. When the account's token is in the file store and not yet due
for a refresh, printing it needs the settings, the key, two records (the CLI's index and the
token) and the client's own freshness rule, and none of the HTTP client, the event loop or the
lock library. Everything else (a Redis store, a provider preset, a token due for refresh, a
missing key, anything unreadable) goes the full way (``_commands.token``), which also reports
every problem; this path only ever answers with a token the full path would have printed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from deviceflow._cache import TokenCache
from deviceflow._clock import SystemClock
from deviceflow._models import Token
from deviceflow._records import Record, RecordCodec
from deviceflow.exceptions import DeviceFlowError
from deviceflow.stores._peek import peek_record

from ._errors import CliError
from ._settings import Settings
from ._store import INDEX_KEY, REFRESH_SKEW, AccountEntry, AccountIndex, existing_keys, store_folder

__all__ = ["fresh_token", "print_token", "require_bearer", "token_json"]


def fresh_token(settings: Settings) -> tuple[Token, AccountEntry] | None:
    """The account's stored token and its index entry when the token is fresh, else None."""
    if settings.value("provider") is not None:
        return None  # a preset may check its options or need a secret: the full path does
    try:
        folder = store_folder(settings)
        keys = existing_keys(settings)
        if folder is None or keys is None:
            return None
        index = peek_record(folder, keys, INDEX_KEY)
        if index is None:
            return None
        entry = _entry(AccountIndex.decode(index), settings)
        if entry is None:
            return None
        value = peek_record(folder, keys, entry.key)
        if value is None:
            return None
        record = RecordCodec.decode(value)
    except (DeviceFlowError, CliError):
        return None
    if not isinstance(record, Record):
        return None  # signed out
    cache = TokenCache(SystemClock(), REFRESH_SKEW)
    if cache.due(cache.entry(entry.account, record.token, record.obtained)):
        return None  # the full path refreshes it
    return record.token, entry


def _entry(entries: list[AccountEntry], settings: Settings) -> AccountEntry | None:
    """The one index entry the full path would use, when it uses the issuer's plain record."""
    account = settings.value("account") or "default"
    client_id = settings.value("client-id")
    issuer = settings.value("issuer")
    if issuer is not None and client_id is None:
        return None  # the full path takes no client id from the index then, and says so
    matches = [
        e
        for e in entries
        if e.account == account
        and (client_id is None or e.client_id == client_id)
        and (issuer is None or e.issuer == issuer)
    ]
    if len(matches) != 1 or matches[0].provider is not None:
        return None
    return matches[0]


def print_token(
    settings: Settings, current: Token, *, account: str, issuer: str, client_id: str
) -> None:
    """Print ``current`` on stdout as ``token`` does: the access token alone, or ``--json``."""
    if settings.flag("json"):
        # The document names the token_type: a program reading it sees a DPoP token for what
        # it is, so it is printed whatever its type.
        document = token_json(current, account=account, issuer=issuer, client_id=client_id)
        print(json.dumps(document, indent=2), flush=True)
    else:
        require_bearer(current, account=account, use="printed alone")
        print(current.access_token, flush=True)


def require_bearer(current: Token, *, account: str, use: str) -> None:
    """CliError unless ``current`` is a bearer token. A DPoP token (RFC 9449) is bound to a key
    and useless without a proof from it: handed to curl, git or kubectl as a bearer token it
    would fail at best, and handing it out defeats the binding."""
    if current.dpop_key is None and current.token_type.lower() != "dpop":
        return
    raise CliError(
        f"account {account!r} holds a DPoP-bound token, which works only with a proof of its "
        f"key; it is not {use} as a bearer token",
        hint="send requests through the library (DeviceFlowClient.request_headers, "
        "deviceflow.httpx.DeviceFlowAuth, deviceflow.aiohttp.BearerAuth), or read "
        "`deviceflow token --json`, which names the token_type",
    )


def token_json(
    current: Token, *, account: str, issuer: str, client_id: str, now: datetime | None = None
) -> dict[str, Any]:
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
        "account": account,
        "issuer": issuer,
        "client_id": client_id,
    }
