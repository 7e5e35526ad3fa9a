"""Token stores: where deviceflow keeps tokens, and the lock that keeps refreshes single.

- :class:`MemoryStore`: a dict and asyncio locks, for one process.
- :class:`EncryptedFileStore`: one encrypted file per token, for the processes of one machine.
- :class:`RedisStore`: encrypted records in Redis (single node, cluster or Sentinel), for many
  replicas; needs the ``redis`` extra (``pip install deviceflow[redis]``).

The encrypted stores take ``key=``: a key from :func:`generate_key`, a :class:`Passphrase`, or
a :class:`KeySet` (also read from an environment variable or a key file) for rotation.

MemoryStore and RedisStore are also :class:`WatchableStore`: they report changes of keys, so that
processes waiting for another's device flow are woken when its token lands instead of polling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deviceflow._crypto import KeyMaterial, KeySet, Passphrase, generate_key

from ._file import EncryptedFileStore
from ._memory import MemoryStore
from ._protocol import KeyWatch, Lease, TokenStore, Versioned, WatchableStore

if TYPE_CHECKING:
    from ._redis import RedisStore

__all__ = [
    "EncryptedFileStore",
    "KeyMaterial",
    "KeySet",
    "KeyWatch",
    "Lease",
    "MemoryStore",
    "Passphrase",
    "RedisStore",
    "TokenStore",
    "Versioned",
    "WatchableStore",
    "generate_key",
]


def __getattr__(name: str) -> object:
    # RedisStore needs the optional redis package: import it only when asked for.
    if name == "RedisStore":
        try:
            from ._redis import RedisStore
        except ModuleNotFoundError as exc:
            if exc.name != "redis" and not (exc.name or "").startswith("redis."):
                raise
            raise ModuleNotFoundError(
                "RedisStore needs the redis package: pip install 'deviceflow[redis]'",
                name=exc.name,
            ) from exc
        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
