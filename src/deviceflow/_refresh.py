"""The refresh transaction: how a token is refreshed and stored without ever losing or replaying
a rotated refresh token, whatever the store does.

Theory of operation
-------------------

A rotating authorization server hands out a new refresh token with every refresh and revokes
the whole grant when an old one comes back (RFC 9700 4.14.2). So the refresh token that a
refresh returns must reach the store, and no process may refresh with the one it replaced.
Every rule below serves that, and each is written once, here.

1. **Lock, re-read, refresh, compare-and-set.** A refresh runs under the store's lock of the
   account, on the record read under that lock, and is written with the version read. The lock
   saves calls to the server; the version check catches a writer that did not hold the lock
   (its lease ran out). A conflicting write of a fresh token overwrites what is there, unless
   that is a tombstone: a logout is never undone.

2. **The lease covers the request and the write.** The lease is counted from the instant before
   the lock was asked for (``time.monotonic()``: store locks live in real time), for ``lock_ttl``
   seconds. Of the time left after ``http_timeout``, half is kept for the store calls before the
   request (waiting for the lock, the re-read) and half for the write after it:
   ``reserve = (lock_ttl - http_timeout) / 2``. A refresh starts only if the lease still has
   ``http_timeout + reserve`` seconds; otherwise the lock is given up and the transaction starts
   over (three times at most, then LockTimeoutError). Every attempt of the request ends
   ``reserve`` seconds before the lease does. With the defaults (lock_ttl 36 s, http_timeout
   20 s) the reserve is 8 s on each side; RedisStore's calls end within its ``timeout`` (5 s),
   which leaves 3 s for scheduling and clock drift.

3. **A write that fails is retried until it lands.** The refreshed token goes to memory before
   the write. If the write fails (disk full, Redis down), the token is kept as *unsaved*:
   get_token() serves it, a background task retries the write with back-off (0.5 s doubling
   to 30 s), and aclose() makes a last bounded attempt and logs one ERROR line per account it
   could not save. While a token is unsaved, this process never refreshes from the store's
   older record: the next transaction writes the unsaved token first, and if that fails again
   it refreshes with the unsaved token's own refresh token, the newest there is.

4. **Memory newer than the store is written back.** A logout leaves a tombstone (see
   _records.py), so a record that is simply missing means the store lost it (Redis restarted
   empty, a file deleted by hand). A process that still holds the account's token then writes
   it back instead of asking a person for a new grant; and where the store holds an older
   token than the one in memory, memory's goes back too. Newer is judged by record version
   (a token in memory knows the version it was read or written at), not by clocks, which
   differ between machines; obtained-at times only break a tie of equal versions.

5. **After invalid_grant, trust nothing older.** A refused refresh means the grant is gone, and
   every token obtained from it before the refusal may be revoked with it. The record is
   replaced by a tombstone, and no token obtained before the refusal is handed out again, from
   memory or from the store: the next token comes from a new device flow (or is one that some
   process obtained after the refusal).

What no client can recover: the answer to a refresh lost in transit (the server rotated the
refresh token, the connection broke before the answer arrived). The old refresh token is then
used up and the new one was never seen; a person must approve a new code.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime

import anyio
import attrs

from ._cache import TokenCache
from ._clock import Clock
from ._endpoints import Endpoints, GateClosed
from ._models import Token
from ._records import (
    TOMBSTONE_TTL,
    Held,
    Record,
    RecordCodec,
    RenderedRecord,
    Stored,
    Tombstone,
    stamp,
)
from .exceptions import (
    ConflictError,
    DecryptionError,
    DeviceFlowError,
    InvalidGrantError,
    LockTimeoutError,
    StoreError,
)
from .stores._memory import MemoryStore
from .stores._protocol import Lease, TokenStore, Versioned

__all__ = ["Forced", "NeedsGrant", "RefreshTransaction", "Stale", "TokenLedger"]

log = logging.getLogger("deviceflow")


class Forced(enum.Enum):
    """A forced refresh that names no particular stale token (``refresh(account)``)."""

    ANY = "any"


#: What forces a refresh: the access token a server rejected, or Forced.ANY.
Stale = str | Forced
#: How many times a transaction whose lease ran short starts over before it gives up.
_LEASE_TRIES = 3
#: How many times a refresh waits at a closed gate (Retry-After) before its callers get the error.
_GATE_TRIES = 10
#: The longest aclose() spends on its last attempt to store unsaved tokens.
_CLOSE_FLUSH = 10.0
#: Back-off of the background retries of unsaved writes (real seconds).
_FLUSH_FIRST, _FLUSH_MAX = 0.5, 30.0


@attrs.frozen(kw_only=True)
class NeedsGrant:
    """No usable token: a device flow must run. Stored tokens obtained at or before
    ``not_before`` must not be used (their grant was refused)."""

    not_before: datetime | None = None


_NOTHING = Stored(value=None, content=None)


class _LeaseShort(Exception):
    """The lease has too little time left for a refresh: give the lock up and start over."""


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
        self.unsaved: dict[str, Held] = {}  # refreshed, not yet stored: newer than the store
        self.refused: dict[str, datetime] = {}  # when each account's grant was refused

    def lock(self, key: str) -> AbstractAsyncContextManager[Lease]:
        """The store's lock of ``key``, with the client's ttl and wait."""
        return self.store.lock(key, ttl=self.lock_ttl, wait=self.lock_wait)

    # --- reading ------------------------------------------------------------------------------

    async def read(self, account: str, key: str, seen: Stored | None = None) -> Stored:
        """What the store holds for ``account`` now (decoded once per distinct record)."""
        return self._decode(account, await self.store.get(key), seen)

    def _decode(self, account: str, current: Versioned | None, seen: Stored | None) -> Stored:
        if current is None:
            return _NOTHING
        mark = stamp(current)
        if seen is not None and seen.stamp == mark:
            return seen
        entry = self.cache.get(account)
        if entry is not None and entry.stamp == mark:
            content: Record | Tombstone = Record(token=entry.token, obtained=entry.obtained)
        else:
            content = self.codec.decode(current.value)
        return Stored(value=current, content=content, stamp=mark)

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
                account, record.token, record.obtained, stored.stamp, stored.version
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
        self.cache.remember(account, record.token, record.obtained, stored.stamp, stored.version)
        return record.token

    def expired(self, token: Token) -> bool:
        return token.expires_within(0, now=self.clock.wall())

    # --- writing ------------------------------------------------------------------------------

    async def write(
        self, key: str, account: str, record: Record, expected: int | None
    ) -> Versioned:
        """Compare-and-set ``record``; returns what was written and its version.

        A conflict on a fresh token is overwritten (the new token is valid, and losing it would
        lose a rotated refresh token), unless the record is a tombstone now: ConflictError.
        """
        obtained = record.obtained or self.clock.wall()
        value = self.codec.encode(account, record.token, obtained)
        ttl = self.codec.ttl(record.token, self.clock.wall())
        store = self.store
        for attempt in range(4):
            try:
                if type(store) is MemoryStore:
                    # The record shares the token's strings with the cache: one copy in memory.
                    render = RenderedRecord(self.codec, account, record.token, obtained)
                    version = await store.put_rendered(
                        key, render, expected_version=expected, ttl=ttl
                    )
                else:
                    version = await store.put(key, value, expected_version=expected, ttl=ttl)
                return Versioned(value, version)
            except ConflictError:
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

    def saved(self, account: str, held: Held, written: Versioned) -> None:
        if self.unsaved.get(account) is held:
            del self.unsaved[account]
        entry = self.cache.get(account)
        if entry is not None and entry.token is held.record.token:
            entry.stamp = stamp(written)
            entry.version = written.version

    async def bury(self, key: str, account: str, version: int | None, reason: str) -> None:
        """Replace the record at ``version`` by a tombstone (nothing if it changed meanwhile)."""
        self.cache.forget(account)
        tombstone = self.codec.encode_tombstone(account, self.clock.wall(), reason)
        with contextlib.suppress(ConflictError):
            await self.store.put(key, tombstone, expected_version=version, ttl=TOMBSTONE_TTL)

    async def save(self, account: str, token: Token) -> None:
        """Store ``token`` as ``account``'s, whatever was there (save_token, a device flow)."""
        key = self.codec.key(account)
        record = Record(token=token, obtained=self.clock.wall())
        async with self.lock(key):
            current = await self.store.get(key)
            written = await self.write(key, account, record, current.version if current else None)
        self.unsaved.pop(account, None)
        self.refused.pop(account, None)
        self.cache.remember(account, token, record.obtained, stamp(written), written.version)

    async def logout(self, account: str, *, force: bool) -> bool:
        """Revoke ``account``'s grant where possible and leave a tombstone; True if revoked.

        The token revoked is the newest this process knows: the store's, or one in memory that
        the store does not have (unsaved, or lost by the store).
        """
        key = self.codec.key(account)
        held = self.unsaved.pop(account, None)
        entry = self.cache.get(account)
        self.cache.forget(account)
        if held is None and entry is not None:
            record = Record(token=entry.token, obtained=entry.obtained)
            held = Held(record=record, version=entry.version or 0)
        try:
            exists = (await self.read(account, key)).record is not None
        except StoreError:  # decided under the lock
            exists = False
        if exists or held is not None:
            with contextlib.suppress(DeviceFlowError):  # endpoints settled before the lock
                await self.endpoints.ensure_metadata()
        async with self.lock(key):
            try:
                current = await self.store.get(key)
            except DecryptionError:
                if not force:
                    raise
                log.warning("deleting account %r's undecryptable record unrevoked", account)
                await self.store.delete(key)
                current, held = None, None
            try:
                stored = self._decode(account, current, None)
            except StoreError:  # unreadable (not undecryptable): nothing to revoke from it
                stored = Stored(value=current, content=None)
            if held is not None and held.newer_than(stored):
                token: Token | None = held.record.token
            else:
                token = stored.record.token if stored.record is not None else None
            if token is None and (current is None or isinstance(stored.content, Tombstone)):
                return False  # nothing stored, nothing held: nothing to sign out
            revoked = await self.endpoints.revoke(token) if token is not None else False
            tombstone = self.codec.encode_tombstone(account, self.clock.wall(), "logout")
            await self.store.put(key, tombstone, expected_version=stored.version, ttl=TOMBSTONE_TTL)
        return revoked


