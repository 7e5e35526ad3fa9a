"""Single-flight: one task per key does the work, and every caller of that key shares it.

Each caller waits on a future of its own, so a caller that is cancelled or times out drops its
future and leaves the work running for the others; the task settles the futures itself as soon
as the outcome is known (no shield, no guard task). A flight started with no caller (a
background refresh) reports its failure to ``on_background_error`` instead.

aclose() cancels every flight except those inside :meth:`Flights.finishing` (work that must not
stop halfway, such as a refresh whose request has left), waits for them all, and ends the
callers of any flight that never got to run.

This module imports nothing of the package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

import attrs

__all__ = ["Flights"]

T = TypeVar("T")


def _closed_error() -> RuntimeError:
    return RuntimeError("the DeviceFlowClient was closed during this call")


@attrs.define(kw_only=True)
class _Flight(Generic[T]):
    background: bool
    task: asyncio.Task[None] | None = None
    waiters: set[asyncio.Future[T]] = attrs.Factory(set)
    settled: bool = False


class _Finishing:
    """Flights.finishing(): a class, not a generator, as it runs on every refresh."""

    __slots__ = ("_key", "_keys")

    def __init__(self, keys: set[str], key: str) -> None:
        self._keys, self._key = keys, key

    def __enter__(self) -> None:
        self._keys.add(self._key)

    def __exit__(self, *exc_info: object) -> None:
        self._keys.discard(self._key)


class Flights(Generic[T]):
    """The running flights of one owner, by key."""

    def __init__(self, on_background_error: Callable[[str, Exception], None]) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        self._finishing: set[str] = set()
        self._on_background_error = on_background_error
        self.closed = False

    async def join(self, key: str, work: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """The outcome of ``key``'s running flight, or of a new one running ``work(*args)``."""
        waiter = self.waiter(key, work, *args)
        try:
            return await waiter
        except asyncio.CancelledError:
            self.abandon(key, waiter)
            raise

    def waiter(
        self, key: str, work: Callable[..., Coroutine[Any, Any, T]], *args: Any
    ) -> asyncio.Future[T]:
        """What :meth:`join` awaits, for a caller that awaits it itself (one coroutine fewer
        for each of a storm's parked callers): on cancellation it must call :meth:`abandon`."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._flight(key, work, args, waiter)
        return waiter

    def abandon(self, key: str, waiter: asyncio.Future[T]) -> None:
        """``waiter``'s caller was cancelled: its flight no longer answers it."""
        flight = self._flights.get(key)
        if flight is not None:
            flight.waiters.discard(waiter)
        if waiter.done() and not waiter.cancelled():
            waiter.exception()  # settled just before the cancellation: retrieved, not logged

    def start(self, key: str, work: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> None:
        """Start ``work(*args)`` as a background flight unless ``key`` has one running."""
        if key not in self._flights and not self.closed:
            self._flight(key, work, args, None)

    def __len__(self) -> int:
        return len(self._flights)

    def finishing(self, key: str) -> AbstractContextManager[None]:
        """While inside, aclose() waits for ``key``'s flight instead of cancelling it."""
        return _Finishing(self._finishing, key)

    async def aclose(self) -> None:
        """Cancel the flights (except those finishing), wait for all, and end their callers."""
        self.closed = True
        flights = list(self._flights.items())
        for key, flight in flights:
            if flight.task is not None and key not in self._finishing:
                flight.task.cancel()
        await asyncio.gather(*(f.task for _, f in flights if f.task), return_exceptions=True)
        for key, flight in flights:
            # A flight cancelled before its first step never ran a line of _fly to settle.
            self._settle(key, flight, _closed_error())

    def _flight(
        self,
        key: str,
        work: Callable[..., Coroutine[Any, Any, T]],
        args: tuple[Any, ...],
        waiter: asyncio.Future[T] | None,
    ) -> _Flight[T]:
        # The waiter is added before the flight can start: an eager task may end in create_task.
        if self.closed:
            raise RuntimeError("this DeviceFlowClient is closed")
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight(background=waiter is None)
            if waiter is not None:
                flight.waiters.add(waiter)
            loop = asyncio.get_running_loop()
            flight.task = loop.create_task(self._fly(key, flight, work, args))
        elif waiter is not None:
            flight.waiters.add(waiter)
        return flight

    async def _fly(
        self,
        key: str,
        flight: _Flight[T],
        work: Callable[..., Coroutine[Any, Any, T]],
        args: tuple[Any, ...],
    ) -> None:
        """Run one flight and hand its outcome to every waiter, as soon as it is known."""
        try:
            outcome = await work(*args)
        except asyncio.CancelledError:
            self._settle(key, flight, _closed_error())
            raise
        except Exception as exc:  # every waiter gets it
            self._settle(key, flight, exc)
            if flight.background and not self.closed:
                self._on_background_error(key, exc)
        except (KeyboardInterrupt, SystemExit) as exc:  # they stop the loop; waiters must not hang
            self._settle(key, flight, RuntimeError(f"get_token() was interrupted: {exc!r}"))
            raise
        except BaseException as exc:  # an on_code callback's own: its callers get it
            self._settle(key, flight, exc)
        else:
            self._settle(key, flight, outcome)

    def _settle(self, key: str, flight: _Flight[T], outcome: T | BaseException) -> None:
        """End the flight: every waiter still waiting gets ``outcome`` (first call only)."""
        if flight.settled:
            return
        flight.settled = True
        if self._flights.get(key) is flight:
            del self._flights[key]
        for waiter in flight.waiters:
            if waiter.done():
                continue
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        flight.waiters.clear()
