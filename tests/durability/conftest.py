"""Fixtures for the durability tests: one time factor, and disposable private Redis servers.

Every real-time wait in these tests (timeouts, delays, deadlines) is a multiple of
``time_factor``: ``DEVICEFLOW_TIME_FACTOR`` (default 1.0), to raise on a slow or loaded machine.
Virtual time (``virtual_clock``) is not scaled. ``redis_factory`` (tests/_redis.py) starts
redis-server processes on free loopback ports, never the machine's Redis.
"""

from __future__ import annotations

import pytest

from _redis import redis_factory
from helpers import time_factor as read_time_factor

__all__ = ["redis_factory", "time_factor"]


@pytest.fixture
def time_factor() -> float:
    """The factor every real-time wait of a test is multiplied by."""
    return read_time_factor()
