"""RedisStore beyond the contract: key layout, encryption, eviction check, timeouts, rotation."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot

from _redis import RedisClusterProcess, RedisProcess, free_port, open_redis_store
from deviceflow.exceptions import DecryptionError, KeyDerivationError, StoreError
from deviceflow.stores import KeySet, Passphrase, RedisStore, Versioned, generate_key
from helpers import time_factor

pytestmark = pytest.mark.redis

RedisFactory = Callable[..., RedisProcess]


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    """A plain client on the session's single-node server, to look behind the store."""
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def keys_with(raw: Redis, prefix: str) -> list[bytes]:
    """Every Redis key that starts with ``prefix``."""
    return sorted(name for name in await raw.keys(prefix + "*") if isinstance(name, bytes))


async def test_record_and_lock_share_a_slot_and_hide_the_key(
    redis_server: RedisProcess, raw: Redis
) -> None:
    """A record and its lock hash to one cluster slot; no Redis key contains the store key."""
    async with open_redis_store(redis_server, prefix="layout:") as store:
        await store.put("tenant-name", b"v", expected_version=None)
        async with store.lock("tenant-name", ttl=5, wait=0):
            names = await keys_with(raw, "layout:")
    assert 2 == len(names)
    assert 1 == len({key_slot(name) for name in names})
    assert not any(b"tenant" in name for name in names)


async def test_values_are_encrypted_in_redis(redis_server: RedisProcess, raw: Redis) -> None:
    """The token bytes appear nowhere in Redis."""
    async with open_redis_store(redis_server, prefix="enc:") as store:
        await store.put("k", b"visible-token-text", expected_version=None)
        (name,) = await keys_with(raw, "enc:")
        stored = await raw.hgetall(name)
    assert {b"v", b"d"} == set(stored)
    assert b"1" == stored[b"v"]
    assert b"visible-token-text" not in stored[b"d"]


async def test_put_ttl_becomes_key_expiry(redis_server: RedisProcess, raw: Redis) -> None:
    """put(ttl=...) sets the key's expiry; a put without ttl removes it."""
    async with open_redis_store(redis_server, prefix="ttl:") as store:
        await store.put("k", b"v", expected_version=None, ttl=100)
        (name,) = await keys_with(raw, "ttl:")
        with_ttl = await raw.pttl(name)
        await store.put("k", b"v", expected_version=1)
        without = await raw.pttl(name)
    assert 0 < with_ttl <= 100_000
    assert -1 == without


async def test_lock_key_always_has_a_ttl(redis_server: RedisProcess, raw: Redis) -> None:
    """The lock key carries the lock's ttl and a different token for every acquisition."""
    async with open_redis_store(redis_server, prefix="lk:") as store:
        tokens = []
        for _ in range(2):
            async with store.lock("k", ttl=7, wait=0):
                (name,) = await keys_with(raw, "lk:")
                assert 0 < await raw.pttl(name) <= 7000
                tokens.append(await raw.get(name))
        assert [] == await keys_with(raw, "lk:")
    assert tokens[0] != tokens[1]


async def test_tampered_version_field_is_detected(redis_server: RedisProcess, raw: Redis) -> None:
    """A version field changed behind the store's back fails as tampering; nothing is changed."""
    async with open_redis_store(redis_server, prefix="tv:") as store:
        await store.put("k", b"v", expected_version=None)
        (name,) = await keys_with(raw, "tv:")
        for forged in (b"7", b"x"):
            await raw.hset(name, "v", forged)
            with pytest.raises(DecryptionError, match="wrong key or tampered data"):
                await store.get("k")
            assert forged == await raw.hget(name, "v")


async def test_record_copied_to_another_key_fails(redis_server: RedisProcess, raw: Redis) -> None:
    """Tenant A's record copied over tenant B's does not decrypt as B's."""
    async with open_redis_store(redis_server, prefix="cp:") as store:
        await store.put("tenant-a", b"A", expected_version=None)
        (a_name,) = await keys_with(raw, "cp:")
        await store.put("tenant-b", b"B", expected_version=None)
        (b_name,) = set(await keys_with(raw, "cp:")) - {a_name}
        version, data = await raw.hmget(a_name, ["v", "d"])
        assert version is not None
        assert data is not None
        await raw.hset(b_name, "v", version)
        await raw.hset(b_name, "d", data)
        with pytest.raises(DecryptionError, match="tenant-b"):
            await store.get("tenant-b")
        assert Versioned(b"A", 1) == await store.get("tenant-a")


async def test_wrong_key_fails_and_leaves_record(redis_server: RedisProcess, raw: Redis) -> None:
    """A store with another key raises DecryptionError and does not overwrite the record."""
    async with open_redis_store(redis_server, prefix="wk:") as store:
        await store.put("k", b"v", expected_version=None)
    (name,) = await keys_with(raw, "wk:")
    before = await raw.hgetall(name)
    async with open_redis_store(redis_server, prefix="wk:", key=generate_key()) as wrong:
        with pytest.raises(DecryptionError):
            await wrong.get("k")
    assert before == await raw.hgetall(name)


