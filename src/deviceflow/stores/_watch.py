"""Watches of keys inside one process: who waits on which key, and waking them.

MemoryStore wakes the watches of a key on every put and delete; RedisStore wakes them when its
subscription hears that a key changed (see _redis_watch.py). A watch keeps the keys reported
since its last :meth:`LocalWatch.changed`, so a change that lands while its waiter is busy
reading is not lost.

A process may park 100,000 waiters at once, each with a watch, so a watch is kept small: no
``asyncio.Event`` (its deque of waiters alone is 760 bytes) and no cancel scope; a future and a
timer exist only while :meth:`LocalWatch.changed` waits, and nothing else is made per waiter
(see benchmarks/README.md, "Waiting replicas").
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from types import TracebackType

__all__ = ["LocalWatch", "Watchers"]

_NOTHING: frozenset[str] = frozenset()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LocalWatch:
    """One waiter's watch of some keys (a :class:`~deviceflow.stores.KeyWatch`), and the async
    context manager that registers it with ``watchers`` for the duration of the block."""

    __slots__ = ("_pending", "_waiter", "_watchers", "_woken", "keys")

    def __init__(self, watchers: Watchers, keys: Collection[str]) -> None:
        self.keys = frozenset(keys)  # the same object when given a frozenset
        self._watchers = watchers
        self._pending = _NOTHING  # the keys reported since the last changed()
        self._woken = False  # a report (or a nudge) since the last changed()
        self._waiter: asyncio.Future[None] | None = None  # while changed() waits

    async def __aenter__(self) -> LocalWatch:
        self._watchers.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._watchers.discard(self)

    @property
    def live(self) -> bool:
        """True while changes are being reported."""
        return True

    def mark(self, key: str) -> None:
        """Report ``key`` as changed."""
        if key not in self._pending:
            self._pending = self._pending | {key}
        self.nudge()

    def reset(self) -> None:
        """Forget the reports so far."""
        self._pending = _NOTHING
        self._woken = False

    def nudge(self) -> None:
        """Wake the waiter, with nothing changed when nothing was reported (``live`` did)."""
        self._woken = True
        if self._waiter is not None:
            _wake(self._waiter)

    async def changed(self, timeout: float) -> frozenset[str]:
        """The keys reported since the last call, waiting up to ``timeout`` s for one.

        One waiter per watch: a second call while one waits raises RuntimeError.
        """
        if self._waiter is not None:
            raise RuntimeError("this watch's changed() is already being awaited")
        if not self._woken:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            # The timer always ends the wait: a report, a nudge or a cancellation may end it
            # sooner, never later.
            timer = loop.call_later(max(0.0, timeout), _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._woken = False
        found, self._pending = self._pending, _NOTHING
        return found


class Watchers:
    """The watches of one store in this process, by key."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        # A tuple, not a set: a key is nearly always watched by one waiter of this process
        # (its client's flight for that account), and a tuple of one is 48 bytes, a set 216.
        self._by_key: dict[str, tuple[LocalWatch, ...]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def add(self, watch: LocalWatch) -> None:
        """Wake ``watch`` at every report of its keys from now on."""
        for key in watch.keys:
            self._by_key[key] = (*self._by_key.get(key, ()), watch)

    def discard(self, watch: LocalWatch) -> None:
        """Stop waking ``watch`` (nothing happens if it is not here)."""
        for key in watch.keys:
            watches = self._by_key.get(key, ())
            if any(w is watch for w in watches):
                left = tuple(w for w in watches if w is not watch)
                if left:
                    self._by_key[key] = left
                else:
                    del self._by_key[key]

    def notify(self, key: str) -> None:
        """Wake every watch of ``key``."""
        for watch in self._by_key.get(key, ()):
            watch.mark(key)

    def nudge_all(self) -> None:
        """Wake every watch with nothing changed (the store's ``live`` changed)."""
        for watches in self._by_key.values():
            for watch in watches:
                watch.nudge()
