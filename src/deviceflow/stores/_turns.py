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
    """``slots`` turns, handed out first come, first served (see the module doc).

    Queued callers wait on a future each, with no timer of their own: one watchdog, armed while
    anyone queues, fires when the longest-waiting caller would have waited ``patience`` with no
    answer, and fails every caller for whom that is so. A queue of 100,000 costs one timer.
    """

    __slots__ = ("_answered", "_free", "_patience", "_waiters", "_watchdog")

    def __init__(self, slots: int, patience: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._free = slots
        self._patience = patience
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()  # (since, future)
        self._answered = time.monotonic()
        self._watchdog: asyncio.TimerHandle | None = None

    def answered(self) -> None:
        """Note that the server just answered a command (a reply, even an error reply)."""
        self._answered = time.monotonic()

    async def take(self) -> None:
        """Wait for a turn; :meth:`give` it back when done. TurnTimeout as the module doc says."""
        if self._free and not self._waiters:
            self._free -= 1  # the common case: no queue, no future, no timer
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((time.monotonic(), waiter))
        if self._watchdog is None:
            self._arm()
        try:
            await waiter
        except BaseException:
            # Cancelled: the future was cancelled with it, unless a turn (or a TurnTimeout) had
            # already been handed over in the same step; a turn is passed on, not lost.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give()
            raise

    def give(self) -> None:
        """Return a turn: to the longest-waiting caller, or to the free ones."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _arm(self) -> None:
        since = self._waiters[0][0]
        due = max(since, self._answered) + self._patience
        delay = max(0.0, due - time.monotonic())
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        self._watchdog = None
        now = time.monotonic()
        silent = now - self._answered >= self._patience
        while self._waiters:
            since, waiter = self._waiters[0]
            if waiter.done():  # cancelled while queued
                self._waiters.popleft()
            elif silent and now - since >= self._patience:
                self._waiters.popleft()
                waiter.set_exception(
                    TurnTimeout(
                        f"the server answered nothing for {self._patience} s "
                        "while this call waited for a connection"
                    )
                )
            else:
                break
        if self._waiters:
            self._arm()
