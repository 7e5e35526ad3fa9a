"""MemoryStore: tokens in a dict, for one process only."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager

import attrs

from deviceflow.exceptions import ConflictError

from ._leases import LocalLeases, LocalLock, check_lock_args, check_ttl
from ._protocol import KeyWatch, Lease, Versioned
from ._watch import LocalWatch, Watchers

__all__ = ["MemoryStore"]


@attrs.frozen
class _Entry:
    # The value, or the function that renders it (see MemoryStore.put_rendered).
    value: bytes | Callable[[], bytes] = attrs.field(repr=False)
    version: int
    expires: float | None  # time.monotonic()

    def alive(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def data(self) -> bytes:
        value = self.value
        return value if isinstance(value, bytes) else value()


@attrs.define
class MemoryStore:
    """A :class:`~deviceflow.stores.TokenStore` that keeps values in memory.

    Its locks are asyncio locks, so they exclude tasks of **one process only**: replicas or
    several worker processes need :class:`~deviceflow.stores.EncryptedFileStore` (one machine)
    or :class:`~deviceflow.stores.RedisStore` (many). Values are lost when the process ends and
    are not encrypted. Good for tests, scripts and single-process services.

    >>> store = MemoryStore()
    """

    _entries: dict[str, _Entry] = attrs.field(factory=dict, init=False, repr=False)
    _leases: LocalLeases = attrs.field(factory=LocalLeases, init=False, repr=False)
    _watchers: Watchers = attrs.field(factory=Watchers, init=False, repr=False)

    def _current(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and not entry.alive(time.monotonic()):
            del self._entries[key]
            return None
        return entry

    async def get(self, key: str) -> Versioned | None:
        """The value of ``key`` and its version, or None."""
        entry = self._current(key)
        return None if entry is None else Versioned(entry.data(), entry.version)

    def kept(self, key: str) -> tuple[bytes | Callable[[], bytes] | None, int | None]:
        """The value of ``key`` as it was put (bytes, or the function given to
        :meth:`put_rendered`, not called) and its version; ``(None, None)`` when absent."""
        entry = self._current(key)
        return (None, None) if entry is None else (entry.value, entry.version)

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None,
        ttl: float | None = None,
    ) -> int:
        """Write ``value`` if ``key`` is at ``expected_version``; return the new version."""
        return self._put(key, bytes(value), expected_version, ttl)

    async def put_rendered(
        self,
        key: str,
        render: Callable[[], bytes],
        *,
        expected_version: int | None,
        ttl: float | None = None,
    ) -> int:
        """put() for a value kept as the function that renders it, called on every get().

        ``render`` must return the same bytes every time. DeviceFlowClient keeps its records
        this way, so that a record and the client's cached token share one copy of the
        token's strings in memory instead of two.
        """
        return self._put(key, render, expected_version, ttl)

    def _put(
        self,
        key: str,
        value: bytes | Callable[[], bytes],
        expected_version: int | None,
        ttl: float | None,
    ) -> int:
        check_ttl(ttl)
        entry = self._current(key)
        current = None if entry is None else entry.version
        if current != expected_version:
            raise ConflictError(
                f"{key!r} is at version {current}, not {expected_version}: re-read and retry"
            )
        version = (current or 0) + 1
        expires = None if ttl is None else time.monotonic() + ttl
        self._entries[key] = _Entry(value, version, expires)
        self._watchers.notify(key)
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Remove ``key`` (only at ``expected_version`` when given); True if it was there."""
        entry = self._current(key)
        if entry is None:
            return False
        if expected_version is not None and entry.version != expected_version:
            raise ConflictError(
                f"{key!r} is at version {entry.version}, not {expected_version}: not deleted"
            )
        del self._entries[key]
        self._watchers.notify(key)
        return True

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]:
        """Hold ``key``'s lock for at most ``ttl`` s; LockTimeoutError after ``wait`` s."""
        check_lock_args(ttl, wait)
        return LocalLock(self._leases, key, ttl, wait)

    def watch(self, keys: Collection[str]) -> AbstractAsyncContextManager[KeyWatch]:
        """Report every put and delete of ``keys`` while the block runs (see
        :class:`~deviceflow.stores.WatchableStore`)."""
        return LocalWatch(self._watchers, keys)

    async def aclose(self) -> None:
        """Nothing to release; the values stay until the store is dropped."""
