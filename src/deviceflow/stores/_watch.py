"""Watches of keys inside one process: who waits on which key, and waking them.

MemoryStore wakes the watches of a key on every put and delete; RedisStore wakes them when its
subscription hears that a key changed (see _redis_watch.py). A watch keeps the keys reported
since its last :meth:`LocalWatch.changed`, so a change that lands while its waiter is busy
reading is not lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

import anyio

__all__ = ["LocalWatch", "Watchers"]


def _always() -> bool:
    return True


class LocalWatch:
    """One waiter's watch of some keys (a :class:`~deviceflow.stores.KeyWatch`)."""

    __slots__ = ("_event", "_live", "_pending", "keys")

    def __init__(self, keys: frozenset[str], live: Callable[[], bool]) -> None:
        self.keys = keys
        self._live = live
        self._pending: set[str] = set()
        self._event = asyncio.Event()

    @property
    def live(self) -> bool:
        """True while changes are being reported."""
        return self._live()

    def mark(self, key: str) -> None:
        """Report ``key`` as changed."""
        self._pending.add(key)
        self._event.set()

    def reset(self) -> None:
        """Forget the reports so far."""
        self._pending.clear()
        self._event.clear()

    def nudge(self) -> None:
        """Wake the waiter with nothing changed (``live`` did)."""
        self._event.set()

    async def changed(self, timeout: float) -> frozenset[str]:  # noqa: ASYNC109
        """The keys reported since the last call, waiting up to ``timeout`` s for one."""
        if not self._event.is_set():
            with anyio.move_on_after(max(0.0, timeout)):
                await self._event.wait()
        self._event.clear()
        found, self._pending = frozenset(self._pending), set()
        return found


class Watchers:
    """The watches of one store in this process, by key."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[str, set[LocalWatch]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    @contextmanager
    def watching(
        self, keys: Collection[str], live: Callable[[], bool] = _always
    ) -> Iterator[LocalWatch]:
        """A watch of ``keys`` for the duration of the block."""
        watch = LocalWatch(frozenset(keys), live)
        for key in watch.keys:
            self._by_key.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            for key in watch.keys:
                watches = self._by_key.get(key)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
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
