"""Tokens in memory, and when each is due for a refresh.

Each cached token has two deadlines on the monotonic clock:

- ``refresh_at``: from here on, get_token() still returns it at once but starts one background
  refresh. It lies up to ``refresh_skew`` seconds before expiry, but never in the first half of
  a token's life (a 4 s token with a 60 s skew would otherwise be refreshed on every call).
  Tokens obtained together (a bulk sign-in, a restart) would all be refreshed in the same
  instant, so each account's moment is spread over the window: between the whole skew and a
  quarter of it before expiry, at a point fixed by a hash of the account name (every replica
  picks the same one, so they do not refresh one account at different times);
- ``usable_until``: from here on, callers wait for a new token (one second before expiry at
  most, so that a token handed out is not already dead on arrival).
"""

from __future__ import annotations

import math
import zlib
from datetime import datetime

import attrs

from ._clock import Clock
from ._models import Token

__all__ = ["CacheEntry", "TokenCache", "spread"]


def spread(account: str) -> float:
    """A number in [0, 1) fixed by ``account``'s name, the same in every process."""
    return zlib.crc32(account.encode("utf-8", "surrogatepass")) / 2**32


@attrs.define(kw_only=True)
class CacheEntry:
    """A token in memory with its deadlines on the monotonic clock."""

    token: Token
    refresh_at: float
    usable_until: float
    obtained: datetime | None = None
    # The store record this token was read from or written as (see _records.stamp): when the
    # store still holds that record, it need not be decoded again.
    stamp: int | None = None
    # That record's place in the account's lineage (see _records): orders this token against
    # the store's without trusting clocks or store versions.
    seq: int = 0


class TokenCache:
    """The tokens of one client, by account."""

    __slots__ = ("_clock", "_skew", "entries")

    def __init__(self, clock: Clock, refresh_skew: float) -> None:
        self._clock = clock
        self._skew = refresh_skew
        self.entries: dict[str, CacheEntry] = {}

    def entry(
        self,
        account: str,
        token: Token,
        obtained: datetime | None,
        stamp: int | None = None,
        seq: int = 0,
        *,
        wall: datetime | None = None,
    ) -> CacheEntry:
        """A new entry for ``token`` (not yet cached); ``wall`` is the time now, when the
        caller has just read the clock."""
        refresh_at = usable_until = math.inf  # a token without expiry never needs refreshing
        if token.expires_at is not None:
            now = self._clock.monotonic()
            remaining = (token.expires_at - (wall or self._clock.wall())).total_seconds()
            lifetime = (token.expires_at - obtained).total_seconds() if obtained else remaining
            ahead = min(self._skew, max(0.0, lifetime) / 2)
            refresh_at = now + remaining - ahead * (1.0 - 0.75 * spread(account))
            usable_until = now + remaining - min(1.0, ahead)
        return CacheEntry(
            token=token,
            refresh_at=refresh_at,
            usable_until=usable_until,
            obtained=obtained,
            stamp=stamp,
            seq=seq,
        )

    def remember(
        self,
        account: str,
        token: Token,
        obtained: datetime | None,
        stamp: int | None = None,
        seq: int = 0,
        *,
        wall: datetime | None = None,
    ) -> CacheEntry:
        """Cache ``token`` as ``account``'s and return its entry."""
        entry = self.entries[account] = self.entry(account, token, obtained, stamp, seq, wall=wall)
        return entry

    def get(self, account: str) -> CacheEntry | None:
        """``account``'s entry, or None."""
        return self.entries.get(account)

    def forget(self, account: str) -> None:
        """Drop ``account``'s entry, if any."""
        self.entries.pop(account, None)

    def due(self, entry: CacheEntry) -> bool:
        """True when ``entry`` should be refreshed now by a flight: inside its refresh window
        at all (the spread moment only staggers the background refreshes the hot path starts;
        a caller that waits anyway gets a token with the whole window ahead of it)."""
        expires_at = entry.token.expires_at
        if expires_at is None:
            return False
        remaining = (expires_at - self._clock.wall()).total_seconds()
        lifetime = (expires_at - entry.obtained).total_seconds() if entry.obtained else remaining
        return remaining <= min(self._skew, max(0.0, lifetime) / 2)

    def postpone(self, account: str) -> None:
        """After a failed background refresh: try again halfway to the end of the token's usable
        life (at least a second later), not on every call."""
        entry = self.entries.get(account)
        if entry is not None:
            now = self._clock.monotonic()
            later = now + max(1.0, (entry.usable_until - now) / 2)
            entry.refresh_at = min(later, entry.usable_until)

    def __len__(self) -> int:
        return len(self.entries)
