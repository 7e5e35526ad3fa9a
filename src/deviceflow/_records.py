"""Store records: the one codec for what DeviceFlowClient keeps in a TokenStore.

A record is compact JSON under a key namespaced by issuer, client id and account::

    {"v": 1, "issuer": ..., "client_id": ..., "account": ..., "obtained_at": <unix seconds>,
     "seq": <lineage>, "token": {...Token.to_dict()...}, "dpop": {"alg": ..., "jwk": {...}}}

``dpop`` is there for a DPoP token only (RFC 9449): the private key its grant is bound to, in
the same record (and so in the same envelope of the persistent stores) as the tokens, so every
process sharing the store signs with one key. Records without it are Bearer records.

``seq`` orders the tokens of one account: every refresh writes its base's ``seq`` plus one, a new
grant the stored record's plus one, and a token written back after a store lost it keeps its
own. Store versions cannot order them: they start again at 1 when a store loses its data.

A logout leaves a tombstone instead of deleting the record, so that "signed out" and "gone"
(a Redis restarted empty, a record deleted by hand) differ, and the record's version keeps
growing instead of starting again at 1::

    {"v": 1, "issuer": ..., "client_id": ..., "account": ..., "logged_out_at": <unix seconds>,
     "reason": "logout" | "refused" | "expired", "seq": <lineage>}

("refused": the server refused the refresh token; "expired": the token expired with nothing to
refresh it with.)

The client and the CLI both read and write records through this module only. It does no I/O.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import urllib.parse
from datetime import datetime, timezone
from typing import Any

import attrs

from ._dpop import DPoPKey
from ._models import Token, json_str
from ._parse import MAX_TOKEN_LIFETIME, parse_seconds
from .exceptions import ProtocolError, StoreError
from .stores._protocol import Versioned

__all__ = [
    "TOMBSTONE_TTL",
    "Held",
    "Record",
    "RecordCodec",
    "RenderedRecord",
    "Stored",
    "Tombstone",
    "Written",
    "record_key",
    "stamp",
]

RECORD_FORMAT = 1
#: How long a logout's tombstone stays (then the account reads as never signed in).
TOMBSTONE_TTL = 90 * 24 * 3600.0

_PLAIN = re.compile(r"[A-Za-z0-9_.~-]+")  # what quote() leaves as it is


def _quote(part: str) -> str:
    return part if _PLAIN.fullmatch(part) else urllib.parse.quote(part, safe="")


def record_key(identity: str, client_id: str, account: str) -> str:
    """The store key of ``account``'s record: issuer, client id and account, each quoted."""
    return f"{_quote(identity)}/{_quote(client_id)}/{_quote(account)}"


@attrs.frozen(kw_only=True)
class Record:
    """A decoded token record: the token, when it was obtained (None if unknown) and its place
    in the account's lineage (``seq``, see the module docstring)."""

    token: Token
    obtained: datetime | None
    seq: int = 0

    def newer_than(self, other: Record) -> bool:
        """True when this token comes after ``other``'s: a higher ``seq``, or the same one and
        obtained later (unknown times count as old)."""
        if self.seq != other.seq:
            return self.seq > other.seq
        if self.obtained is None:
            return False
        return other.obtained is None or self.obtained > other.obtained


@attrs.frozen(kw_only=True)
class Tombstone:
    """A decoded tombstone: the account's grant ended at ``at`` (signed out, refused, expired)."""

    at: datetime | None
    reason: str = "logout"
    seq: int = 0


def stamp(record: Versioned) -> int:
    """Tells store records apart: their version and a hash of their bytes (versions alone can
    repeat, e.g. after a store lost its data). bytes() is free for bytes and copies a store's
    bytearray."""
    return hash((record.version, bytes(record.value)))


#: Stamps of the records a client puts in a MemoryStore (:class:`RenderedRecord`): one per
#: write, never repeated in the process, so that no record need be rendered to be told apart.
#: A clash with a stamp made from bytes would need a 64-bit hash to land on one of them.
_rendered_stamps = itertools.count(2**62)


@attrs.frozen
class Written:
    """A record's write: the version the store gave it and its :func:`stamp`."""

    version: int
    stamp: int


def _when(value: Any) -> datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        with contextlib.suppress(OverflowError, OSError, ValueError):  # out of datetime's range
            return datetime.fromtimestamp(value, timezone.utc)
    return None


