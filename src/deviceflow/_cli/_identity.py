"""Who signed in: the verified identity ``login`` ends with and ``status`` shows per account.

Nothing is shown for a provider that gives no id_token (GitHub), a sign-in without the
``openid`` scope, or an id_token that does not verify (the reason goes to the debug log). The
provider's keys are fetched for it, within IDENTITY_TIMEOUT seconds for all accounts at once,
so an unreachable server never holds a command up for long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import anyio

from deviceflow._client import DeviceFlowClient
from deviceflow._provider import Provider
from deviceflow.exceptions import DeviceFlowError
from deviceflow.stores import TokenStore

from ._errors import CliError
from ._presets import build_provider, preset_named
from ._store import AccountEntry

__all__ = ["IDENTITY_TIMEOUT", "signed_in_as", "signed_in_as_each"]

log = logging.getLogger("deviceflow.cli")

#: How long (seconds) a command waits to learn who signed in before showing nothing.
IDENTITY_TIMEOUT = 5.0


async def signed_in_as(client: DeviceFlowClient, account: str) -> str | None:
    """``alice (alice@example.com)`` for ``account``'s verified identity, or None."""
    with anyio.move_on_after(IDENTITY_TIMEOUT):
        try:
            return str(await client.identity(account))
        except DeviceFlowError as exc:
            log.debug("no verified identity for account %r: %s", account, exc)
            return None
    log.debug("no verified identity for account %r: the provider took too long", account)
    return None


async def signed_in_as_each(
    entries: Sequence[AccountEntry], store: TokenStore, client_secret: str | None
) -> dict[str, str | None]:
    """The verified identity of each account of ``entries`` (by store key), looked up at once."""

    async def one(entry: AccountEntry) -> str | None:
        try:
            if entry.provider is not None:
                provider = await build_provider(preset_named(entry.provider), entry.arguments)
            else:
                provider = Provider(issuer=entry.issuer)
            secret = client_secret if provider.requires_client_secret else None
            client = DeviceFlowClient(
                provider, client_id=entry.client_id, client_secret=secret, store=store
            )
        except (CliError, DeviceFlowError, ValueError) as exc:  # e.g. Google without its secret
            log.debug("no identity for account %r: %s", entry.account, exc)
            return None
        async with client:
            return await signed_in_as(client, entry.account)

    found = await asyncio.gather(*(one(entry) for entry in entries))
    return {entry.key: who for entry, who in zip(entries, found, strict=True)}
