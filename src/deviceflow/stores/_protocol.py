"""The one protocol every token store implements."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["KeyWatch", "Lease", "TokenStore", "Versioned", "WatchableStore"]


@attrs.frozen
class Versioned:
    """A stored value with its version; versions start at 1 and grow by one per write."""

    value: bytes = attrs.field(repr=False)
    version: int


@attrs.frozen(kw_only=True)
class Lease:
    """Proof of holding a store lock: the key, the owner (a value unique to this acquisition),
    and the ttl."""

    key: str
    owner: str = attrs.field(repr=False)
    ttl: float


@runtime_checkable
class TokenStore(Protocol):
    """Versioned byte values under string keys, with a lock per key.

    - ``get`` returns the value and its version, or None.
    - ``put`` writes when the stored version equals ``expected_version`` (None: the key must not
      exist) and returns the new version; otherwise it raises ConflictError and writes nothing.
      ``ttl`` (seconds) lets the store forget the value, where it can.
    - ``delete`` removes the key (only at ``expected_version`` when given); True if it existed.
    - ``lock`` is an async context manager held for at most ``ttl`` seconds; waiting longer than
      ``wait`` seconds raises LockTimeoutError.
    """

    async def get(self, key: str) -> Versioned | None: ...

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None,
        ttl: float | None = None,
    ) -> int: ...

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool: ...

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]: ...

    async def aclose(self) -> None: ...


class KeyWatch(Protocol):
    """Reports of changes to the keys given to ``watch()`` of a :class:`WatchableStore`.

    A report is a hint, never data: read the key again to learn what changed.
    """

    @property
    def live(self) -> bool:
        """True while changes are being reported; when False, reports may be missed (the
        store's connection is down) and waiters poll instead."""
        ...

    async def changed(self, timeout: float) -> frozenset[str]:
        """The watched keys changed since the last call (or since the watch began), waiting up
        to ``timeout`` seconds for one; empty after the timeout, or early when :attr:`live`
        changes. A watch has one waiter: MemoryStore's and RedisStore's refuse a second call
        while one waits (RuntimeError)."""
        ...


@runtime_checkable
class WatchableStore(Protocol):
    """An optional capability of a :class:`TokenStore`: it tells waiters when keys change.

    Processes waiting for another's device flow are woken when its token lands instead of
    reading the store every few seconds. Every change made through any client of the store
    (``put`` or ``delete``) after the watch has been entered is reported while ``live``; a
    store may also report keys that did not change (after a reconnection, say). Stores
    without it (EncryptedFileStore) are polled.
    """

    def watch(self, keys: Collection[str]) -> AbstractAsyncContextManager[KeyWatch]: ...
