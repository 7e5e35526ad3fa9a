"""One device flow per account across processes: a claim record in the shared store.

Single-flight shares a device flow between the tasks of one process. Replicas that share a
store (several workers on one file store, service replicas on one Redis) would still each start
a flow, and a person would be shown a code per replica. So before a flow starts, its process
writes a claim next to the account's token record, with compare-and-set:

- the process that writes it runs the flow (and alone calls ``on_code``), renews the claim as
  it polls, and deletes it when the token is stored; a flow that fails leaves its error in the
  claim for the processes waiting on it;
- the others wait: they watch the claim and the token record until the token appears (they
  use it), the flow fails (they raise its error), or the claim lapses because its process
  stopped renewing it (one of them claims the flow and starts a new one).

A claim names its deadline on the clock of the process that wrote it; the store's own ttl only
clears claims nobody looks at again.
"""

from __future__ import annotations

import json
import logging
import math
import secrets

import attrs

from ._clock import Clock
from ._models import COMPACT_JSON
from .exceptions import (
    AccessDeniedError,
    ConflictError,
    DeviceFlowError,
    ExpiredTokenError,
    OAuthError,
    StoreError,
)
from .stores._protocol import TokenStore

__all__ = ["CLAIM_TTL", "Claim", "FlowClaim"]

log = logging.getLogger("deviceflow")

#: A claim lapses this long after its process last renewed it, at least: a flow renews its claim
#: as it polls, so the claim must outlast a few polling intervals too (see FlowClaim.renew).
CLAIM_TTL = 30.0
#: How long a finished flow's error stays readable for the processes that waited on it.
OUTCOME_TTL = 30.0


@attrs.frozen
class Claim:
    """A claim as stored: which flow, until when (wall-clock seconds), and how it failed."""

    flow: str
    until: float
    error: str | None = None  # an OAuth error code, or "failed"
    description: str | None = None

    def live(self, now: float) -> bool:
        """True while the flow runs: not lapsed and not failed."""
        return self.error is None and now < self.until

    def failure(self) -> DeviceFlowError:
        """The error the flow ended with, for the processes that waited on it."""
        text = f"{self.description or self.error} (in the process that showed the code)"
        if self.error == "access_denied":
            return AccessDeniedError("access_denied", text)
        if self.error == "expired_token":
            return ExpiredTokenError("expired_token", text)
        if self.error is not None and self.error != "failed":
            return OAuthError(self.error, text)
        return DeviceFlowError(f"the device flow failed: {text}")

    def encode(self) -> bytes:
        return COMPACT_JSON.encode(attrs.asdict(self)).encode()

    @classmethod
    def decode(cls, value: bytes) -> Claim | None:
        """The stored claim, or None for one that cannot be read (treated as lapsed)."""
        try:
            data = json.loads(value)
            claim = cls(
                flow=data["flow"],
                until=float(data["until"]),
                error=data.get("error"),
                description=data.get("description"),
            )
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        fields = (claim.flow, claim.error or "", claim.description or "")
        if not all(isinstance(f, str) for f in fields) or not math.isfinite(claim.until):
            return None
        return claim


@attrs.define
class FlowClaim:
    """This process's side of one account's claim: take it, keep it, end it, or read it."""

    store: TokenStore
    key: str
    clock: Clock
    flow: str = attrs.field(factory=lambda: secrets.token_hex(8))
    version: int | None = None
    until: float = 0.0  # the deadline last written

    async def read(self) -> Claim | None:
        """The claim in the store, if there is a readable one."""
        current = await self.store.get(self.key)
        return None if current is None else Claim.decode(current.value)

    async def take(self) -> Claim | None:
        """Claim the flow: None once this process holds the claim, else the live claim of the
        process that runs the flow now (wait on that one)."""
        while True:
            current = await self.store.get(self.key)
            if current is not None:
                other = Claim.decode(current.value)
                if other is not None and other.live(self._now()):
                    return other
            claim = self._claim()
            try:
                self.version = await self.store.put(
                    self.key,
                    claim.encode(),
                    expected_version=current.version if current is not None else None,
                    ttl=CLAIM_TTL * 2,
                )
            except ConflictError:
                continue  # another process claimed it first: read whose it is
            self.until = claim.until
            return None

    async def renew(self, lifetime: float) -> None:
        """Push the claim's deadline ``lifetime`` seconds ahead, once a third of it has passed.

        Called before each request of the flow, so the claim lives as long as its polling does.
        """
        if self.until - self._now() > lifetime * 2 / 3:
            return
        try:
            claim = self._claim(lifetime)
            self.version = await self.store.put(
                self.key, claim.encode(), expected_version=self.version, ttl=lifetime * 2
            )
            self.until = claim.until
        except ConflictError:
            # Our process stalled past the deadline and another took over: its flow wins, but
            # this one goes on (a code may already be shown); both end with a valid grant.
            log.warning("the device flow claim %r was taken over by another process", self.key)
            self.until = math.inf  # stop renewing
        except StoreError as exc:
            log.warning("could not renew the device flow claim %r: %s", self.key, exc)

    async def end(self, error: BaseException | None) -> None:
        """Delete the claim, or leave a failed flow's error in it for the waiting processes."""
        try:
            if not isinstance(error, DeviceFlowError):
                await self.store.delete(self.key, expected_version=self.version)
                return
            code = error.error if isinstance(error, OAuthError) else "failed"
            description = error.description if isinstance(error, OAuthError) else str(error)
            outcome = attrs.evolve(
                self._claim(OUTCOME_TTL), error=code, description=(description or None)
            )
            await self.store.put(
                self.key, outcome.encode(), expected_version=self.version, ttl=OUTCOME_TTL * 2
            )
        except StoreError as exc:  # it lapses by itself
            log.warning("could not end the device flow claim %r: %s", self.key, exc)

    def _claim(self, ttl: float = CLAIM_TTL) -> Claim:
        return Claim(flow=self.flow, until=self._now() + ttl)

    def _now(self) -> float:
        return self.clock.wall().timestamp()