class RefreshTransaction:
    """The refresh transaction of one client (rules 1 to 5 of the module docstring), and the
    retries of the writes it could not make."""

    def __init__(
        self,
        *,
        ledger: TokenLedger,
        endpoints: Endpoints,
        finishing: Callable[[str], AbstractContextManager[None]],
        http_timeout: float,
    ) -> None:
        self.ledger = ledger
        self.endpoints = endpoints
        self._finishing = finishing
        self.http_timeout = http_timeout
        self.reserve = (ledger.lock_ttl - http_timeout) / 2
        self._flusher: asyncio.Task[None] | None = None

    # --- the refresh transaction --------------------------------------------------------------

    async def obtain(self, account: str, stale: Stale | None) -> Token | NeedsGrant:
        """A usable token for ``account`` from the store or a refresh, or NeedsGrant.

        ``stale`` forces a refresh: Forced.ANY, or the access token a server just rejected (then
        a newer stored token is returned instead of refreshing again).
        """
        key = self.ledger.codec.key(account)
        seen: Stored | None = None
        if stale is None and account not in self.ledger.unsaved:
            seen = await self.ledger.read(account, key)
            token = self.ledger.fresh(account, seen)
            if token is not None:
                return token
        refreshing = stale is not None or self._may_refresh(account, seen)
        if refreshing:
            # Endpoints (discovery, client registration) are settled before the lock, so that
            # the lock's ttl only has to cover the refresh.
            await self.endpoints.settle()
        gate = self.endpoints.gate
        short = closed = 0
        while True:
            if refreshing:  # wait at the token endpoint's gate outside the lock
                await gate.wait_open()
            async with gate.slot() if refreshing else contextlib.nullcontext():
                started = time.monotonic()  # the lease ends no sooner than lock_ttl from here
                try:
                    async with self.ledger.lock(key):
                        return await self._locked(
                            account, key, stale, seen, started + self.ledger.lock_ttl
                        )
                except _LeaseShort:
                    short += 1
                    if short == _LEASE_TRIES:
                        break
                    log.warning(
                        "account %r: the store took too long inside its lock (lock_ttl %.0f s); "
                        "starting the refresh over",
                        account,
                        self.ledger.lock_ttl,
                    )
                except GateClosed:
                    closed += 1
                    if closed == _GATE_TRIES:
                        raise
                    refreshing = True
        raise LockTimeoutError(
            f"account {account!r}: the store was too slow to refresh within its lock "
            f"{_LEASE_TRIES} times; raise lock_ttl (now {self.ledger.lock_ttl} s) or check the "
            "store"
        )

    def _may_refresh(self, account: str, seen: Stored | None) -> bool:
        record = seen.record if seen is not None else None
        entry = self.ledger.cache.get(account)
        return bool(
            seen is None
            or (record is not None and record.token.refresh_token)
            or (entry is not None and entry.token.refresh_token)
        )

    async def _locked(
        self, account: str, key: str, stale: Stale | None, seen: Stored | None, lease_end: float
    ) -> Token | NeedsGrant:
        stored = await self.ledger.read(account, key, seen)
        if isinstance(stored.content, Tombstone):  # signed out (or refused): never undone
            self.ledger.unsaved.pop(account, None)
            self.ledger.cache.forget(account)
            return NeedsGrant(not_before=self.ledger.refused.get(account))
        base = self.ledger.trusted(account, stored.record)
        version = floor = stored.version  # what to compare-and-set with; what to order after
        held = self._held(account, stored)
        if held is not None:
            # Memory is newer than the store (a write failed, or the store lost the record):
            # store it first, and never refresh from the older record.
            base = held.record
            try:
                with self._finishing(account):
                    written = await self.ledger.write(key, account, held.record, version)
            except ConflictError:
                raise
            except StoreError as exc:
                log.warning("account %r: a newer token is still unsaved: %s", account, exc)
                floor = held.version
            else:
                self.ledger.saved(account, held, written)
                version = floor = written.version
        elif self.ledger.unsaved.pop(account, None) is not None:
            log.info("account %r: a newer token was stored elsewhere; using it", account)
        if base is None:
            return NeedsGrant(not_before=self.ledger.refused.get(account))
        token = base.token
        named = isinstance(stale, str)
        changed = held is not None or seen is None or seen.stamp != stored.stamp
        if (stale is None and changed) or (named and token.access_token != stale):
            # Someone wrote while we waited (or memory was newer): that token may be fresh.
            fresh = self._fresh_record(account, base, version)
            if fresh is not None:
                return fresh
        if token.refresh_token:
            return await self._refresh(account, key, base, version, floor, lease_end)
        if not self.ledger.expired(token) and not (named and token.access_token == stale):
            # Nothing to refresh with, but still valid (and not the token a server just
            # rejected): keep using it.
            self.ledger.cache.remember(account, token, base.obtained, stored.stamp, version)
            return token
        await self.ledger.bury(key, account, version, "expired")
        return NeedsGrant()

    def _fresh_record(self, account: str, record: Record, version: int | None) -> Token | None:
        entry = self.ledger.cache.get(account)
        if entry is None or entry.token is not record.token:
            entry = self.ledger.cache.entry(account, record.token, record.obtained, None, version)
        if self.ledger.cache.due(entry):
            return None
        self.ledger.cache.entries[account] = entry
        return record.token

    def _held(self, account: str, stored: Stored) -> Held | None:
        """The token in memory, when it is newer than the store's and worth keeping."""
        held = self.ledger.unsaved.get(account)
        if held is None:
            entry = self.ledger.cache.get(account)
            if entry is None or (stored.stamp is not None and entry.stamp == stored.stamp):
                return None
            record = Record(token=entry.token, obtained=entry.obtained)
            held = Held(record=record, version=entry.version or 0)
        token = held.record.token
        if self.ledger.trusted(account, held.record) is None:
            return None
        if not token.refresh_token and self.ledger.expired(token):
            return None  # nothing left to keep
        return held if held.newer_than(stored) else None

    async def _refresh(
        self,
        account: str,
        key: str,
        base: Record,
        version: int | None,
        floor: int | None,
        lease_end: float,
    ) -> Token | NeedsGrant:
        """Refresh ``base``, write the answer over ``version``; the new token is ordered after
        ``floor`` (the newest version this process knows of)."""
        if lease_end - time.monotonic() < self.http_timeout + self.reserve:
            raise _LeaseShort
        # Once the request is out, the server may already have rotated the refresh token: the
        # answer must reach memory and the store, or every holder of the old token loses the
        # grant. So aclose() waits for this step instead of cancelling it.
        with self._finishing(account), self.endpoints.telemetry.refreshing() as outcome:
            try:
                new = await self.endpoints.refresh(base.token, until=lease_end - self.reserve)
            except GateClosed:
                outcome.value = "busy"  # the refresh token was not used: tried again later
                raise
            except InvalidGrantError:
                outcome.value = "invalid_grant"
                refused = self.ledger.clock.wall()
                log.info("refresh token of account %r was rejected; need a new grant", account)
                self.ledger.refused[account] = refused
                self.ledger.unsaved.pop(account, None)
                await self.ledger.bury(key, account, version, "refused")
                return NeedsGrant(not_before=refused)
            record = Record(token=new, obtained=self.ledger.clock.wall())
            held = Held(record=record, version=max(version or 0, floor or 0) + 1)
            self.ledger.cache.remember(account, new, held.record.obtained, None, held.version)
            self.ledger.unsaved[account] = held
            try:
                written = await self.ledger.write(key, account, held.record, version)
            except ConflictError:
                self.ledger.unsaved.pop(account, None)
                raise
            except StoreError as exc:
                outcome.value = "unsaved"
                log.warning(
                    "account %r: the refreshed token could not be stored (%s); it is kept in "
                    "memory and the write is retried in the background",
                    account,
                    exc,
                )
                self._schedule_flush()
                return new
            self.ledger.saved(account, held, written)
            return new

    # --- unsaved tokens -----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        delay = _FLUSH_FIRST
        while self.ledger.unsaved:
            jitter = random.uniform(0.8, 1.2)  # noqa: S311 - spreads retries, not a secret
            await anyio.sleep(delay * jitter)
            if await self.flush():
                return
            delay = min(delay * 2, _FLUSH_MAX)

    async def flush(self) -> bool:
        """Try once to store every unsaved token; True when none is left unsaved."""
        for account in list(self.ledger.unsaved):
            try:
                await self._flush_one(account)
            except StoreError as exc:
                log.debug("account %r: unsaved token still not stored: %s", account, exc)
        return not self.ledger.unsaved

    async def _flush_one(self, account: str) -> None:
        key = self.ledger.codec.key(account)
        async with self.ledger.store.lock(
            key, ttl=self.ledger.lock_ttl, wait=self.ledger.lock_wait
        ):
            held = self.ledger.unsaved.get(account)
            if held is None:
                return
            stored = await self.ledger.read(account, key)
            if isinstance(stored.content, Tombstone) or not held.newer_than(stored):
                # Signed out meanwhile, or a newer token was stored elsewhere: that one wins.
                del self.ledger.unsaved[account]
                return
            written = await self.ledger.write(key, account, held.record, stored.version)
            self.ledger.saved(account, held, written)
            log.info("account %r: the unsaved token is stored now", account)

    async def aclose(self) -> None:
        """Stop the background retries, keep trying to store unsaved tokens for at most
        _CLOSE_FLUSH seconds (0.1 s apart, doubling), and log an ERROR line for each account
        whose token could still not be stored."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        delay = 0.1
        with anyio.move_on_after(_CLOSE_FLUSH, shield=True):
            while not await self.flush():
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
        for account in self.ledger.unsaved:
            log.error(
                "account %r: its newest token could not be stored and is lost with this "
                "process; the account may need a new sign-in",
                account,
            )
