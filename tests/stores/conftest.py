"""Fixtures for the store tests: one ``store`` fixture for every backend.

``redis_server`` and ``redis_cluster`` (session-wide private servers) come from tests/_redis.py
through tests/conftest.py; ``redis_factory`` (disposable servers for tests that kill, freeze or
reconfigure one) is wired up here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from _redis import open_redis_store, redis_factory
from deviceflow.stores import EncryptedFileStore, MemoryStore, TokenStore, generate_key

__all__ = ["redis_factory"]

#: One key for the whole session (a fresh one per run).
KEY = generate_key()

BACKENDS = [
    "memory",
    "file",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis-cluster", marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    """Every TokenStore backend in turn, empty."""
    backend: str = request.param
    if backend == "memory":
        yield MemoryStore()
    elif backend == "file":
        file_store = EncryptedFileStore(tmp_path / "tokens", key=KEY)
        yield file_store
        await file_store.aclose()
    else:
        server = request.getfixturevalue("redis_server" if backend == "redis" else "redis_cluster")
        async with open_redis_store(server, key=KEY) as redis_store:
            yield redis_store
