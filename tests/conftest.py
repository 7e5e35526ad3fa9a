"""Fixtures and settings shared by every test directory.

The built-in server's fixtures (``authorization_server``, ``virtual_clock``) come from the
package's own pytest plugin: configure the server with ``@pytest.mark.authorization_server(...)``
on a test or as a module's ``pytestmark``. The Redis fixtures start private ``redis-server``
processes on free loopback ports (never the machine's Redis on 6379) and stop them afterwards.

Children the tests start must start with Ctrl-C at its default: a shell starts a background job
(``pytest ... &`` without job control) with SIGINT ignored, children inherit that, and the tests
that send SIGINT to a child then wait for ever. pytest_configure gives SIGINT back its default.

Hypothesis runs with the "deviceflow" profile: no per-example deadline and no too_slow health
check, since examples here do real I/O (sockets, files, processes, scrypt) and tests never assert
a wall-clock time (STYLE.md 11); a loaded machine must not fail them. Set HYPOTHESIS_PROFILE to
load another registered profile.

No test may hang the run: each has a ceiling of TEST_CEILING real seconds (times
``DEVICEFLOW_TIME_FACTOR``), after which pytest-timeout fails it with every thread's stack and the
run goes on. The ceiling is a backstop for a lost wake-up or a child that never exits, far above
any test's normal time; it is not a speed check. ``@pytest.mark.timeout(N)`` on a test overrides it.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from hypothesis import HealthCheck, settings

from _redis import redis_cluster, redis_server
from helpers import time_factor

__all__ = ["redis_cluster", "redis_server"]

settings.register_profile("deviceflow", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deviceflow"))

#: Real seconds a single test may run before it is failed as hung (times the time factor).
TEST_CEILING = 300.0


def pytest_configure(config: pytest.Config) -> None:
    """Undo an inherited "ignore SIGINT", in the main process and in each xdist worker."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test without its own ``timeout`` mark the scaled ceiling (see the module doc)."""
    ceiling = pytest.mark.timeout(TEST_CEILING * time_factor())
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(ceiling)
