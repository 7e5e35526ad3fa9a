"""Turns at a pool of connections, so that a store's timeout measures the server, not the queue.

A burst of callers (a restart of 100,000 accounts, say) is more than a pool of 50 connections
serves at once. redis-py's blocking pool makes the rest wait for a connection, and that wait
used to count against the store's per-call ``timeout``: a healthy Redis, answering every
command in a millisecond, failed callers that had only waited their turn.

:class:`Turns` queues callers for one of ``slots`` turns (FIFO) before their command's own
timeout starts. A queued caller waits as long as the server keeps answering (any command that
gets a reply counts); it gives up, with :class:`TurnTimeout`, once the server has answered
nothing for ``patience`` seconds while it waited. A Redis that is down or stuck still fails
every caller within about ``patience``, however long the queue; a busy one fails none. The
caller's own deadline (``get_token(timeout=...)``) still bounds the whole wait by cancelling it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

__all__ = ["TurnTimeout", "Turns"]


class TurnTimeout(Exception):
    """The server answered nothing for ``patience`` seconds while this caller queued."""


class Turns:
    """``slots`` turns, handed out first come, first served (see the module doc)."""

    __slots__ = ("_answered", "_free", "_patience", "_waiters")

    def __init__(self, slots: int, patience: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._free = slots
        self._patience = patience
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._answered = time.monotonic()

    def answered(self) -> None:
        """Note that the server just answered a command (a reply, even an error reply)."""
        self._answered = time.monotonic()

    async def take(self) -> None:
        """Wait for a turn; :meth:`give` it back when done. TurnTimeout as the module doc says."""
        if self._free and not self._waiters:
            self._free -= 1  # the common case: no queue, no future, no timer
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        since = time.monotonic()
        try:
            while True:
                left = max(since, self._answered) + self._patience - time.monotonic()
                if left <= 0:
                    raise TurnTimeout(
                        f"the server answered nothing for {self._patience} s "
                        "while this call waited for a connection"
                    )
                # asyncio.wait, not a timeout around the future: the future must survive a
                # timed-out wait, so that the caller keeps its place in the queue.
                await asyncio.wait((waiter,), timeout=left)
                if waiter.done():
                    return
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a turn in the same step as the cancellation: pass it on
            else:
                waiter.cancel()  # give() skips it; removing it here would cost O(queue)
            raise

    def give(self) -> None:
        """Return a turn: to the longest-waiting caller, or to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
