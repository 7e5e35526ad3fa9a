"""RedisStore: encrypted records in Redis, shared by every replica (needs the ``redis`` extra).

Keys, for a record id ``<rid>`` (a hash of the namespace and the store key)::

    <prefix>{<rid>}         hash: v = version, d = envelope (see deviceflow._crypto)
    <prefix>{<rid>}:lock    the lock: a random token per acquisition, always with a ttl
    <prefix>kdf             salt, scrypt costs and key check, only when a key is a Passphrase

Every write of a record is also published on a channel named as the record's key, for the
processes watching it (see _redis_watch.py).

The ``{<rid>}`` hash tag puts a record and its lock in one cluster slot. Compare-and-set is a Lua
script, so the version check and the write are one step on the server. The version is also sealed
inside the envelope: a version field edited by hand does not decrypt.

Every redis-py error, and any call that takes longer than ``timeout``, becomes a StoreError here.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Collection, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, Union

import anyio
import anyio.to_thread
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from deviceflow._checks import flag, positive_finite, printable_text
from deviceflow._crypto import KdfParams, KeyMaterial, Payload, Sealer, key_arg
from deviceflow.exceptions import ConflictError, DecryptionError, LockTimeoutError, StoreError

from ._leases import check_lock_args, check_ttl
from ._protocol import KeyWatch, Lease, Versioned
from ._redis_watch import Subscriber
from ._turns import Turns, TurnTimeout, deadline

__all__ = ["RedisStore"]

logger = logging.getLogger("deviceflow.stores")

RedisClient = Union["Redis", "RedisCluster"]

_T = TypeVar("_T")

# KEYS[1] record; ARGV: expected version ('' = must be absent), new version, envelope,
# ttl in ms ('' = none). Returns {1, new version} or {0, stored version or ''}. A write is
# published on the record's channel (its key's name) for the watches (_redis_watch.py); pcall,
# because a user without rights on channels (Redis 7 ACLs give none by default) must still write.
_PUT = """
local stored = redis.call('HGET', KEYS[1], 'v')
if (ARGV[1] == '' and stored) or (ARGV[1] ~= '' and stored ~= ARGV[1]) then
  return {0, stored or ''}
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
if ARGV[4] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.pcall('PUBLISH', KEYS[1], ARGV[2])
return {1, ARGV[2]}
"""

# KEYS[1] record; ARGV[1] expected version ('' = any). Returns {1|0|-1 (conflict), stored}.
_DELETE = """
local stored = redis.call('HGET', KEYS[1], 'v')
if not stored then return {0, ''} end
if ARGV[1] ~= '' and stored ~= ARGV[1] then return {-1, stored} end
redis.call('DEL', KEYS[1])
redis.pcall('PUBLISH', KEYS[1], '0')
return {1, stored}
"""

# KEYS[1] record; ARGV: version, envelope read, new envelope. Keeps version and ttl.
_RESEAL = """
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] and redis.call('HGET', KEYS[1], 'd') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'd', ARGV[3])
  return 1
end
return 0
"""

# KEYS[1] scrypt parameters; ARGV: the document read, the new one. Replaces it only if unchanged.
_RESEAL_KDF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] lock; ARGV[1] this acquisition's token. Deletes the lock only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_FIELDS = ("v", "d")  # of a record hash, as HMGET asks for them


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _version(field: bytes) -> int:
    """The version field of a record; -1 (matches nothing) when it is not a number."""
    return int(field) if field.isdigit() else -1


def _policies(reply: object) -> set[str]:
    """Every maxmemory-policy value in a CONFIG GET reply (a cluster answers per node)."""
    found: set[str] = set()
    if isinstance(reply, dict):
        for name, value in reply.items():
            if isinstance(value, dict):
                found |= _policies(value)
            elif name in ("maxmemory-policy", b"maxmemory-policy"):
                found.add(value.decode() if isinstance(value, bytes) else str(value))
    return found


#: The turns of each connection pool: stores sharing a client share its connections.
_POOL_TURNS: weakref.WeakKeyDictionary[object, Turns] = weakref.WeakKeyDictionary()


def _turns_for(client: RedisClient, timeout: float) -> Turns | None:
    """Turns at ``client``'s pool, one fewer than its connections: the watches' subscription
    holds one. None for a cluster, whose pools are per node. Stores on one pool share its
    turns, with the shortest of their timeouts as the queue's patience."""
    pool = getattr(client, "connection_pool", None)
    size = getattr(pool, "max_connections", None)
    if pool is None or isinstance(client, RedisCluster) or not isinstance(size, int):
        return None
    turns = _POOL_TURNS.get(pool)
    if turns is None:
        turns = _POOL_TURNS[pool] = Turns(max(1, size - 1), patience=timeout)
    else:
        turns.patience = min(turns.patience, timeout)
    return turns


