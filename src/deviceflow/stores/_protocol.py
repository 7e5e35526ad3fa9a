"""The one protocol every token store implements."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["Lease", "TokenStore", "Versioned"]


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
