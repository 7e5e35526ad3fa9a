"""Waiting for another process's device flow: woken by the store when it can tell, else polling.

A process that finds another's live claim on an account (_claim.py) waits for one of three
outcomes: the token lands in the store (use it), the flow fails (raise its error), or the claim
lapses or goes without a token (claim the flow and run one). It learns of them by reading the
claim and the token record, and the question is when to read:

- a store that reports changes (``WatchableStore``: MemoryStore in-process, RedisStore through
  pub/sub) wakes the waiter when either key is written; it reads only what changed. Besides,
  it reads when the claim would lapse (a claim's owner renews it about every 30 s, which each
  waiter hears of: one read of the claim), and at the latest every 5 to 10 minutes
  (SAFETY_POLL): a write whose report was lost (a writer that does not publish, such as an
  older release) is picked up by then. A waiting account costs no reads while nothing changes;
- when reports are not coming (the store's subscription is down), or the store cannot report
  at all (EncryptedFileStore), the waiter reads both keys every CLAIM_POLL seconds.

A read that fails (after a Redis restart, a pooled connection fails once) is tried again, on
both keys, at the next report (but not within _READ_GAP) or after READ_RETRY seconds; three
failures in a row are the caller's.

A report is only a hint: the waiter always decides on what it reads.

Waits are in real time, not on the client's clock: another process's flow runs on real time,
and a virtual clock in tests would otherwise race ahead while this one waits.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager

from ._claim import Claim, FlowClaim
from ._clock import Clock
from ._models import Token
from .exceptions import StoreError
from .stores._protocol import KeyWatch, TokenStore, WatchableStore

__all__ = ["CLAIM_POLL", "READ_RETRY", "SAFETY_POLL", "wait_for_flow", "watching"]

#: How often a waiter reads the store when the store does not report changes.
CLAIM_POLL = 2.0
#: The longest a waiter goes without reading while the store reports changes (each waiter
#: draws its own interval between half this and this, so that waiters parked together do not
#: read together). A live flow's claim lapses sooner (it is renewed for the flow's next wait
#: plus 30 s), and the waiter reads then too: this bounds the claims that reach far ahead.
SAFETY_POLL = 600.0
#: Read a claim this long after the moment it lapses (timers may fire a little early).
_LAPSE_MARGIN = 0.05
#: Store reads that may fail in a row while waiting (a Redis restart: stale pooled
#: connections) before the failure is the caller's.
_READ_FAILURES = 3
#: The longest wait before reading again after a failed read (a report ends it sooner). Not
#: CLAIM_POLL: a watching waiter does not poll, so a failed read must not wait for a poll.
READ_RETRY = 2.0
#: The shortest wait before reading again after a failed read.
_READ_GAP = 0.25

log = logging.getLogger(__name__)


class _Polling:
    """The watch of a store that reports nothing: never live, so its waiters poll."""

    live = False

    async def __aenter__(self) -> _Polling:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def changed(self, timeout: float) -> frozenset[str]:
        await asyncio.sleep(max(0.0, timeout))
        return frozenset()


_POLLING = _Polling()  # it holds nothing: every waiter on such a store shares it


def watching(store: TokenStore, keys: Collection[str]) -> AbstractAsyncContextManager[KeyWatch]:
    """A watch of ``keys`` in ``store`` (one that never reports, when the store cannot)."""
    return store.watch(keys) if isinstance(store, WatchableStore) else _POLLING


async def wait_for_flow(
    claim: FlowClaim,
    other: Claim,
    token_key: str,
    read_token: Callable[[], Awaitable[Token | None]],
    clock: Clock,
) -> Token | None:
    """Wait on ``other``, another process's flow: its token, its error (raised), or None once
    its claim has lapsed or gone without a token (then this process tries to claim the flow).

    ``read_token`` reads the account's usable token from the store, if any.
    """
    loop = asyncio.get_running_loop()
    safety = SAFETY_POLL * random.uniform(0.5, 1.0)  # noqa: S311 - spreads reads, not a secret
    everything = frozenset((token_key, claim.key))
    async with watching(claim.store, everything) as watch:
        changed = everything  # read both once the watch is on: a write before it is seen so
        until = other.until
        failures = 0
        while True:
            try:
                if claim.key in changed:
                    # The claim first: it is ended after the token is stored.
                    current = await claim.read()
                    now = clock.wall().timestamp()
                    ours = (
                        current is not None and current.flow == other.flow and now < current.until
                    )
                    if ours and current is not None and current.error is None:
                        until = current.until
                    else:
                        token = await read_token()
                        if token is not None:
                            return token
                        if ours and current is not None:
                            raise current.failure()
                        return None  # lapsed, or gone without a token: this process claims the flow
                if token_key in changed:
                    token = await read_token()
                    if token is not None:
                        return token
            except StoreError as exc:
                failures += 1
                if failures >= _READ_FAILURES:
                    raise
                log.info(
                    "waiting on another process's flow: a store read failed (%s); reading again",
                    exc,
                )
                # The reports that caused the failed read were used up by it: read everything
                # again, after a report or READ_RETRY (real time, as watch.changed() waits),
                # but not sooner than _READ_GAP: a dropped subscription's nudge and the
                # reports of its return must not spend every allowed failure at once.
                retry_at = loop.time() + _READ_GAP
                await watch.changed(READ_RETRY)
                await asyncio.sleep(max(0.0, retry_at - loop.time()))
                changed = everything
                continue
            failures = 0
            if watch.live:
                remaining = until - clock.wall().timestamp()
                timeout = min(safety, max(0.0, remaining) + _LAPSE_MARGIN)
            else:
                timeout = CLAIM_POLL
            due = loop.time() + timeout
            changed = await watch.changed(timeout)
            if not changed and loop.time() >= due:
                changed = everything  # time to look: a poll, or the claim's lapse
