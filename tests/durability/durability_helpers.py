"""Helpers shared by the durability tests (import as ``from durability_helpers import ...``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import timedelta

from deviceflow import DeviceFlowClient, Token
from deviceflow.testing import AuthorizationServer, VirtualClock

__all__ = ["seed", "time_factor", "until"]


def time_factor() -> float:
    """``DEVICEFLOW_TIME_FACTOR`` (default 1.0): what every real-time wait is multiplied by."""
    raw = os.environ.get("DEVICEFLOW_TIME_FACTOR", "1.0")
    try:
        factor = float(raw)
    except ValueError:
        raise ValueError(f"DEVICEFLOW_TIME_FACTOR must be a number, not {raw!r}") from None
    if not factor > 0:
        raise ValueError(f"DEVICEFLOW_TIME_FACTOR must be more than 0, not {raw!r}")
    return factor


async def seed(
    client: DeviceFlowClient,
    server: AuthorizationServer,
    account: str,
    clock: VirtualClock | None = None,
) -> Token:
    """Store a token for ``account`` issued directly by the server (as a sign-in would)."""
    issued = server.issue_tokens(client.client_id, scope="openid offline_access")
    token = Token(
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        expires_at=(clock or server.clock).wall() + timedelta(seconds=int(issued["expires_in"])),
    )
    await client.save_token(account, token)
    return token


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (real time) until ``condition()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up after {timeout:.1f} s waiting for {what}"
        await asyncio.sleep(0.005)
