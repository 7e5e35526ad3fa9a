"""Helpers shared by test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import json

from deviceflow import DeviceFlowClient, Token


async def stored_token(client: DeviceFlowClient, account: str = "default") -> Token | None:
    """The token ``client``'s store holds for ``account``; None when there is none or the
    account was signed out (a tombstone)."""
    current = await client.store.get(client.store_key(account))
    if current is None:
        return None
    token = json.loads(current.value).get("token")
    return None if token is None else Token.from_dict(token)
