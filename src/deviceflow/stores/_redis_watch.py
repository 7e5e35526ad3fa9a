"""RedisStore's watches: one pub/sub connection per store, shared by every watched key.

Every write of a record (the compare-and-set put and the delete, both Lua scripts) publishes
the record's new version on a channel named as the record's Redis key, in the same script: a
write and its report are one step on the server. A store that watches keys subscribes to their
channels on one connection of its own and wakes the local watches (_watch.py) when a message
comes.

Nothing is lost silently:

- a watch is entered only once Redis has confirmed the subscriptions of its keys (or the
  confirmation did not come within the store's timeout: the watch starts not ``live``), so a
  write after that is heard, and one before it is seen by the read that follows;
- every confirmation of a subscription also reports its key as changed: after a reconnection
  (redis-py's own, or ours), a write made while the connection was down is seen by the read
  the report causes;
- a connection that fails is opened again (0.1 s, doubling to 5 s); meanwhile the watches are
  not ``live`` and their waiters poll. A Redis user without rights on channels (Redis 7 ACLs
  grant none by default) still writes (the scripts publish with ``pcall``); its watches are
  never live, so waiters poll, and the store says so once;
- a connection silent for ``KEEPALIVE`` seconds is sent a PING, and one that does not answer
  within the store's timeout is dropped and opened again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Union

import anyio
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoPermissionError

from ._protocol import KeyWatch
from ._watch import LocalWatch, Watchers

__all__ = ["KEEPALIVE", "Subscriber"]

logger = logging.getLogger("deviceflow.stores")

RedisClient = Union["Redis", "RedisCluster"]

#: A subscription silent this long (seconds) is sent a PING.
KEEPALIVE = 15.0
#: Channels per SUBSCRIBE or UNSUBSCRIBE command.
_CHUNK = 1000
#: Waits before opening a failed subscription again: the first, and the longest.
_RETRY_FIRST, _RETRY_MAX = 0.1, 5.0
#: The wait before trying again when Redis refused the subscription (no rights on channels).
_RETRY_DENIED = 60.0


class Subscriber:
    """The pub/sub side of one RedisStore: channels subscribed while someone watches them."""

    def __init__(
        self,
        client: RedisClient,
        home: str,
        timeout: float,
        channels_of: Callable[[Collection[str]], Awaitable[Mapping[str, str]]],
    ) -> None:
        self._client = client
        self._channels_of = channels_of  # {store key: its channel's name}
        self._home = home.encode()  # always subscribed: a connection with no channel is idle
        self._timeout = timeout
        self._watchers = Watchers()
        self._keys: dict[bytes, str] = {}  # channel -> store key, while watched
        # Watched channels not (yet) confirmed on the current connection: empty while all is
        # well, so that 100,000 watched channels cost no set of their own.
        self._unconfirmed: set[bytes] = set()
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        self._joins: set[bytes] = set()  # to SUBSCRIBE, UNSUBSCRIBE: sent by one task
        self._leaves: set[bytes] = set()
        self._sender: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._live = False

    @property
    def live(self) -> bool:
        """True while the subscription connection is up."""
        return self._live

    def _set_live(self, live: bool) -> None:
        if live != self._live:
            self._live = live
            self._watchers.nudge_all()  # waiters choose between waiting and polling again

    def watch(self, keys: Collection[str]) -> AbstractAsyncContextManager[KeyWatch]:
        """A watch of store ``keys``, entered once their channels are subscribed."""
        return _ChannelWatch(self, keys)

    async def _enter(self, watch: _ChannelWatch) -> None:
        names = await self._channels_of(watch.keys)
        watch.channels = tuple(names[key].encode() for key in watch.keys)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        wanted = []
        for key, channel in zip(watch.keys, watch.channels, strict=True):
            if key not in self._watchers:  # the first watch of the key
                self._keys[channel] = key
                self._unconfirmed.add(channel)
                self._leaves.discard(channel)
                self._joins.add(channel)
            if channel in self._unconfirmed:
                wanted.append(self._confirmation(channel))
        self._send_soon()
        self._watchers.add(watch)
        if wanted:
            try:
                # Not cancelled by a timeout or a cancellation: other watches share them.
                await asyncio.wait(wanted, timeout=self._timeout)
            except BaseException:
                self._leave(watch)
                raise
        watch.reset()  # reports from before the entry: the caller reads anyway

    def _leave(self, watch: _ChannelWatch) -> None:
        self._watchers.discard(watch)
        for key, channel in zip(watch.keys, watch.channels, strict=True):
            if key not in self._watchers:  # the last watch of the key has left
                del self._keys[channel]
                self._confirming.pop(channel, None)
                self._unconfirmed.discard(channel)
                if channel in self._joins:
                    self._joins.discard(channel)  # never sent
                else:
                    self._leaves.add(channel)
        self._send_soon()

    def _subscribed(self, channels: tuple[bytes, ...]) -> bool:
        """True while ``channels`` are subscribed, on a connection that is up."""
        return self._live and not any(channel in self._unconfirmed for channel in channels)

    def _confirmation(self, channel: bytes) -> asyncio.Future[None]:
        future = self._confirming.get(channel)
        if future is None:
            future = self._confirming[channel] = asyncio.get_running_loop().create_future()
        return future

    def _send_soon(self) -> None:
        """Send the SUBSCRIBE and UNSUBSCRIBE commands due, from one task: a burst of watches
        entered together is subscribed in a few commands."""
        if (self._joins or self._leaves) and (self._sender is None or self._sender.done()):
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        while self._pubsub is not None and (self._joins or self._leaves):
            pubsub = self._pubsub
            leaving = bool(self._leaves)
            chunk = _take(self._leaves if leaving else self._joins)
            try:
                if leaving:
                    await pubsub.unsubscribe(*chunk)
                else:
                    await pubsub.subscribe(*chunk)
            except Exception as exc:  # the command may be cut anywhere: start a new connection
                logger.info("a Redis SUBSCRIBE failed (%s: %s)", type(exc).__name__, exc)
                old = self._task
                if old is not None:
                    old.cancel()  # a new connection subscribes every watched channel
                    self._task = asyncio.ensure_future(self._run(after=old))
                return

    async def _run(self, after: asyncio.Task[None] | None = None) -> None:
        if after is not None:
            await asyncio.wait([after])  # the connection it held is closed
        delay = _RETRY_FIRST
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._home)
                self._pubsub = pubsub
                self._joins |= self._keys.keys()
                self._send_soon()
                delay = _RETRY_FIRST
                await self._read(pubsub)
            except NoPermissionError:
                # Redis 7 ACLs give a user no channels unless granted (&pattern): waiters poll.
                if delay < _RETRY_DENIED:
                    logger.warning(
                        "this Redis user may not subscribe to channels, so processes waiting "
                        "for another's device flow poll the store every few seconds; grant it "
                        "the store's channels (ACL &%s*) to have them woken instead",
                        self._home.decode().removesuffix("watch"),
                    )
                delay = _RETRY_DENIED
            except Exception as exc:  # whatever failed: log it, open a new connection
                logger.info(
                    "the Redis subscription for waiting processes failed (%s: %s); they poll "
                    "the store until it is back",
                    type(exc).__name__,
                    exc,
                )
            finally:
                self._pubsub = None
                self._unconfirmed = set(self._keys)
                self._set_live(False)
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                    await pubsub.aclose()
            await anyio.sleep(delay)
            if delay < _RETRY_DENIED:
                delay = min(delay * 2, _RETRY_MAX)

    async def _read(self, pubsub: Any) -> None:
        """Hand every message to the watches, until the connection fails."""
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=self._timeout if pinged else KEEPALIVE)
            if message is None:
                if pinged:
                    raise TimeoutError(f"no answer to PING within {self._timeout} s")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False  # anything heard shows the connection lives
            kind, channel = message["type"], message["channel"]
            if kind == "message":
                key = self._keys.get(channel)
                if key is not None:
                    self._watchers.notify(key)
            elif kind == "subscribe":
                self._on_subscribed(channel)

    def _on_subscribed(self, channel: bytes) -> None:
        if channel == self._home:
            self._set_live(True)
            return
        key = self._keys.get(channel)
        if key is None:  # no longer watched: the UNSUBSCRIBE is on its way
            return
        self._unconfirmed.discard(channel)
        future = self._confirming.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)
        # A write may have landed while the channel was not subscribed (a reconnection):
        # its watchers read the key again.
        self._watchers.notify(key)

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        for task in (self._task, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._sender = None


class _ChannelWatch(LocalWatch):
    """A watch of store keys, live while their channels are subscribed (Subscriber.watch())."""

    __slots__ = ("_subscriber", "channels")

    def __init__(self, subscriber: Subscriber, keys: Collection[str]) -> None:
        super().__init__(subscriber._watchers, keys)
        self._subscriber = subscriber
        self.channels: tuple[bytes, ...] = ()  # in the order of ``keys``, once entered

    async def __aenter__(self) -> _ChannelWatch:
        await self._subscriber._enter(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._subscriber._leave(self)

    @property
    def live(self) -> bool:
        """True while this watch's channels are subscribed, on a connection that is up."""
        return self._subscriber._subscribed(self.channels)


def _take(channels: set[bytes]) -> list[bytes]:
    chunk: list[bytes] = []
    while channels and len(chunk) < _CHUNK:
        chunk.append(channels.pop())
    return chunk
