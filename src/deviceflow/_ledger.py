"""The ledger: the records of one client's accounts in its store, and what the process knows
beyond them (tokens the store has not taken yet, grants refused). Reads, writes, saves and
logouts; the refresh transaction (_refresh.py) runs on it, and its rules are stated there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from ._cache import TokenCache
from ._clock import Clock
from ._endpoints import Endpoints
from ._models import Token
from ._records import (
    TOMBSTONE_TTL,
    Held,
    Record,
    RecordCodec,
    RenderedRecord,
    Stored,
    Tombstone,
    Written,
    stamp,
)
from .exceptions import ConflictError, DecryptionError, DeviceFlowError, StoreError
from .stores._memory import MemoryStore
from .stores._protocol import Lease, TokenStore, Versioned

__all__ = ["NOTHING", "TokenLedger"]

log = logging.getLogger("deviceflow")

#: What a read of a missing record gives.
NOTHING = Stored(version=None, content=None)


class TokenLedger:
    """The records of one client's accounts in its store, and what this process knows beyond
    them: reads, writes, saves and logouts. The refresh transaction runs on it."""

    def __init__(
        self,
        *,
        store: TokenStore,
        codec: RecordCodec,
        cache: TokenCache,
        endpoints: Endpoints,
        clock: Clock,
        lock_ttl: float,
        lock_wait: float,
    ) -> None:
        self.store = store
        self.codec = codec
        self.cache = cache
        self.endpoints = endpoints
        self.clock = clock
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.unsaved: dict[str, Held] = {}  # newer than the store, not stored yet
        self.refused: dict[str, datetime] = {}  # when each account's grant was refused
        #: Called when a token joins ``unsaved`` (the transaction retries the writes).
        self.on_unsaved: Callable[[], None] = lambda: None

    @property
    def writes_wait(self) -> bool:
        """Whether a write can wait on the store. A MemoryStore's writes finish without ever
        suspending, so they need no time bound."""
        return type(self.store) is not MemoryStore

    def lock(self, key: str) -> AbstractAsyncContextManager[Lease]:
        """The store's lock of ``key``, with the client's ttl and wait."""
        return self.store.lock(key, ttl=self.lock_ttl, wait=self.lock_wait)

    # --- reading ------------------------------------------------------------------------------

    async def read(self, account: str, key: str, seen: Stored | None = None) -> Stored:
        """What the store holds for ``account`` now (decoded once per distinct record)."""
        return self.read_kept(key, seen) or self._decode(account, await self.store.get(key), seen)

    def read_kept(self, key: str, seen: Stored | None = None) -> Stored | None:
        """:meth:`read` without a call to the store, where it can answer so (a MemoryStore
        holding a record a client put there); None otherwise."""
        store = self.store
        if type(store) is MemoryStore:
            kept, version = store.kept(key)
            # A record a client put there (write below): its record and stamp as they are,
            # without rendering its bytes to decode them again.
            if isinstance(kept, RenderedRecord) and kept.stamp is not None:
                if seen is not None and seen.stamp == kept.stamp:
                    return seen
                return Stored(version=version, content=kept.record, stamp=kept.stamp)
        return None

    def _decode(self, account: str, current: Versioned | None, seen: Stored | None) -> Stored:
        if current is None:
            return NOTHING
        mark = stamp(current)
        if seen is not None and seen.stamp == mark:
            return seen
        entry = self.cache.get(account)
        if entry is not None and entry.stamp == mark:
            content: Record | Tombstone = Record(
                token=entry.token, obtained=entry.obtained, seq=entry.seq
            )
        else:
            content = self.codec.decode(current.value)
        return Stored(version=current.version, content=content, stamp=mark)

    def trusted(self, account: str, record: Record | None) -> Record | None:
        """``record``, unless it was obtained before ``account``'s grant was refused."""
        refused = self.refused.get(account)
        if record is None or refused is None:
            return record
        if record.obtained is not None and record.obtained > refused:
            return record
        return None

    def fresh(self, account: str, stored: Stored) -> Token | None:
        """Cache and return the stored token if it is trusted and not due for refresh."""
        record = self.trusted(account, stored.record)
        if record is None:
            return None
        entry = self.cache.get(account)
        if entry is None or entry.token is not record.token:  # not the record already in memory
            entry = self.cache.entry(
                account, record.token, record.obtained, stored.stamp, record.seq
            )
        if self.cache.due(entry):
            return None
        self.cache.entries[account] = entry
        return record.token

    def usable(self, account: str, stored: Stored, not_before: datetime | None) -> Token | None:
        """Cache and return the stored token if it has not expired and was obtained after
        ``not_before`` (when given)."""
        record = self.trusted(account, stored.record)
        if record is None or self.expired(record.token):
            return None
        if not_before is not None and (record.obtained is None or record.obtained <= not_before):
            return None
        self.cache.remember(account, record.token, record.obtained, stored.stamp, record.seq)
        return record.token

    def expired(self, token: Token) -> bool:
        return token.expires_within(0, now=self.clock.wall())

    def held(self, account: str) -> Held | None:
        """The token this process holds for ``account`` beyond the store: an unsaved one, else
        the cached one (which the store may have lost)."""
        held = self.unsaved.get(account)
        if held is None and (entry := self.cache.get(account)) is not None:
            held = Held(record=Record(token=entry.token, obtained=entry.obtained, seq=entry.seq))
        return held

    # --- writing ------------------------------------------------------------------------------

    async def write(
        self,
        key: str,
        account: str,
        record: Record,
        expected: int | None,
        *,
        overwrite: bool,
        wall: datetime | None = None,
    ) -> Written:
        """Compare-and-set ``record``; returns the version written and its stamp.

        With ``overwrite`` (a token this process has just been issued), a conflict is
        overwritten: the new token is valid, and losing it would lose a rotated refresh token;
        unless the record is a tombstone now. Otherwise a conflict raises ConflictError, and the
        caller reads again and decides. ``wall`` is the time now, when the caller has just
        read the clock.
        """
        assert record.obtained is not None
        ttl = self.codec.ttl(record.token, wall or self.clock.wall())
        store = self.store
        # A MemoryStore keeps the record as what renders it: it shares the token's strings
        # with the cache (one copy in memory), and is rendered only if someone reads its bytes.
        value = b"" if type(store) is MemoryStore else self.codec.encode(account, record)
        for attempt in range(4):
            try:
                if type(store) is MemoryStore:
                    render = RenderedRecord(self.codec, account, record)
                    version = await store.put_rendered(
                        key, render, expected_version=expected, ttl=ttl
                    )
                    return Written(version, render.stamped())
                version = await store.put(key, value, expected_version=expected, ttl=ttl)
                return Written(version, stamp(Versioned(value, version)))
            except ConflictError:
                if not overwrite:
                    raise
                current = await self.store.get(key)
                if attempt == 3 or self.is_tombstone(current):
                    raise
                log.warning("account %r was written concurrently; keeping the new token", account)
                expected = current.version if current else None
        raise AssertionError("unreachable")  # pragma: no cover

    def is_tombstone(self, current: Versioned | None) -> bool:
        if current is None:
            return False
        try:
            return isinstance(self.codec.decode(current.value), Tombstone)
        except StoreError:  # damaged: a valid token may replace it
            return False

    def saved(self, account: str, held: Held, written: Written) -> None:
        """``held`` reached the store as ``written``."""
        if self.unsaved.get(account) is held:
            del self.unsaved[account]
        entry = self.cache.get(account)
        if entry is not None and entry.token is held.record.token:
            entry.stamp = written.stamp

    def keep_unsaved(self, account: str, held: Held) -> None:
        """Serve ``held`` from memory and have its write retried until it lands."""
        record = held.record
        self.cache.remember(account, record.token, record.obtained, None, record.seq)
        self.unsaved[account] = held
        self.on_unsaved()

    async def bury(
        self, key: str, account: str, version: int | None, seq: int, reason: str
    ) -> None:
        """Replace the record at ``version`` (lineage ``seq``) by a tombstone; nothing if the
        record changed meanwhile."""
        self.cache.forget(account)
        tombstone = self.codec.encode_tombstone(account, self.clock.wall(), reason, seq + 1)
        with contextlib.suppress(ConflictError):
            await self.store.put(key, tombstone, expected_version=version, ttl=TOMBSTONE_TTL)

    async def save(self, account: str, token: Token, *, keep_on_failure: bool = False) -> None:
        """Store ``token`` as ``account``'s new grant, whatever was there (save_token, a device
        flow). With ``keep_on_failure`` (a token just issued), a store that fails does not
        lose it: it is kept as unsaved."""
        key = self.codec.key(account)
        try:
            async with self.lock(key):
                try:
                    stored = await self.read(account, key)
                except StoreError as exc:
                    if isinstance(exc, DecryptionError) or not keep_on_failure:
                        raise
                    current = await self.store.get(key)
                    version = None if current is None else current.version
                    stored = Stored(version=version, content=None)
                record = Record(token=token, obtained=self.clock.wall(), seq=stored.seq + 1)
                # A MemoryStore keeps the record unrendered (write()); a token handed in that
                # cannot be rendered (an ``extra`` value JSON cannot hold) is refused now, not
                # at the first read of its bytes.
                try:
                    self.codec.encode(account, record)
                except (TypeError, ValueError) as exc:
                    raise TypeError(
                        f"account {account!r}: the token cannot be stored: {exc}"
                    ) from None
                written = await self.write(key, account, record, stored.version, overwrite=True)
        except StoreError as exc:
            if not keep_on_failure or isinstance(exc, ConflictError):
                raise
            log.warning(
                "account %r: the new token could not be stored (%s); it is kept in memory and "
                "the write is retried in the background",
                account,
                exc,
            )
            self.refused.pop(account, None)
            self.keep_unsaved(account, Held(record=Record(token=token, obtained=self.clock.wall())))
            return
        self.unsaved.pop(account, None)
        self.refused.pop(account, None)
        self.cache.remember(account, token, record.obtained, written.stamp, record.seq)

    async def logout(self, account: str, *, force: bool) -> bool:
        """Revoke ``account``'s grant where possible and leave a tombstone; True if revoked.

        The token revoked is the newest this process knows: the store's, or one in memory that
        the store does not have (unsaved, or lost by the store). What this process holds is
        dropped only once the tombstone is written: a logout that fails loses nothing.
        """
        key = self.codec.key(account)
        held = self.held(account)
        try:
            exists = (await self.read(account, key)).record is not None
        except StoreError:  # decided under the lock
            exists = False
        if exists or held is not None:
            with contextlib.suppress(DeviceFlowError):  # endpoints settled before the lock
                await self.endpoints.ensure_metadata()
        discarded = False
        async with self.lock(key):
            held = self.held(account)  # a refresh may have ended while we waited
            try:
                current = await self.store.get(key)
            except DecryptionError:
                if not force:
                    raise
                log.warning("discarding account %r's undecryptable record unrevoked", account)
                await self.store.delete(key)
                current, discarded = None, True
            try:
                stored = self._decode(account, current, None)
            except StoreError:  # unreadable (not undecryptable): nothing to revoke from it
                stored = Stored(version=None if current is None else current.version, content=None)
            if held is not None and held.newer_than(stored):
                token: Token | None = held.record.token
            else:
                token = stored.record.token if stored.record is not None else None
            signed_out = current is None or isinstance(stored.content, Tombstone)
            if token is None and signed_out and not discarded:
                revoked = False  # nothing stored, nothing held: nothing to sign out
            else:
                # The tombstone first: a logout the store refuses revokes nothing and drops
                # nothing, so the account stays as it was.
                seq = max(stored.seq, held.record.seq if held else 0) + 1
                tombstone = self.codec.encode_tombstone(account, self.clock.wall(), "logout", seq)
                await self.store.put(
                    key, tombstone, expected_version=stored.version, ttl=TOMBSTONE_TTL
                )
                revoked = await self.endpoints.revoke(token) if token is not None else False
            self.unsaved.pop(account, None)
            self.cache.forget(account)
        return revoked
