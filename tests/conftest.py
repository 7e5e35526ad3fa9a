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
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from hypothesis import HealthCheck, settings

from _redis import redis_cluster, redis_server

__all__ = ["redis_cluster", "redis_server"]

settings.register_profile("deviceflow", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deviceflow"))


def pytest_configure(config: pytest.Config) -> None:
    """Undo an inherited "ignore SIGINT", in the main process and in each xdist worker."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
