"""The clock seam: the driver reads time and sleeps only through a Clock.

Production uses :class:`SystemClock`. Tests use ``deviceflow.testing.VirtualClock``, whose
``sleep`` moves time forward at once, so a flow with a 5 s interval runs in microseconds and poll
spacing can still be checked exactly.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time for scheduling, wall time for expiry stamps, and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (polls are spaced on this one)."""
        ...

    def wall(self) -> datetime:
        """The current time as an aware UTC datetime (token expiry is stamped with this)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a non-positive value still yields to the event loop)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(timezone.utc)`` and ``anyio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        import anyio  # here, not at the top: reading a clock needs no event loop

        await anyio.sleep(max(0.0, seconds))
