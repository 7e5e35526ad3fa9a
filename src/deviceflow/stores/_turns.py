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

:func:`deadline` bounds a command once it has its turn. It is ``asyncio.timeout`` with one turn
of the event loop's grace: a loop kept busy past a command's deadline (100,000 callers starting
at once keep it busy for seconds) would otherwise cancel the command in the same step as it
reads Redis's reply, which came in a millisecond and has waited in the socket since.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType

import anyio

__all__ = ["TurnTimeout", "Turns", "deadline"]


class TurnTimeout(Exception):
    """The server answered nothing for ``patience`` seconds while this caller queued."""


class Turns:
    """``slots`` turns, handed out first come, first served (see the module doc).

    Queued callers wait on a future each, with no timer of their own: one watchdog, armed while
    anyone queues, fires when the longest-waiting caller would have waited ``patience`` with no
    answer, and fails every caller for whom that is so. A queue of 100,000 costs one timer.
    """

    __slots__ = ("_answered", "_armed_on", "_free", "_waiters", "_watchdog", "patience")

    def __init__(self, slots: int, patience: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._free = slots
        self.patience = patience
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()  # (since, future)
        self._answered = time.monotonic()
        self._watchdog: asyncio.Handle | None = None
        self._armed_on: asyncio.AbstractEventLoop | None = None  # the watchdog's loop

    def answered(self) -> None:
        """Note that the server just answered a command (a reply, even an error reply)."""
        self._answered = time.monotonic()

    async def take(self) -> None:
        """Wait for a turn; :meth:`give` it back when done. TurnTimeout as the module doc says."""
        if self._free and not self._waiters:
            self._free -= 1  # the common case: no queue, no future, no timer
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((time.monotonic(), waiter))
        if self._watchdog is None or self._armed_on is not loop:  # (a store used on a new loop)
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
        due = max(since, self._answered) + self.patience
        delay = max(0.0, due - time.monotonic())
        self._armed_on = asyncio.get_running_loop()
        self._watchdog = self._armed_on.call_later(delay, self._due)

    def _due(self) -> None:
        # One turn of grace, as deadline() gives: replies read in this step (after the loop was
        # busy past the due time) wake their tasks, which note the answer, before the check.
        self._watchdog = asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._watchdog = None
        now = time.monotonic()
        silent = now - self._answered >= self.patience
        while self._waiters:
            since, waiter = self._waiters[0]
            if waiter.done():  # cancelled while queued
                self._waiters.popleft()
            elif silent and now - since >= self.patience:
                self._waiters.popleft()
                waiter.set_exception(
                    TurnTimeout(
                        f"the server answered nothing for {self.patience} s "
                        "while this call waited for a connection"
                    )
                )
            else:
                break
        if self._waiters:
            self._arm()


if sys.version_info >= (3, 11):

    class _Deadline:
        """``async with``: TimeoutError once ``delay`` has passed and one more turn of the loop has
        run (see the module doc). Python 3.11 and newer (it needs ``Task.uncancel``)."""

        __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_task")

        def __init__(self, delay: float) -> None:
            self._delay = delay
            self._expired = False

        async def __aenter__(self) -> None:
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - an async with always runs in a task
                raise RuntimeError("deadline() must be used inside a task")
            self._task = task
            self._cancelling = task.cancelling()  # cancellations requested before this block
            self._handle: asyncio.Handle = asyncio.get_running_loop().call_later(
                self._delay, self._expire
            )

        def _expire(self) -> None:
            # What came in while the loop was busy was read in this same step and has woken its
            # task for the next one: cancel after that, not before.
            self._handle = asyncio.get_running_loop().call_soon(self._cancel)

        def _cancel(self) -> None:
            self._expired = True
            self._task.cancel()

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            traceback: TracebackType | None,
        ) -> None:
            self._handle.cancel()
            if not self._expired:
                return
            # As asyncio.timeout: take our cancellation back whatever the block did with it,
            # and it is a timeout unless someone else asked to cancel since the block began
            # (a task already being cancelled, as in a shielded clean-up, still times out).
            ours = self._task.uncancel() <= self._cancelling
            if ours and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
                raise TimeoutError from exc

    def deadline(delay: float) -> AbstractAsyncContextManager[None]:
        """Raise TimeoutError in the block once ``delay`` s have passed (see the module doc)."""
        return _Deadline(delay)

else:  # pragma: no cover - Python 3.10

    def deadline(delay: float) -> AbstractAsyncContextManager[None]:
        """Raise TimeoutError in the block once ``delay`` s have passed (no grace on 3.10)."""
        return _fail_after(delay)

    @asynccontextmanager
    async def _fail_after(delay: float) -> AsyncIterator[None]:
        with anyio.fail_after(delay):
            yield