@pytest.mark.parametrize("topology", ["redis_server", "redis_cluster"])
async def test_get_many_in_order(request: pytest.FixtureRequest, topology: str) -> None:
    """get_many returns each key's value (or None) in the order asked, in one pipeline."""
    server = request.getfixturevalue(topology)
    async with open_redis_store(server) as store:
        keys = [f"tenant-{i}" for i in range(50)]
        for key in keys[::2]:
            await store.put(key, key.encode(), expected_version=None)
        got = await store.get_many(keys)
    assert [Versioned(k.encode(), 1) if i % 2 == 0 else None for i, k in enumerate(keys)] == got


@pytest.mark.parametrize("topology", ["redis_server", "redis_cluster"])
async def test_rotate(request: pytest.FixtureRequest, topology: str) -> None:
    """rotate() re-encrypts records under the newest key, keeping versions and ttls."""
    server: RedisProcess | RedisClusterProcess = request.getfixturevalue(topology)
    old, new = generate_key(), generate_key()
    prefix = f"rot-{topology}:"
    async with open_redis_store(server, key=old, prefix=prefix) as before:
        for i in range(20):
            await before.put(f"k{i}", b"v%d" % i, expected_version=None, ttl=100)
        await before.put("k0", b"v0b", expected_version=1)
    async with open_redis_store(server, key=KeySet(new, old), prefix=prefix) as rotating:
        assert 20 == await rotating.rotate()
        assert 0 == await rotating.rotate()
    async with open_redis_store(server, key=new, prefix=prefix) as after:
        assert Versioned(b"v0b", 2) == await after.get("k0")
        assert Versioned(b"v19", 1) == await after.get("k19")


async def test_passphrase_params_kept_in_redis(redis_server: RedisProcess, raw: Redis) -> None:
    """A passphrase store keeps its salt in Redis; the same passphrase reads, another does not."""
    phrase = Passphrase("correct horse battery staple", work_factor=2**10)
    async with open_redis_store(redis_server, prefix="pp:", key=phrase) as store:
        await store.put("k", b"v", expected_version=None)
    params = await raw.get("pp:kdf")
    assert params is not None
    assert b"correct horse" not in params
    async with open_redis_store(redis_server, prefix="pp:", key=phrase) as again:
        assert Versioned(b"v", 1) == await again.get("k")
    wrong = Passphrase("wrong", work_factor=2**10)
    async with open_redis_store(redis_server, prefix="pp:", key=wrong) as other:
        with pytest.raises(DecryptionError):
            await other.get("k")


async def plant(raw: Redis, name: str, **changes: object) -> bytes:
    """Rewrite the scrypt parameters under ``name`` with ``changes``, as a Redis operator could."""
    stored = await raw.get(name)
    assert stored is not None
    doc = json.loads(stored)
    doc.update(changes)
    planted = json.dumps(doc).encode()
    await raw.set(name, planted)
    return planted


@pytest.mark.parametrize(
    ("changes", "error", "reason"),
    [
        ({"n": 2}, KeyDerivationError, "n=2 is not"),
        ({"n": 2**40}, KeyDerivationError, "n=1099511627776"),
        ({"n": 2**11, "salt": base64.b64encode(b"x" * 16).decode()}, DecryptionError, "key check"),
    ],
)
async def test_planted_kdf_params_in_redis_are_refused(
    redis_server: RedisProcess,
    raw: Redis,
    changes: dict[str, object],
    error: type[Exception],
    reason: str,
) -> None:
    """A kdf key weakened, inflated or swapped in Redis is refused; nothing is written."""
    phrase = Passphrase("correct horse battery staple", work_factor=2**10)
    prefix = f"plant{uuid.uuid4().hex[:8]}:"
    async with open_redis_store(redis_server, prefix=prefix, key=phrase) as store:
        await store.put("k", b"v", expected_version=None)
    planted = await plant(raw, prefix + "kdf", **changes)
    before = await keys_with(raw, prefix)
    async with open_redis_store(redis_server, prefix=prefix, key=phrase) as again:
        with pytest.raises(error, match=reason):
            await again.put("new", b"under a weak key", expected_version=None)
    assert before == await keys_with(raw, prefix)
    assert planted == await raw.get(prefix + "kdf")


async def test_rotating_passphrases_in_redis_moves_the_key_check(
    redis_server: RedisProcess,
) -> None:
    """After rotate() with a new passphrase first, the store opens with the new one alone."""
    old = Passphrase("old passphrase", work_factor=2**10)
    new = Passphrase("new passphrase", work_factor=2**10)
    prefix = f"rp{uuid.uuid4().hex[:8]}:"
    async with open_redis_store(redis_server, prefix=prefix, key=old) as store:
        await store.put("k", b"v", expected_version=None)
    async with open_redis_store(redis_server, prefix=prefix, key=KeySet(new, old)) as rotating:
        assert 1 == await rotating.rotate()
    async with open_redis_store(redis_server, prefix=prefix, key=new) as after:
        assert Versioned(b"v", 1) == await after.get("k")


