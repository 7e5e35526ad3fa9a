"""Token stores: where deviceflow keeps tokens, and the lock that keeps refreshes single.

- :class:`MemoryStore`: a dict and asyncio locks, for one process.
- :class:`EncryptedFileStore`: one encrypted file per token, for the processes of one machine.
- :class:`RedisStore`: encrypted records in Redis (single node, cluster or Sentinel), for many
  replicas; needs the ``redis`` extra (``pip install '.[redis]'`` in a checkout of deviceflow,
  or ``pip install 'redis>=5.0.1'`` next to an installed deviceflow).

The encrypted stores take ``key=``: a key from :func:`generate_key`, a :class:`Passphrase`, or
a :class:`KeySet` (also read from an environment variable or a key file) for rotation.

MemoryStore and RedisStore are also :class:`WatchableStore`: they report changes of keys, so that
processes waiting for another's device flow are woken when its token lands instead of polling.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deviceflow._crypto import KeyMaterial, KeySet, Passphrase, generate_key

    from ._file import EncryptedFileStore
    from ._memory import MemoryStore
    from ._protocol import KeyWatch, Lease, TokenStore, Versioned, WatchableStore
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


#: Where each name lives: its module is imported on first use (PEP 562), so that a program
#: that reads one record does not import the lock library and the event loop's modules.
_HOMES = {
    "EncryptedFileStore": "._file",
    "MemoryStore": "._memory",
    "KeyWatch": "._protocol",
    "Lease": "._protocol",
    "TokenStore": "._protocol",
    "Versioned": "._protocol",
    "WatchableStore": "._protocol",
    "KeyMaterial": "deviceflow._crypto",
    "KeySet": "deviceflow._crypto",
    "Passphrase": "deviceflow._crypto",
    "generate_key": "deviceflow._crypto",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home, __name__), name)
        globals()[name] = value
        return value
    # RedisStore needs the optional redis package: import it only when asked for.
    if name == "RedisStore":
        try:
            from ._redis import RedisStore
        except ModuleNotFoundError as exc:
            if exc.name != "redis" and not (exc.name or "").startswith("redis."):
                raise
            raise ModuleNotFoundError(
                "RedisStore needs the redis package: pip install 'redis>=5.0.1' "
                "(or, in a checkout of deviceflow, pip install '.[redis]')",
                name=exc.name,
            ) from exc
        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
