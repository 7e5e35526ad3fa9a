"""Fixtures shared by every test directory.

The built-in server's fixtures (``authorization_server``, ``virtual_clock``) come from the
package's own pytest plugin. The Redis fixtures start private ``redis-server`` processes on free
loopback ports (never the machine's Redis on 6379) and stop them afterwards.
"""

from __future__ import annotations

from _redis import redis_cluster, redis_server

__all__ = ["redis_cluster", "redis_server"]