async def test_store_from_url_owns_its_client(redis_server: RedisProcess) -> None:
    """A store made from a URL works and closes its own client."""
    store = RedisStore(redis_server.url, key=generate_key(), prefix="url:")
    await store.put("k", b"v", expected_version=None)
    assert Versioned(b"v", 1) == await store.get("k")
    await store.aclose()


async def test_cluster_store_from_url(redis_cluster: RedisClusterProcess) -> None:
    """cluster=True makes a RedisCluster client from a URL."""
    store = RedisStore(redis_cluster.url, key=generate_key(), prefix="curl:", cluster=True)
    for i in range(10):
        await store.put(f"k{i}", b"v", expected_version=None)
    assert Versioned(b"v", 1) == await store.get("k9")
    await store.aclose()


def test_decoding_client_is_refused() -> None:
    """A client with decode_responses=True is refused at construction."""
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStore(Redis(decode_responses=True), key=generate_key())


def test_repr_shows_no_key() -> None:
    """repr names the client type and prefix, never the key."""
    key = generate_key()
    text = repr(RedisStore(Redis(), key=key, prefix="p:"))
    assert "RedisStore(<Redis>, prefix='p:', namespace='deviceflow')" == text


async def test_evicting_policy_logs_a_warning(
    redis_factory: RedisFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """On first use, a maxmemory-policy that can evict keys is logged as a warning, once."""
    server = redis_factory("--maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.INFO, logger="deviceflow"):
        async with open_redis_store(server) as store:
            await store.put("k", b"v", expected_version=None)
            await store.get("k")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings)
    assert "allkeys-lru" in warnings[0].getMessage()


async def test_noeviction_logs_nothing(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """The default noeviction policy gives no warning."""
    with caplog.at_level(logging.INFO, logger="deviceflow"):
        async with open_redis_store(redis_server) as store:
            await store.get("k")
    assert [] == caplog.records


async def test_forbidden_config_does_not_crash(
    redis_factory: RedisFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Where CONFIG is forbidden (managed Redis), the store works and says it could not check."""
    server = redis_factory()
    admin = Redis.from_url(server.url)
    await admin.acl_setuser(
        "app", enabled=True, passwords=["+app-password"], keys=["*"], commands=["+@all", "-config"]
    )
    await admin.aclose()
    client = Redis.from_url(f"redis://app:app-password@127.0.0.1:{server.port}/0")
    store = RedisStore(client, key=generate_key())
    with caplog.at_level(logging.INFO, logger="deviceflow"):
        await store.put("k", b"v", expected_version=None)
        assert Versioned(b"v", 1) == await store.get("k")
    await client.aclose()
    assert ["could not check"] == [
        r.getMessage()[:15] for r in caplog.records if r.name.startswith("deviceflow")
    ]


async def test_dead_redis_is_a_store_error(redis_factory: RedisFactory) -> None:
    """With Redis gone, every operation raises StoreError within the timeout."""
    server = redis_factory()
    async with open_redis_store(server, timeout=1.0) as store:
        await store.put("k", b"v", expected_version=None)
        server.kill()
        with anyio.fail_after(10 * time_factor()):
            for attempt in (
                store.get("k"),
                store.put("k", b"w", expected_version=1),
                store.delete("k"),
            ):
                with pytest.raises(StoreError, match="Redis"):
                    await attempt
            with pytest.raises(StoreError):
                async with store.lock("k", ttl=5, wait=5):
                    pass


async def test_frozen_redis_times_out_as_store_error(redis_factory: RedisFactory) -> None:
    """A Redis that accepts connections but never answers gives StoreError after the timeout."""
    server = redis_factory()
    async with open_redis_store(server, timeout=0.5) as store:
        await store.put("k", b"v", expected_version=None)
        server.pause()
        try:
            with anyio.fail_after(5 * time_factor()), pytest.raises(StoreError):
                await store.get("k")
        finally:
            server.resume()


async def test_sentinel_managed_client(redis_factory: RedisFactory, tmp_path: Path) -> None:
    """A client from Sentinel.master_for() works as the store's client."""
    master = redis_factory()
    sentinel = RedisProcess(free_port(), tmp_path / "sentinel", sentinel_of=master.port)
    sentinel.start()
    try:
        sentinels = Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=2)  # type: ignore[no-untyped-call,unused-ignore]
        client = sentinels.master_for("mymaster", socket_timeout=2)
        store = RedisStore(client, key=generate_key())
        await store.put("k", b"v", expected_version=None)
        async with store.lock("k", ttl=5, wait=0):
            assert Versioned(b"v", 1) == await store.get("k")
        await client.aclose()
        for connection in sentinels.sentinels:
            await connection.aclose()
    finally:
        sentinel.stop()
    raw = Redis.from_url(master.url)
    assert 1 == len(await raw.keys("deviceflow:{*}"))  # the record landed on the master
    await raw.aclose()
