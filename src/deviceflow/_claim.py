"""One device flow per account across processes: a claim record in the shared store.

Single-flight shares a device flow between the tasks of one process. Replicas that share a
store (several workers on one file store, service replicas on one Redis) would still each start
a flow, and a person would be shown a code per replica. So before a flow starts, its process
writes a claim next to the account's token record, with compare-and-set:

- the process that writes it runs the flow (and alone calls ``on_code``). Before every wait and
  request of the flow it makes sure the claim outlasts them (the wait, however long a backoff or
  Retry-After makes it, plus the HTTP timeout, plus CLAIM_TTL), and it deletes the claim when
  the token is stored. A flow that fails leaves its error in the claim for the processes waiting
  on it;
- the others wait: they watch the claim and the token record until the token appears (they
  use it), the flow fails (they raise its error), or the claim lapses because its process
  stopped renewing it (one of them claims the flow and starts a new one).

Every write of a claim is checked twice: by version (compare-and-set) and by the flow id it
carries, because versions restart after a delete, and a write whose answer was lost (a store
timeout) may have landed. A claim that cannot be read (garbage, or a key that can no longer
decrypt it) counts as lapsed. Deadlines are wall-clock seconds of the writer's clock; the store's
own ttl only clears claims that nobody looks at again.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from typing import Any

import attrs

from ._clock import Clock
from ._models import COMPACT_JSON
from .exceptions import (
    ConflictError,
    DecryptionError,
    DeviceFlowError,
    OAuthError,
    StoreError,
    error_class,
    oauth_error_class,
)
from .stores._protocol import TokenStore, Versioned

__all__ = ["CLAIM_TTL", "Claim", "FlowClaim"]

log = logging.getLogger("deviceflow")

#: How long a claim outlasts the next wait and request of its flow (and so, how long a stalled or
#: dead process blocks others), and how long a failed flow's error stays readable.
CLAIM_TTL = 30.0


@attrs.frozen(kw_only=True)
class Claim:
    """A claim as stored: which flow, until when (wall-clock seconds), and how it failed.

    A failure is kept as data: ``error`` (an OAuth error code, or the class name of another
    DeviceFlowError) with the fields needed to raise the same class again.
    """

    flow: str
    until: float
    error: str | None = None
    description: str | None = None
    status: int | None = None
    uri: str | None = None

    def live(self, now: float) -> bool:
        """True while the flow runs: not lapsed and not failed."""
        return self.error is None and now < self.until

    @classmethod
    def failed(cls, flow: str, until: float, exc: DeviceFlowError) -> Claim:
        """The claim of ``flow`` ended by ``exc``."""
        if isinstance(exc, OAuthError):
            return cls(
                flow=flow,
                until=until,
                error=exc.error,
                description=exc.description,
                status=exc.status,
                uri=exc.uri,
            )
        name = type(exc).__name__
        if error_class(name) is not type(exc):
            name = "DeviceFlowError"
        return cls(flow=flow, until=until, error=f"!{name}", description=str(exc))

    def failure(self) -> DeviceFlowError:
        """The error the flow ended with, of the class its own process raised."""
        assert self.error is not None
        if self.error.startswith("!"):
            named = error_class(self.error[1:])
            if issubclass(named, OAuthError):  # OAuth errors travel by their code instead
                named = DeviceFlowError
            return named(self.description or "the device flow failed")
        oauth = oauth_error_class(self.error)
        return oauth(self.error, self.description, self.uri, status=self.status)

    def encode(self) -> bytes:
        return COMPACT_JSON.encode(attrs.asdict(self)).encode()

    @classmethod
    def decode(cls, value: bytes) -> Claim | None:
        """The stored claim, or None for one that cannot be read (it counts as lapsed)."""
        try:
            data: Any = json.loads(value)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        flow, until, status = data.get("flow"), data.get("until"), data.get("status")
        texts = [data.get(name) for name in ("error", "description", "uri")]
        if (
            not isinstance(flow, str)
            or not isinstance(until, (int, float))
            or isinstance(until, bool)
            or not math.isfinite(until)
            or not all(text is None or isinstance(text, str) for text in texts)
            or not (status is None or type(status) is int)
        ):
            return None
        error, description, uri = texts
        return cls(
            flow=flow,
            until=float(until),
            error=error,
            description=description,
            status=status,
            uri=uri,
        )


@attrs.define
class FlowClaim:
    """This process's side of one account's claim: take it, renew it, end it, or read it."""

    store: TokenStore
    key: str
    clock: Clock
    flow: str = attrs.field(factory=lambda: secrets.token_hex(8))
    held: bool = False  # a write of our claim may have landed (an answer can be lost)
    until: float = 0.0  # the deadline last written

    async def read(self) -> Claim | None:
        """The claim in the store, None when there is none or it cannot be read."""
        current = await self._get()
        return None if current is None else Claim.decode(current.value)

    async def take(self) -> Claim | None:
        """Claim the flow: None once this process holds the claim, else the live claim of the
        process that runs the flow now (wait on that one)."""
        while True:
            current = await self._get()
            if current is not None:
                other = Claim.decode(current.value)
                if other is not None and other.live(self._now()):
                    return other
            claim = Claim(flow=self.flow, until=self._now() + CLAIM_TTL)
            self.held = True
            try:
                await self.store.put(
                    self.key,
                    claim.encode(),
                    expected_version=current.version if current is not None else None,
                    ttl=CLAIM_TTL * 2,
                )
            except ConflictError:
                self.held = False
                continue  # another process claimed it first: read whose it is
            self.until = claim.until
            return None

    async def renew(self, ahead: float) -> None:
        """Make the claim last at least ``ahead`` seconds more (writing CLAIM_TTL beyond that).

        Called before each wait and request of the flow, with their length.
        """
        now = self._now()
        if self.until - now >= ahead:
            return
        try:
            ours = await self._ours()
            if ours is None:
                log.warning("the device flow claim %r was taken over by another process", self.key)
                self.until = math.inf  # that process's flow wins; this one still ends
                return
            claim = Claim(flow=self.flow, until=now + ahead + CLAIM_TTL)
            ttl = ahead + CLAIM_TTL * 2
            await self.store.put(self.key, claim.encode(), expected_version=ours.version, ttl=ttl)
            self.until = claim.until
        except StoreError as exc:  # tried again before the next wait
            log.warning("could not renew the device flow claim %r: %s", self.key, exc)

    async def end(self, error: BaseException | None) -> None:
        """Delete the claim, or leave a failed flow's error in it for the waiting processes."""
        if not self.held:
            return
        try:
            ours = await self._ours()
            if ours is None:
                return
            if not isinstance(error, DeviceFlowError):
                await self.store.delete(self.key, expected_version=ours.version)
                return
            outcome = Claim.failed(self.flow, self._now() + CLAIM_TTL, error)
            await self.store.put(
                self.key, outcome.encode(), expected_version=ours.version, ttl=CLAIM_TTL * 2
            )
        except StoreError as exc:  # it lapses by itself
            log.warning("could not end the device flow claim %r: %s", self.key, exc)
        finally:
            self.held = False

    async def _ours(self) -> Versioned | None:
        """The stored claim if it is this flow's (by id: versions repeat after a delete)."""
        current = await self._get()
        if current is None:
            return None
        claim = Claim.decode(current.value)
        return current if claim is not None and claim.flow == self.flow else None

    async def _get(self) -> Versioned | None:
        try:
            return await self.store.get(self.key)
        except DecryptionError:
            # Written under a key this store no longer has: unreadable, so lapsed. Remove it, or
            # it would stay (its ttl is sealed inside it too).
            log.warning("removing the undecryptable device flow claim %r", self.key)
            await self.store.delete(self.key)
            return None

    def _now(self) -> float:
        return self.clock.wall().timestamp()