class RedisStore:
    """A :class:`~deviceflow.stores.TokenStore` in Redis, shared by processes and machines.

    ``client`` is a ``redis.asyncio.Redis``, a ``redis.asyncio.RedisCluster``, a client from
    ``redis.asyncio.Sentinel.master_for()``, or a ``redis://`` URL (``cluster=True`` for a
    cluster URL). A client passed in stays the caller's to close; one made from a URL is closed
    by :meth:`aclose`. Clients must keep ``decode_responses=False``; a client for many
    concurrent callers wants a ``BlockingConnectionPool`` (what a URL gets), as redis-py's
    default pool fails once 100 connections are busy.

    ``key`` is as for :class:`~deviceflow.stores.EncryptedFileStore`; values are sealed in the
    same envelope. ``prefix`` starts every Redis key. ``timeout`` bounds every operation (and the
    sockets of a client made from a URL): a Redis that is down or stuck gives a StoreError after
    at most that long, never a hang. It measures Redis, not the queue: calls beyond the pool's
    connections wait their turn (first come, first served) for as long as Redis keeps answering
    others, and fail only once it has answered nothing for ``timeout`` (a cluster's per-node
    pools are left to redis-py). Bound a caller's whole wait with its own timeout.

    Redis must not evict keys: on first use the store logs a warning if ``maxmemory-policy`` is
    not ``noeviction`` (where CONFIG is forbidden, as on many managed services, it cannot check).
    Give ``put(ttl=...)`` the refresh token's lifetime so that dead grants expire.

    >>> from deviceflow.stores import generate_key
    >>> store = RedisStore("redis://localhost:6379/0", key=generate_key())
    """

    def __init__(
        self,
        client: str | RedisClient,
        *,
        key: KeyMaterial,
        prefix: str = "deviceflow:",
        namespace: str = "deviceflow",
        timeout: float = 5.0,
        cluster: bool = False,
    ) -> None:
        keys = key_arg(key)
        prefix = printable_text("prefix", prefix)
        namespace = printable_text("namespace", namespace)
        timeout = positive_finite("timeout", timeout)
        flag("cluster", cluster)
        if isinstance(client, str):
            printable_text("client", client)
        elif not isinstance(client, (Redis, RedisCluster)):
            raise TypeError(
                "client must be a redis:// URL, a redis.asyncio.Redis or a RedisCluster, "
                f"not {type(client).__name__}"
            )
        self._owned = isinstance(client, str)
        if isinstance(client, str):
            # The store's own deadline (with its grace, _turns.py) bounds each call; redis-py's
            # read timeout, which has no grace for a busy loop, is only a backstop behind it.
            sockets = {"socket_timeout": 2 * timeout, "socket_connect_timeout": timeout}
            try:
                if cluster:
                    client = RedisCluster.from_url(client, **sockets)
                else:
                    # A blocking pool: the store's turns (_turns.py) keep one connection free
                    # for the watches' subscription, and the pool lends it when needed.
                    pool = BlockingConnectionPool.from_url(client, timeout=timeout, **sockets)
                    client = Redis.from_pool(pool)
            except (ValueError, TypeError, RedisClusterException):
                # Not redis-py's message: it could quote the URL, password and all.
                raise ValueError(
                    "client is not a usable Redis URL (redis://[:password@]host[:port][/db], "
                    "rediss://... or unix://...)"
                ) from None
        if client.get_encoder().decode_responses:
            raise ValueError("RedisStore needs a Redis client with decode_responses=False")
        self._client: RedisClient = client
        self._keys = keys
        self._prefix = prefix
        self._namespace = namespace
        self._timeout = timeout
        self._turns = _turns_for(client, timeout)
        self._sealer: Sealer | None = None
        self._setup_lock = anyio.Lock()
        self._subscriber: Subscriber | None = None
        self._put_script = client.register_script(_PUT)
        self._delete_script = client.register_script(_DELETE)
        self._reseal_script = client.register_script(_RESEAL)
        self._release_script = client.register_script(_RELEASE)
        self._reseal_kdf_script = client.register_script(_RESEAL_KDF)

    def __repr__(self) -> str:
        kind = type(self._client).__name__
        return f"RedisStore(<{kind}>, prefix={self._prefix!r}, namespace={self._namespace!r})"

    async def _call(self, what: str, command: Awaitable[_T]) -> _T:
        """Await one redis-py command within the timeout, once it has a connection's turn
        (see _turns.py); its errors become StoreError."""
        turns = self._turns
        if turns is not None:
            try:
                await turns.take()
            except BaseException as exc:
                if isinstance(command, Coroutine):
                    command.close()  # never started
                if isinstance(exc, TurnTimeout):
                    raise self._no_answer(what) from None
                raise
        try:
            async with deadline(self._timeout):
                reply = await command
        except TimeoutError:
            raise self._no_answer(what) from None
        except ResponseError as exc:  # an answer, if not the one hoped for
            if turns is not None:
                turns.answered()
            raise self._failed(what, exc) from exc
        except (RedisError, RedisClusterException) as exc:
            raise self._failed(what, exc) from exc
        finally:
            if turns is not None:
                turns.give()
        if turns is not None:
            turns.answered()
        return reply

    @asynccontextmanager
    async def _edge(self, what: str) -> AsyncIterator[None]:
        """:meth:`_call` for a block of several commands (set-up and maintenance), which holds
        one turn throughout."""
        turns = self._turns
        if turns is not None:
            try:
                await turns.take()
            except TurnTimeout:
                raise self._no_answer(what) from None
        try:
            async with deadline(self._timeout):
                yield
            if turns is not None:
                turns.answered()
        except TimeoutError:
            raise self._no_answer(what) from None
        except (RedisError, RedisClusterException) as exc:
            raise self._failed(what, exc) from exc
        finally:
            if turns is not None:
                turns.give()

    def _no_answer(self, what: str) -> StoreError:
        return StoreError(f"Redis did not answer ({what}) within {self._timeout} s: is it up?")

    def _failed(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"Redis failed ({what}): {type(exc).__name__}: {exc}")

    async def _script(self, script: AsyncScript, key: str, *args: object) -> Any:
        """EVALSHA of ``script`` on ``key`` (what ``script(keys=..., args=...)`` does, minus
        its per-call imports and type checks); loads the script if the server lost it."""
        try:
            return await self._client.evalsha(script.sha, 1, key, *args)  # type: ignore[arg-type]
        except NoScriptError:  # a restarted or flushed server: load it, as redis-py would
            script.sha = await self._client.script_load(script.script)
            return await self._client.evalsha(script.sha, 1, key, *args)  # type: ignore[arg-type]

    def _record_key(self, rid: str) -> str:
        return f"{self._prefix}{{{rid}}}"

    # -- set-up --------------------------------------------------------------------------------

    async def _ready(self) -> Sealer:
        if self._sealer is None:
            async with self._setup_lock:  # the first callers wait for one set-up
                if self._sealer is None:
                    await self._check_eviction()
                    params = await self._kdf_params() if self._keys.needs_kdf else None
                    keys = await anyio.to_thread.run_sync(self._keys.resolve, params)
                    self._sealer = Sealer(keys, self._namespace)
        return self._sealer

    async def _check_eviction(self) -> None:
        async with self._edge("CONFIG GET maxmemory-policy"):
            try:
                if isinstance(self._client, RedisCluster):
                    reply = await self._client.config_get(
                        "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
                    )
                else:
                    reply = await self._client.config_get("maxmemory-policy")
            except ResponseError as exc:  # CONFIG forbidden or renamed (managed Redis)
                logger.info(
                    "could not check Redis maxmemory-policy (%s); make sure it is noeviction",
                    type(exc).__name__,
                )
                return
        evicting = sorted(p for p in _policies(reply) if p != "noeviction")
        if evicting:
            logger.warning(
                "Redis maxmemory-policy is %s: under memory pressure Redis may evict stored "
                "tokens, and users would have to sign in again. Set maxmemory-policy noeviction.",
                ", ".join(evicting),
            )

    async def _kdf_params(self) -> KdfParams:
        name = f"{self._prefix}kdf"
        async with self._edge("read scrypt parameters"):
            stored = await self._client.get(name)
        if stored is None:
            fresh = await anyio.to_thread.run_sync(self._keys.new_kdf_params)
            async with self._edge("write scrypt parameters"):
                await self._client.set(name, fresh.to_json(), nx=True)  # the first writer wins
                stored = await self._client.get(name)
        if not isinstance(stored, bytes):
            raise StoreError(f"Redis key {name} vanished or is not bytes")
        return KdfParams.from_json(stored)

    async def _recheck_kdf(self) -> None:
        """After a rotation, bind the stored key check to the newest passphrase."""
        name = f"{self._prefix}kdf"
        async with self._edge("read scrypt parameters"):
            stored = await self._client.get(name)
        if not isinstance(stored, bytes):
            return
        params = KdfParams.from_json(stored)
        rechecked = await anyio.to_thread.run_sync(self._keys.rechecked, params)
        if rechecked is not None:
            async with self._edge("write scrypt parameters"):
                await self._reseal_kdf_script(keys=[name], args=[stored, rechecked.to_json()])

    # -- records -------------------------------------------------------------------------------

    def _decode(self, sealer: Sealer, rid: str, key: str, reply: Sequence[Any]) -> Versioned | None:
        version, data = reply
        if version is None or data is None:
            return None
        record = sealer.open(rid, data, name=repr(key), version=_version(version))
        return Versioned(record.value, record.version)

    async def get(self, key: str) -> Versioned | None:
        """The value of ``key`` and its version, or None (DecryptionError if unreadable)."""
        sealer = self._sealer or await self._ready()
        rid = sealer.record_id(key)
        reply = await self._call("get", self._client.hmget(self._record_key(rid), _FIELDS))
        return self._decode(sealer, rid, key, reply)

    async def get_many(self, keys: Sequence[str]) -> list[Versioned | None]:
        """The values of ``keys`` in one pipelined round trip (per cluster node)."""
        sealer = self._sealer or await self._ready()
        rids = [sealer.record_id(key) for key in keys]
        async with self._edge("get_many"):
            pipe = self._client.pipeline(transaction=False)
            for rid in rids:
                pipe.hmget(self._record_key(rid), _FIELDS)
            replies = await pipe.execute()
        return [
            self._decode(sealer, rid, key, reply)
            for rid, key, reply in zip(rids, keys, replies, strict=True)
        ]

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None,
        ttl: float | None = None,
    ) -> int:
        """Write ``value`` if ``key`` is at ``expected_version``; return the new version.

        ``ttl`` (seconds) becomes the Redis key's expiry; None keeps the record for good.
        """
        check_ttl(ttl)
        sealer = self._sealer or await self._ready()
        rid = sealer.record_id(key)
        version = (expected_version or 0) + 1
        envelope = sealer.seal(rid, Payload(version, None, bytes(value)))
        ttl_ms = "" if ttl is None else max(1, math.ceil(ttl * 1000))
        expected = "" if expected_version is None else expected_version
        ok, stored = await self._call(
            "put",
            self._script(
                self._put_script, self._record_key(rid), expected, version, envelope, ttl_ms
            ),
        )
        if not int(ok):
            current = stored.decode() if stored else None
            raise ConflictError(
                f"{key!r} is at version {current}, not {expected_version}: re-read and retry"
            )
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Remove ``key`` (only at ``expected_version`` when given); True if it was there."""
        sealer = self._sealer or await self._ready()
        rid = sealer.record_id(key)
        expected = "" if expected_version is None else expected_version
        outcome, stored = await self._call(
            "delete", self._script(self._delete_script, self._record_key(rid), expected)
        )
        if int(outcome) == -1:
            raise ConflictError(
                f"{key!r} is at version {stored.decode()}, not {expected_version}: not deleted"
            )
        return bool(int(outcome))

    # -- locks ---------------------------------------------------------------------------------

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]:
        """Hold ``key``'s lock for at most ``ttl`` s; LockTimeoutError after ``wait`` s.

        The lock excludes every process using this Redis. A holder that dies keeps it until the
        ttl runs out, so keep ttl a little above the longest work done under the lock.
        """
        check_lock_args(ttl, wait)
        return self._lock(key, ttl, wait)

    @asynccontextmanager
    async def _lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[Lease]:
        sealer = self._sealer or await self._ready()
        name = self._record_key(sealer.record_id(key)) + ":lock"
        token = secrets.token_urlsafe(16)
        ttl_ms = max(1, math.ceil(ttl * 1000))
        deadline = time.monotonic() + wait
        delay = 0.002
        in_doubt = False
        try:
            while True:
                in_doubt = True  # a SET cut short may still have reached Redis
                acquired = await self._call(
                    "lock", self._client.set(name, token, nx=True, px=ttl_ms)
                )
                in_doubt = False
                if acquired:
                    break
                now = time.monotonic()
                if now >= deadline:
                    raise LockTimeoutError(
                        f"the lock of {key!r} is held by someone else; gave up waiting"
                    )
                jitter = random.uniform(0.5, 1.5)  # noqa: S311 - spreads retries, not a secret
                await anyio.sleep(min(delay * jitter, deadline - now))
                delay = min(delay * 2, 0.1)
        except BaseException:
            if in_doubt:
                await self._release(name, token)
            raise
        try:
            yield Lease(key=key, owner=token, ttl=ttl)
        finally:
            await self._release(name, token)

    async def _release(self, name: str, token: str) -> None:
        # Never raises: a lock that cannot be released now expires with its ttl.
        with anyio.CancelScope(shield=True):
            try:
                await self._call("unlock", self._script(self._release_script, name, token))
            except StoreError as exc:
                logger.warning("could not release a Redis lock; it expires with its ttl: %s", exc)

    # -- watches -------------------------------------------------------------------------------

    def watch(self, keys: Collection[str]) -> AbstractAsyncContextManager[KeyWatch]:
        """Report every put and delete of ``keys``, by any client of this Redis, while the block
        runs (see :class:`~deviceflow.stores.WatchableStore`).

        Writes are published on Redis pub/sub; every watch of one store shares one connection
        (taken from the client's pool while anyone watches), which is opened again if it fails.
        """
        if self._subscriber is None:
            self._subscriber = Subscriber(
                self._client, f"{self._prefix}watch", self._timeout, self._channels
            )
        return self._subscriber.watch(keys)

    async def _channels(self, keys: Collection[str]) -> dict[str, str]:
        """The channel of each store key: its record's Redis key (what its writes publish on)."""
        sealer = self._sealer or await self._ready()
        return {key: self._record_key(sealer.record_id(key)) for key in keys}

    # -- maintenance ---------------------------------------------------------------------------

    async def rotate(self) -> int:
        """Re-encrypt every record not sealed with the newest key; return how many were.

        Records that cannot be decrypted are left as they are and reported together in one
        DecryptionError once the others are done.
        """
        sealer = self._sealer or await self._ready()
        if self._keys.needs_kdf:
            await self._recheck_kdf()
        start = len(self._prefix) + 1
        pattern = _glob_escape(self._prefix) + "{*}"
        names = self._client.scan_iter(match=pattern, count=1000)
        rotated, failed = 0, []
        while True:
            async with self._edge("rotate"):
                try:
                    name = await anext(names)
                except StopAsyncIteration:
                    break
                version, data = await self._client.hmget(name, _FIELDS)
            if not (isinstance(data, bytes) and isinstance(version, bytes)):
                continue  # gone since the scan
            if sealer.is_current(data):
                continue
            rid = name.decode()[start:-1]
            try:
                record = sealer.open(rid, data, name=f"record {rid}", version=_version(version))
            except DecryptionError:
                failed.append(rid)
                continue
            resealed = sealer.seal(rid, record)
            async with self._edge("rotate"):
                done = await self._reseal_script(keys=[name], args=[version, data, resealed])
            rotated += int(done)
        if failed:
            raise DecryptionError(
                f"{len(failed)} record(s) could not be re-encrypted: wrong key or tampered data. "
                f"They were left as they are: {', '.join(sorted(failed)[:5])}"
            )
        return rotated

    async def aclose(self) -> None:
        """Stop the watches' subscription; close the client if the store made it from a URL."""
        if self._subscriber is not None:
            await self._subscriber.aclose()
            self._subscriber = None
        if self._owned:
            await self._client.aclose()
