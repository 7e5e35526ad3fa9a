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
   (its lease ran out). A conflicting write of a token just refreshed overwrites what is there,
   unless that is a tombstone (a logout is never undone); any other write (a retry of an
   unsaved token, a write-back) reads again on conflict and decides again.

2. **The lease covers the request and the write.** The lease is counted from the instant before
   the lock was asked for (``time.monotonic()``: store locks live in real time), for ``lock_ttl``
   seconds. Of the time left after ``http_timeout``, half is kept for the store calls before the
   request (waiting for the lock, the re-read) and half for the write after it:
   ``reserve = (lock_ttl - http_timeout) / 2``. A refresh starts only if the lease still has
   ``http_timeout + reserve`` seconds; otherwise the lock is given up and the transaction starts
   over (three times at most, then LockTimeoutError). Every attempt of the request ends
   ``reserve`` seconds before the lease does. With the defaults (lock_ttl 36 s, http_timeout
   20 s) the reserve is 8 s on each side; a RedisStore command ends within its ``timeout``
   (5 s) once it has a connection, which leaves 3 s for scheduling and clock drift. A call
   queued behind a burst for one of the pool's connections can wait longer (while Redis
   answers others, see stores/_turns.py): the lease rule above then gives the lock up and
   starts over, and ``_bounded`` cuts a write off at the lease's end. Waiting for a lock another
   process holds does not count towards giving up. Every write made inside the lock ends with
   the lease.

3. **A write that fails is retried until it lands.** The refreshed token goes to memory before
   the write. If the write fails (disk full, Redis down), it is tried again at once, still
   under the lock, five times over 1.5 s while the lease lasts: until it lands, any other
   process would read the older record. If it still fails, the token is kept as *unsaved*:
   get_token() serves it, a background task retries the write with back-off (0.5 s doubling
   to 30 s), and aclose() keeps trying for 10 s and logs one ERROR line per account it could
   not save. A device flow's new token that the store refuses is kept the same way. While a
   token is unsaved, this process never refreshes from the store's older record: the next
   transaction writes the unsaved token first, and if that fails again it refreshes with the
   unsaved token's own refresh token, the newest there is.

4. **Memory newer than the store is written back.** A logout leaves a tombstone (see
   _records.py), so a record that is simply missing means the store lost it (Redis restarted
   empty, a file deleted by hand). A process that still holds the account's token then writes
   it back instead of asking a person for a new grant; and where the store holds an older
   token than the one in memory, memory's goes back too. Newer is judged by the lineage each
   record carries (``seq``: one more with every refresh, see _records.py), not by store
   versions, which start again at 1 when a store loses its data, nor by clocks, which differ
   between machines; obtained-at times only break a tie.

5. **After invalid_grant, trust nothing older.** A refused refresh means the grant is gone, and
   every token obtained from it before the refusal may be revoked with it. The record is
   replaced by a tombstone, and no token obtained before the refusal is handed out again, from
   memory or from the store: the next token comes from a new device flow (or is one that some
   process obtained after the refusal).

6. **An answer of the wrong type still rotated the refresh token.** When a refresh of a DPoP
   grant answers a Bearer token (or the reverse), the access token is never used, but the new
   refresh token is stored as rule 3 says, with the grant's older access token marked expired,
   and the ProtocolError is raised after that (``_checked_type``).

What no client can recover: the answer to a refresh lost in transit (the server rotated the
refresh token, the connection broke before the answer arrived). The old refresh token is then
used up and the new one was never seen; a person must approve a new code.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import anyio
import attrs

from ._dpop import check_token_type
from ._endpoints import Endpoints, GateClosed
from ._identity import receive
from ._ledger import TokenLedger
from ._models import Token
from ._records import (
    Held,
    Record,
    Stored,
    Tombstone,
    Written,
)
from .exceptions import (
    ConflictError,
    InvalidGrantError,
    LockTimeoutError,
    ProtocolError,
    StoreError,
)