def _seq(value: Any) -> int:
    """A record's ``seq``; 0 for records written before it existed, or a damaged one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
        return value
    return 0


def _dpop_field(token: Token) -> str:
    key = token.dpop_key
    return "" if key is None else f',"dpop":{key.record()}'


class RenderedRecord:
    """A record kept as what renders it: the codec, the account and the record
    (MemoryStore.put_rendered). Renders the same bytes every time.

    ``stamp`` is the :func:`stamp` of the stored record, set once the store has taken it: a
    reader that finds this object in the store has the record and its stamp without rendering
    and hashing its bytes again.
    """

    __slots__ = ("_account", "_codec", "record", "stamp")

    def __init__(self, codec: RecordCodec, account: str, record: Record) -> None:
        self._codec, self._account, self.record = codec, account, record
        self.stamp: int | None = None

    def stamped(self) -> int:
        """Give this record its stamp (once the store has taken it), and return it."""
        self.stamp = next(_rendered_stamps)
        return self.stamp

    def __call__(self) -> bytes:
        return self._codec.encode(self._account, self.record)


class RecordCodec:
    """Encodes and decodes the records of one issuer and client id."""

    __slots__ = ("_head", "_prefix")

    def __init__(self, identity: str, client_id: str) -> None:
        self._prefix = f"{_quote(identity)}/{_quote(client_id)}/"
        self._head = (
            f'{{"v":{RECORD_FORMAT},"issuer":{json_str(identity)},'
            f'"client_id":{json_str(client_id)},'
        )

    @property
    def registration_key(self) -> str:
        """The store key of the client's registration (providers that register clients)."""
        return self._prefix[:-1] + "//registration"

    def key(self, account: str) -> str:
        """The store key of ``account``'s record (see :func:`record_key`)."""
        return self._prefix + _quote(account)

    def encode(self, account: str, record: Record) -> bytes:
        """``record`` as stored: compact JSON, written field by field (byte for byte what
        json.dumps with compact separators writes). Its ``obtained`` must be known."""
        assert record.obtained is not None
        return (
            f'{self._head}"account":{json_str(account)},'
            f'"obtained_at":{record.obtained.timestamp()!r},"seq":{record.seq},'
            f'"token":{record.token.json_text()}{_dpop_field(record.token)}}}'
        ).encode()

    def encode_tombstone(
        self, account: str, at: datetime, reason: str = "logout", seq: int = 0
    ) -> bytes:
        """The record left where a grant ended: a logout, a refused or an expired grant."""
        return (
            f'{self._head}"account":{json_str(account)},"logged_out_at":{at.timestamp()!r},'
            f'"reason":{json_str(reason)},"seq":{seq}}}'
        ).encode()

    @staticmethod
    def decode(value: bytes) -> Record | Tombstone:
        """The record or tombstone in ``value``; StoreError when it is damaged."""
        try:
            document = json.loads(value)
        except (ValueError, RecursionError):
            raise StoreError("a stored token record is not valid JSON") from None
        if not isinstance(document, dict):
            raise StoreError("a stored token record has an unknown format")
        token = document.get("token")
        if token is None and "logged_out_at" in document:
            reason = document.get("reason")
            return Tombstone(
                at=_when(document["logged_out_at"]),
                reason=reason if isinstance(reason, str) else "logout",
                seq=_seq(document.get("seq")),
            )
        if not isinstance(token, dict):
            raise StoreError("a stored token record has an unknown format")
        try:
            decoded = Token.from_dict(token)
            if (dpop := document.get("dpop")) is not None:
                decoded = attrs.evolve(decoded, dpop_key=DPoPKey.from_record(dpop))
        except ProtocolError as exc:
            raise StoreError(str(exc)) from None
        return Record(
            token=decoded,
            obtained=_when(document.get("obtained_at")),
            seq=_seq(document.get("seq")),
        )

    @staticmethod
    def ttl(token: Token, now: datetime) -> float | None:
        """How long the store may keep ``token``'s record: the refresh token's lifetime when the
        server gave one, for good otherwise; an access token alone until a minute after expiry."""
        if token.refresh_token:
            # GitHub sends the refresh token's lifetime; whatever the server sends, parse it.
            lifetime = parse_seconds(token.extra.get("refresh_token_expires_in"))
            return min(lifetime, MAX_TOKEN_LIFETIME) if lifetime else None
        if token.expires_at is None:
            return None
        return max(1.0, (token.expires_at - now).total_seconds() + 60.0)


@attrs.frozen(kw_only=True)
class Stored:
    """What the store held for an account at one read: its content, the store's version of
    it (None when there is nothing) and its :func:`stamp`."""

    version: int | None
    content: Record | Tombstone | None
    stamp: int | None = None

    @property
    def record(self) -> Record | None:
        """The token record, or None for a tombstone or nothing."""
        return self.content if isinstance(self.content, Record) else None

    @property
    def seq(self) -> int:
        """The lineage position of what is stored (a tombstone's too); 0 for nothing."""
        content = self.content
        return 0 if content is None else content.seq


@attrs.frozen(kw_only=True)
class Held:
    """A token in memory that the store may not have: a write failed, or the store lost it."""

    record: Record

    def newer_than(self, stored: Stored) -> bool:
        """True when this token should replace what the store holds (rule 4 of _refresh.py):
        the store has no record, or an older one by lineage."""
        theirs = stored.record
        return theirs is None or self.record.newer_than(theirs)
