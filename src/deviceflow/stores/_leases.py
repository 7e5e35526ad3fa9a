"""Per-key leases inside one process: the lock of MemoryStore, and the front of the file lock.

A lease is held by one task at a time and for at most ``ttl`` seconds: once the ttl has passed,
the next waiter takes it even if the holder has not let go (the holder's later release is then a
no-op, because each acquisition has its own token). Waiting longer than ``wait`` seconds raises
LockTimeoutError. A task cancelled while waiting leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import attrs

from deviceflow.exceptions import LockTimeoutError

from ._protocol import Lease

__all__ = ["KeyedLocks", "LocalLeases", "LocalLock", "check_lock_args", "check_ttl"]


def check_lock_args(ttl: float, wait: float) -> None:
    """ValueError unless ``ttl`` is positive and ``wait`` is not negative (both finite)."""
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("lock ttl must be a positive number of seconds")
    if not (math.isfinite(wait) and wait >= 0):
        raise ValueError("lock wait must be zero or a positive number of seconds")


def check_ttl(ttl: float | None) -> None:
    """ValueError unless ``ttl`` (of a stored value) is None or a positive number of seconds."""
    if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("ttl must be None or a positive number of seconds")


@attrs.define
class _Slot:
    token: str | None = None
    expires: float = 0.0
    waiters: int = 0
    changed: asyncio.Event | None = None  # made only once someone waits


# Lease tokens only need to be unique within the process: a counter is enough (and cheap).
_serial = itertools.count(1)


@attrs.define
class LocalLeases:
    """Leases keyed by string; one holder per key, each for at most its ttl.

    The uncontended path (take, then let go) allocates one small slot and nothing else: this
    lock is taken on every refresh.
    """

    _slots: dict[str, _Slot] = attrs.Factory(dict)

    async def acquire(self, key: str, *, ttl: float, deadline: float, name: str) -> str:
        """Take the lease on ``key`` before the monotonic ``deadline``; return its token.

        ``name`` is the store key the lease is for, for the LockTimeoutError message.
        """
        token = f"lease-{next(_serial)}"
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        while True:
            now = time.monotonic()
            if slot.token is None or slot.expires <= now:
                slot.token, slot.expires = token, now + ttl
                return token
            if now >= deadline:
                raise LockTimeoutError(
                    f"the lock of {name!r} is held by someone else; gave up waiting"
                )
            if slot.changed is None:
                slot.changed = asyncio.Event()
            changed = slot.changed
            slot.waiters += 1
            try:
                with anyio.move_on_after(min(deadline, slot.expires) - now):
                    await changed.wait()
            finally:
                slot.waiters -= 1
                self._forget_if_idle(key, slot)
            slot = self._slots.setdefault(key, slot)

    def take(self, key: str, ttl: float) -> str | None:
        """The lease on ``key`` and its token if nobody holds it (nor waits for it); else None."""
        slot = self._slots.get(key)
        if slot is not None:
            return None
        token = f"lease-{next(_serial)}"
        self._slots[key] = _Slot(token, time.monotonic() + ttl)
        return token

    def renew(self, key: str, token: str, ttl: float) -> bool:
        """Restart the ttl of the lease ``token`` holds on ``key``; False if it lost the lease."""
        slot = self._slots.get(key)
        now = time.monotonic()
        if slot is None or slot.token != token or slot.expires <= now:
            return False
        slot.expires = now + ttl
        return True

    def release(self, key: str, token: str) -> bool:
        """Let go of the lease on ``key`` if ``token`` still holds it; True if it did."""
        slot = self._slots.get(key)
        if slot is None or slot.token != token:
            return False
        slot.token = None
        if slot.changed is not None:  # wake the waiters; the next one to wait makes a new Event
            slot.changed.set()
            slot.changed = None
        self._forget_if_idle(key, slot)
        return True

    def _forget_if_idle(self, key: str, slot: _Slot) -> None:
        idle = slot.waiters == 0 and (slot.token is None or slot.expires <= time.monotonic())
        if idle and self._slots.get(key) is slot:
            del self._slots[key]

    def __len__(self) -> int:
        return len(self._slots)


class LocalLock(AbstractAsyncContextManager[Lease]):
    """``async with``: hold the lease on one key of a LocalLeases (MemoryStore's lock)."""

    __slots__ = ("_key", "_leases", "_token", "_ttl", "_wait")

    def __init__(self, leases: LocalLeases, key: str, ttl: float, wait: float) -> None:
        self._leases, self._key, self._ttl, self._wait = leases, key, ttl, wait
        self._token: str | None = None

    async def __aenter__(self) -> Lease:
        token = self._leases.take(self._key, self._ttl)  # a free lock: no coroutine to wait in
        if token is None:
            deadline = time.monotonic() + self._wait
            token = await self._leases.acquire(
                self._key, ttl=self._ttl, deadline=deadline, name=self._key
            )
        self._token = token
        return Lease(key=self._key, owner=token, ttl=self._ttl)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._token is not None:
            self._leases.release(self._key, self._token)
            self._token = None


@attrs.define
class KeyedLocks:
    """A plain mutex per key, forgotten when nobody holds or waits for it."""

    _locks: dict[str, tuple[asyncio.Lock, int]] = attrs.Factory(dict)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the mutex of ``key`` for the block."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
