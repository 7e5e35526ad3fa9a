"""The clock seam: the driver reads time and sleeps only through a Clock.

Production uses :class:`SystemClock`. Tests use ``deviceflow.testing.VirtualClock``, whose
``sleep`` moves time forward at once, so a flow with a 5 s interval runs in microseconds and poll
spacing can still be checked exactly.
"""

from __future__ import annotations

import sys
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


def _awake_and_asleep() -> int | None:
    """The id of a monotonic clock that goes on while the machine sleeps, where there is one.

    ``time.monotonic()`` stops while a Linux or macOS machine is suspended, but tokens expire
    all the same: a laptop that slept through a token's expiry would be handed the dead token
    from the cache, for as long again as it slept. Linux's CLOCK_BOOTTIME and macOS's
    CLOCK_MONOTONIC count the time asleep. (Windows' ``time.monotonic()`` does already.)
    """
    for platform, name in (("linux", "CLOCK_BOOTTIME"), ("darwin", "CLOCK_MONOTONIC")):
        clock_id: int | None = getattr(time, name, None)
        if sys.platform.startswith(platform) and clock_id is not None:
            try:
                time.clock_gettime(clock_id)  # a sandbox may refuse a clock the build knows
            except OSError:
                return None
            return clock_id
    return None


_MONOTONIC_ID = _awake_and_asleep()


class SystemClock:
    """The real clock: a monotonic clock that counts time asleep (see ``_awake_and_asleep``;
    ``time.monotonic`` elsewhere), ``datetime.now(timezone.utc)`` and ``anyio.sleep``."""

    def monotonic(self) -> float:
        if _MONOTONIC_ID is None:
            return time.monotonic()
        return time.clock_gettime(_MONOTONIC_ID)

    def wall(self) -> datetime:
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        import anyio  # here, not at the top: reading a clock needs no event loop

        await anyio.sleep(max(0.0, seconds))