__all__ = ["Forced", "NeedsGrant", "RefreshTransaction", "Stale"]

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
#: The longest aclose() spends on its last attempts to store unsaved tokens.
_CLOSE_FLUSH = 10.0
#: A write that fails right after a refresh is tried again, still under the lock, at these
#: intervals (while the lease lasts): a blip of a second or two loses nothing and lets no
#: other process read the older record meanwhile.
_WRITE_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)
#: Back-off of the background retries of unsaved writes (real seconds).
_FLUSH_FIRST, _FLUSH_MAX = 0.5, 30.0


@attrs.frozen(kw_only=True)
class NeedsGrant:
    """No usable token: a device flow must run. Stored tokens obtained at or before
    ``not_before`` must not be used (their grant was refused)."""

    not_before: datetime | None = None


class _LeaseShort(Exception):
    """The lease has too little time left for a refresh: give the lock up and start over."""


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
        ledger.on_unsaved = self._schedule_flush

    # --- the refresh transaction --------------------------------------------------------------

    async def obtain(self, account: str, stale: Stale | None) -> Token | NeedsGrant:
        """A usable token for ``account`` from the store or a refresh, or NeedsGrant.

        ``stale`` forces a refresh: Forced.ANY, or the access token a server just rejected (then
        a newer stored token is returned instead of refreshing again).
        """
        ledger = self.ledger
        key = ledger.codec.key(account)
        seen: Stored | None = None
        if stale is None and account not in ledger.unsaved:
            seen = ledger.read_kept(key) or await ledger.read(account, key)
            token = ledger.fresh(account, seen)
            if token is not None:
                return token
        refreshing = stale is not None or self._may_refresh(account, seen)
        endpoints = self.endpoints
        if refreshing and not endpoints.settled:
            # Endpoints (discovery, client registration) are settled before the lock, so that
            # the lock's ttl only has to cover the refresh.
            await endpoints.settle()
        gate = endpoints.gate
        short = closed = 0
        while True:
            if refreshing and gate.closed_for() > 0:  # wait at the gate outside the lock
                await gate.wait_open()
            # A place at the gate while refreshing: the semaphore's acquire() itself, not its
            # ``async with`` (one coroutine fewer for each of a storm's parked refreshes).
            slot = gate.slot() if refreshing else None
            if slot is not None:
                await slot.acquire()
            try:
                started = time.monotonic()  # the lease ends no sooner than lock_ttl from here
                acquired = started
                async with ledger.lock(key):
                    acquired = time.monotonic()
                    return await self._locked(account, key, stale, seen, started + ledger.lock_ttl)
            except _LeaseShort:
                # A wait for a busy lock is not the store's fault: only a store that was slow
                # inside the lock counts towards giving up.
                if acquired - started < self.reserve:
                    short += 1
                if short == _LEASE_TRIES:
                    break
                log.warning(
                    "account %r: too little of the store lock's %.0f s was left for a refresh; "
                    "starting over",
                    account,
                    ledger.lock_ttl,
                )
            except GateClosed:
                closed += 1
                if closed == _GATE_TRIES:
                    raise
                refreshing = True
            finally:
                if slot is not None:
                    slot.release()
        raise LockTimeoutError(
            f"account {account!r}: the store was too slow to refresh within its lock "
            f"{_LEASE_TRIES} times; raise lock_ttl (now {ledger.lock_ttl} s) or check the store"
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
        ledger = self.ledger
        stored = ledger.read_kept(key, seen) or await ledger.read(account, key, seen)
        if isinstance(stored.content, Tombstone):  # signed out (or refused): never undone
            ledger.unsaved.pop(account, None)
            ledger.cache.forget(account)
            return NeedsGrant(not_before=ledger.refused.get(account))
        base = ledger.trusted(account, stored.record)
        version = stored.version
        held = self._held(account, stored)
        if held is not None:
            # Memory is newer than the store (a write failed, or the store lost the record):
            # store it first, and never refresh from the older record.
            base = held.record
            try:
                with self._finishing(account):
                    written = await self._bounded(
                        ledger.write(key, account, held.record, version, overwrite=False),
                        lease_end,
                    )
            except ConflictError:
                raise
            except StoreError as exc:
                log.warning("account %r: a newer token is still unsaved: %s", account, exc)
                if ledger.unsaved.get(account) is not held:
                    ledger.keep_unsaved(account, held)
            else:
                ledger.saved(account, held, written)
                version = written.version
        elif ledger.unsaved.pop(account, None) is not None:
            log.info("account %r: a newer token was stored elsewhere; using it", account)
        if base is None:
            return NeedsGrant(not_before=ledger.refused.get(account))
        token = base.token
        named = isinstance(stale, str)
        changed = held is not None or seen is None or seen.stamp != stored.stamp
        if (stale is None and changed) or (named and token.access_token != stale):
            # Someone wrote while we waited (or memory was newer): that token may be fresh.
            fresh = self._fresh_record(account, base)
            if fresh is not None:
                return fresh
        if token.refresh_token:
            return await self._refresh(account, key, base, version, lease_end)
        if not ledger.expired(token) and not (named and token.access_token == stale):
            # Nothing to refresh with, but still valid (and not the token a server just
            # rejected): keep using it, and start no more background refreshes for it.
            entry = ledger.cache.remember(account, token, base.obtained, stored.stamp, base.seq)
            entry.refresh_at = entry.usable_until
            return token
        await ledger.bury(key, account, version, base.seq, "expired")
        return NeedsGrant()

    def _fresh_record(self, account: str, record: Record) -> Token | None:
        cache = self.ledger.cache
        entry = cache.get(account)
        if entry is None or entry.token is not record.token:
            entry = cache.entry(account, record.token, record.obtained, None, record.seq)
        if cache.due(entry):
            return None
        cache.entries[account] = entry
        return record.token

    def _held(self, account: str, stored: Stored) -> Held | None:
        """The token in memory, when it is newer than the store's and worth keeping."""
        ledger = self.ledger
        held = ledger.unsaved.get(account)
        if held is None:
            entry = ledger.cache.get(account)
            if entry is None or (stored.stamp is not None and entry.stamp == stored.stamp):
                return None
            held = ledger.held(account)
            assert held is not None
        token = held.record.token
        if ledger.trusted(account, held.record) is None:
            return None
        if not token.refresh_token and ledger.expired(token):
            return None  # nothing left to keep
        return held if held.newer_than(stored) else None

    def _bounded(
        self, write: Coroutine[Any, Any, Written], lease_end: float
    ) -> Coroutine[Any, Any, Written]:
        """``write``, given up (as a StoreError) if it outlasts the lease: a store that hangs
        must not hold aclose() forever; what the write was for is then kept as unsaved."""
        if not self.ledger.writes_wait:  # it cannot outlast the lease: no timer to set
            return write
        return self._timed(write, lease_end)

    @staticmethod
    async def _timed(write: Coroutine[Any, Any, Written], lease_end: float) -> Written:
        with anyio.move_on_after(max(0.0, lease_end - time.monotonic())):
            return await write
        raise StoreError("the store did not finish the write while the lock was held")

    async def _refresh(
        self, account: str, key: str, base: Record, version: int | None, lease_end: float
    ) -> Token | NeedsGrant:
        """Refresh ``base`` and write the answer over ``version``."""
        ledger = self.ledger
        if lease_end - time.monotonic() < self.http_timeout + self.reserve:
            raise _LeaseShort
        # Once the request is out, the server may already have rotated the refresh token: the
        # answer must reach memory and the store, or every holder of the old token loses the
        # grant. So aclose() waits for this step instead of cancelling it.
        with self._finishing(account), self.endpoints.telemetry.refreshing() as outcome:
            try:
                new = await self.endpoints.refresh(
                    base.token, until=lease_end - self.reserve, account=account
                )
            except GateClosed:
                outcome.value = "busy"  # the refresh token was not used: tried again later
                raise
            except InvalidGrantError:
                outcome.value = "invalid_grant"
                refused = ledger.clock.wall()
                log.info("refresh token of account %r was rejected; need a new grant", account)
                ledger.refused[account] = refused
                ledger.unsaved.pop(account, None)
                await ledger.bury(key, account, version, base.seq, "refused")
                return NeedsGrant(not_before=refused)
            # An id_token for someone else, or one expired on arrival, does not replace the
            # one held (_identity.py); the grant's new tokens are kept all the same.
            now = ledger.clock.wall()
            new = self._received(base.token, new, account, now)
            new, refusal = _checked_type(base.token, new, account, now)
            held = Held(record=Record(token=new, obtained=now, seq=base.seq + 1))
            ledger.cache.remember(account, new, now, None, held.record.seq, wall=now)
            ledger.unsaved[account] = held
            try:
                written = await self._write_refreshed(key, account, held, version, lease_end, now)
            except ConflictError:  # signed out meanwhile: the logout wins
                ledger.unsaved.pop(account, None)
                ledger.cache.forget(account)
                raise
            except StoreError as exc:
                outcome.value = "unsaved"
                log.warning(
                    "account %r: the refreshed token could not be stored (%s); it is kept in "
                    "memory and the write is retried in the background",
                    account,
                    exc,
                )
                ledger.keep_unsaved(account, held)
            else:
                ledger.saved(account, held, written)
            if refusal is not None:
                outcome.value = "error"
                raise refusal
            return new

    async def _write_refreshed(
        self,
        key: str,
        account: str,
        held: Held,
        version: int | None,
        lease_end: float,
        received: datetime,
    ) -> Written:
        """Write a refresh's answer (``received`` at that time), trying again under the lock
        while the lease lasts: until it lands, any other process would read the older record."""
        retries = iter(_WRITE_RETRIES)
        wall: datetime | None = received  # the first try follows at once; retries read the clock
        while True:
            try:
                return await self._bounded(
                    self.ledger.write(
                        key, account, held.record, version, overwrite=True, wall=wall
                    ),
                    lease_end,
                )
            except ConflictError:
                raise
            except StoreError:
                delay = next(retries, None)
                if delay is None or time.monotonic() + delay >= lease_end - self.reserve / 2:
                    raise
                await anyio.sleep(delay)
                wall = None

    # --- unsaved tokens -----------------------------------------------------------------------

    def _received(self, previous: Token, new: Token, account: str, now: datetime) -> Token:
        """``new`` with the id_token to keep (_identity.py). Whatever goes wrong in that check,
        the refresh answer is kept: the server may already have rotated the refresh token, and
        losing it loses the grant. The id_token held stays then."""
        try:
            return receive(
                previous,
                new,
                account=account,
                now=now,
                issuers=self.endpoints.provider.id_token_issuers,
            )
        except Exception as exc:
            log.warning(
                "account %r: the refreshed id_token could not be checked (%s); the id_token "
                "held is kept",
                account,
                type(exc).__name__,
            )
            return attrs.evolve(new, id_token=previous.id_token)

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
        ledger = self.ledger
        key = ledger.codec.key(account)
        async with ledger.lock(key):
            for _ in range(3):
                held = ledger.unsaved.get(account)
                if held is None:
                    return
                stored = await ledger.read(account, key)
                if isinstance(stored.content, Tombstone) or not held.newer_than(stored):
                    # Signed out meanwhile, or a newer token was stored elsewhere: that wins.
                    del ledger.unsaved[account]
                    return
                try:
                    written = await ledger.write(
                        key, account, held.record, stored.version, overwrite=False
                    )
                except ConflictError:
                    continue  # written meanwhile (a lapsed lock): read again and decide again
                ledger.saved(account, held, written)
                log.info("account %r: the unsaved token is stored now", account)
                return

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


def _checked_type(
    base: Token, new: Token, account: str, now: datetime
) -> tuple[Token, ProtocolError | None]:
    """A refresh's answer bound to the grant's key when it is of the grant's type (a DPoP
    grant stays DPoP, a Bearer grant Bearer, RFC 9449 5); else what to store instead, and the
    ProtocolError to raise once it is stored.

    The server has rotated the refresh token all the same, and the old one may now revoke the
    grant if sent again (RFC 9700 4.14.2). So the new refresh token is kept, with the grant's
    own access token, type and key, marked expired: the lineage goes on, nothing of the wrong
    type is ever stored or handed out, and the next get_token() tries the refresh again (with
    the key's proof, as a DPoP grant's refresh token needs). Forcing a new sign-in instead
    would stop running services over what may be a passing server fault.
    """
    try:
        return check_token_type(new, base.dpop_key, account, previous=base), None
    except ProtocolError as exc:
        kept = attrs.evolve(
            base,
            refresh_token=new.refresh_token or base.refresh_token,
            expires_at=now if base.expires_at is None else min(base.expires_at, now),
        )
        return kept, exc
