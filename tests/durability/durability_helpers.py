"""Helpers shared by the durability tests (import as ``from durability_helpers import ...``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

from deviceflow import DeviceFlowClient, Token
from deviceflow.testing import AuthorizationServer, VirtualClock

__all__ = ["seed", "until"]


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
