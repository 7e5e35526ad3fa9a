"""Fixtures and settings shared by every test directory.

The built-in server's fixtures (``authorization_server``, ``virtual_clock``) come from the
package's own pytest plugin: configure the server with ``@pytest.mark.authorization_server(...)``
on a test or as a module's ``pytestmark``. The Redis fixtures start private ``redis-server``
processes on free loopback ports (never the machine's Redis on 6379) and stop them afterwards.

Hypothesis runs with the "deviceflow" profile: no per-example deadline and no too_slow health
check, since examples here do real I/O (sockets, files, processes, scrypt) and tests never assert
a wall-clock time (STYLE.md 11); a loaded machine must not fail them. Set HYPOTHESIS_PROFILE to
load another registered profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from _redis import redis_cluster, redis_server

__all__ = ["redis_cluster", "redis_server"]

settings.register_profile("deviceflow", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deviceflow"))
