"""A virtual clock for tests: sleeping moves time forward at once."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import anyio
import anyio.lowlevel

__all__ = ["VirtualClock"]


class VirtualClock:
    """A :class:`deviceflow.Clock` whose time moves only when someone sleeps or calls advance().

    ``sleep(d)`` moves the clock to at least "now + d" and yields to the event loop once, so a
    flow with a 5 s polling interval runs in microseconds while every poll still lands at exactly
    the right virtual time. Share one instance between the client and
    :class:`~deviceflow.testing.AuthorizationServer` so both agree on what time it is.

    >>> clock = VirtualClock()
    >>> start = clock.monotonic()
    >>> clock.advance(5)
    >>> clock.monotonic() - start
    5.0
    """

    def __init__(self, *, start: datetime | None = None) -> None:
        self._mono = 1_000.0
        self._wall0 = start or datetime(2030, 1, 1, tzinfo=timezone.utc)
        self._mono0 = self._mono

    def monotonic(self) -> float:
        """The virtual monotonic time in seconds (starts at 1000.0)."""
        return self._mono

    def wall(self) -> datetime:
        """The virtual wall time: ``start`` (default 2030-01-01 UTC) plus the time advanced."""
        return self._wall0 + timedelta(seconds=self._mono - self._mono0)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backwards)."""
        self._mono += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        """Move time forward by ``seconds`` at once, then yield to the event loop."""
        target = self._mono + max(0.0, seconds)
        self._mono = max(self._mono, target)
        await anyio.lowlevel.checkpoint()
