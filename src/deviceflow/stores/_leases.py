"""Per-key leases inside one process: the lock of MemoryStore, and the front of the file lock.

A lease is held by one task at a time and for at most ``ttl`` seconds: once the ttl has passed,
the next waiter takes it even if the holder has not let go (the holder's later release is then a
no-op, because each acquisition has its own token). Waiting longer than ``wait`` seconds raises
LockTimeoutError. A task cancelled while waiting leaves nothing behind.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import attrs

from deviceflow.exceptions import LockTimeoutError

__all__ = ["KeyedLocks", "LocalLeases", "check_lock_args", "check_ttl"]


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
    changed: anyio.Event = attrs.Factory(anyio.Event)


@attrs.define
class LocalLeases:
    """Leases keyed by string; one holder per key, each for at most its ttl."""

    _slots: dict[str, _Slot] = attrs.Factory(dict)

    async def acquire(self, key: str, *, ttl: float, deadline: float, what: str) -> str:
        """Take the lease on ``key`` before the monotonic ``deadline``; return its token.

        ``what`` names the lock in the LockTimeoutError message.
        """
        token = secrets.token_urlsafe(16)
        slot = self._slots.setdefault(key, _Slot())
        while True:
            now = time.monotonic()
            if slot.token is None or slot.expires <= now:
                slot.token, slot.expires = token, now + ttl
                return token
            if now >= deadline:
                raise LockTimeoutError(f"{what} is held by someone else; gave up waiting")
            slot.waiters += 1
            try:
                with anyio.move_on_after(min(deadline, slot.expires) - now):
                    await slot.changed.wait()
            finally:
                slot.waiters -= 1
                self._forget_if_idle(key, slot)
            slot = self._slots.setdefault(key, slot)

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
        slot.changed.set()
        slot.changed = anyio.Event()
        self._forget_if_idle(key, slot)
        return True

    def _forget_if_idle(self, key: str, slot: _Slot) -> None:
        idle = slot.waiters == 0 and (slot.token is None or slot.expires <= time.monotonic())
        if idle and self._slots.get(key) is slot:
            del self._slots[key]

    def __len__(self) -> int:
        return len(self._slots)


@attrs.define
class KeyedLocks:
    """A plain mutex per key, forgotten when nobody holds or waits for it."""

    _locks: dict[str, tuple[anyio.Lock, int]] = attrs.Factory(dict)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the mutex of ``key`` for the block."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = anyio.Lock()
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
