"""FaultyStore: a token store that breaks on demand, the way stores break in production.

Faults are armed per operation (``get``, ``put``, ``delete``, ``lock``) and kept in the order
armed. Each call takes, in that order, every matching fault until one that decides the call's
outcome: stalls only delay the call, so they are taken and the walk goes on; a failure (before or
after the write) ends it. Each fault taken uses up one of its ``times``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeAlias

import anyio
import attrs

from deviceflow.exceptions import DeviceFlowError, StoreError
from deviceflow.stores import Lease, TokenStore, Versioned

__all__ = ["OPERATIONS", "FaultyStore", "Operation"]

#: The operations of a :class:`~deviceflow.stores.TokenStore` that faults can be armed on.
Operation: TypeAlias = Literal["get", "put", "delete", "lock"]
OPERATIONS: tuple[Operation, ...] = ("get", "put", "delete", "lock")
_WRITES: tuple[Operation, ...] = ("put", "delete")

_Kind: TypeAlias = Literal["fail", "stall", "fail_after_write"]
_Error: TypeAlias = DeviceFlowError | type[DeviceFlowError]


def _check_operation(operation: str, allowed: tuple[Operation, ...] = OPERATIONS) -> None:
    if operation not in allowed:
        raise ValueError(f"unknown operation {operation!r}; use one of {', '.join(allowed)}")


def _check_times(times: int | None) -> None:
    if times is not None and times < 1:
        raise ValueError("times must be at least 1 (or None for every call until heal())")


def _check_store(instance: object, attribute: object, value: Any) -> None:
    if not isinstance(value, TokenStore):
        raise TypeError(f"inner must be a TokenStore, not {type(value).__name__}")


def _check_error(error: object) -> None:
    if error is None or isinstance(error, DeviceFlowError):
        return
    if not (isinstance(error, type) and issubclass(error, DeviceFlowError)):
        raise TypeError(
            f"error must be a DeviceFlowError (usually a StoreError) or such a class, "
            f"not {type(error).__name__}"
        )
    try:
        error("injected fault")
    except TypeError as exc:
        raise TypeError(
            f"{error.__name__} cannot be made from a message alone; pass an instance"
        ) from exc


@attrs.frozen(kw_only=True)
class _Fault:
    kind: _Kind
    operations: frozenset[str]
    seconds: float = 0.0
    error: _Error | None = None

    def make_error(self, operation: str) -> DeviceFlowError:
        """The exception to raise for a call of ``operation`` (never names a key or value)."""
        if isinstance(self.error, DeviceFlowError):
            # The same instance each time, without the traceback of its last raise.
            return self.error.with_traceback(None)
        if self.kind == "fail_after_write":
            message = f"injected fault: {operation} failed after the write reached the store"
        else:
            message = f"injected fault: {operation} failed"
        return (self.error or StoreError)(message)


@attrs.define(eq=False)
class _Armed:
    fault: _Fault
    remaining: int | None


@attrs.define(eq=False, repr=False)
class FaultyStore:
    """A :class:`~deviceflow.stores.TokenStore` that wraps another one and breaks on demand.

    Use it to break a store the way an operator would: a full disk (``fail``), a stalled Redis
    (``stall``), a Redis timeout after the write landed (``fail_after_write``), a Redis that
    restarts empty (``lose_everything``). With no fault armed, every call goes straight to
    ``inner``. A fault injected before the write never reaches ``inner``.

    Faults are applied in the order they were armed; a fault with ``times`` is used up call by
    call, and ``times=None`` keeps it until :meth:`heal`. A call takes every matching stall in
    that order until it meets a matching failure, which ends the call. For ``lock``, the fault
    strikes when the ``async with`` block is entered, before the lock is acquired; otherwise
    the lock is the inner store's.

    Example::

        import pytest

        from deviceflow.exceptions import StoreError
        from deviceflow.stores import MemoryStore
        from deviceflow.testing import FaultyStore

        faulty = FaultyStore(MemoryStore())
        faulty.fail("put", times=2)              # a full disk, for two writes
        with pytest.raises(StoreError):
            await faulty.put("k", b"v", expected_version=None)
        faulty.heal()
        assert 1 == await faulty.put("k", b"v", expected_version=None)
        assert {"get": 0, "put": 2, "delete": 0, "lock": 0} == faulty.counts
    """

    inner: TokenStore = attrs.field(validator=_check_store)
    """The wrapped store."""

    _armed: list[_Armed] = attrs.field(factory=list, init=False)
    _counts: dict[Operation, int] = attrs.field(
        factory=lambda: dict.fromkeys(OPERATIONS, 0), init=False
    )
    _injected: int = attrs.field(default=0, init=False)
    _seen: set[str] = attrs.field(factory=set, init=False)
    _heals: int = attrs.field(default=0, init=False)
    # Made by the first stall (an anyio.Event needs a running event loop); set by heal().
    _healed: anyio.Event | None = attrs.field(default=None, init=False)

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r}, armed={len(self._armed)})"

    # --- arming -----------------------------------------------------------------------------

    def fail(
        self,
        operation: Operation,
        *,
        times: int | None = 1,
        error: DeviceFlowError | type[DeviceFlowError] | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``operation`` raise without reaching the inner store.

        ``operation`` is ``"get"``, ``"put"``, ``"delete"`` or ``"lock"``. The error raised is
        ``StoreError("injected fault: <operation> failed")`` unless ``error`` is given: a
        :class:`~deviceflow.exceptions.DeviceFlowError` instance (raised as it is, every time)
        or class (made with the default message). ``times=None`` fails every call until
        :meth:`heal`.

        Example::

            faulty.fail("put", times=2)                                # a full disk
            faulty.fail("lock", error=LockTimeoutError("lock held"))   # a lock never free
            faulty.fail("get", times=None)                             # until faulty.heal()
        """
        _check_operation(operation)
        _check_times(times)
        _check_error(error)
        self._arm(_Fault(kind="fail", operations=frozenset({operation}), error=error), times)

    def stall(
        self,
        seconds: float,
        *,
        operations: Operation | Iterable[Operation] = OPERATIONS,
        times: int | None = 1,
    ) -> None:
        """Delay the next ``times`` calls of ``operations`` by ``seconds``, then run them normally.

        The delay is real time (as a client's timeouts are), and other tasks run meanwhile.
        ``operations`` is one operation or several (default: all four); each matching call uses
        up one of ``times``, and ``times=None`` stalls every call until :meth:`heal`.
        ``seconds`` may be ``math.inf``: the call then waits for :meth:`heal`, which also ends
        every stall under way.

        Example::

            faulty.stall(2.5, operations=("get",))          # one slow read
            faulty.stall(math.inf, times=None)              # a hung Redis, until faulty.heal()
        """
        if math.isnan(seconds) or seconds < 0:
            raise ValueError("seconds must be zero or more (math.inf: until heal())")
        chosen = [operations] if isinstance(operations, str) else list(operations)
        if not chosen:
            raise ValueError("operations must name at least one operation")
        for operation in chosen:
            _check_operation(operation)
        _check_times(times)
        self._arm(_Fault(kind="stall", operations=frozenset(chosen), seconds=seconds), times)

    def fail_after_write(
        self,
        operation: Literal["put", "delete"],
        *,
        times: int | None = 1,
        error: DeviceFlowError | type[DeviceFlowError] | None = None,
    ) -> None:
        """Let the next ``times`` writes reach the inner store, then raise anyway.

        The answer is lost after the write landed, as with a Redis timeout: the caller sees an
        error although the store has changed. ``operation`` is ``"put"`` or ``"delete"``. The
        error is ``StoreError`` with a message saying it is injected, unless ``error`` is given
        (as for :meth:`fail`). If the inner store itself raises (a ConflictError, say), that
        error is what the caller sees, and the fault is used up all the same.

        Example::

            faulty.fail_after_write("put")
            with pytest.raises(StoreError):
                await faulty.put("k", b"v", expected_version=None)   # written all the same
            assert b"v" == (await faulty.get("k")).value
        """
        _check_operation(operation, _WRITES)
        _check_times(times)
        _check_error(error)
        fault = _Fault(kind="fail_after_write", operations=frozenset({operation}), error=error)
        self._arm(fault, times)

    def heal(self) -> None:
        """Disarm every fault, and end every stall under way (those calls then run normally).

        ``counts`` and ``injected`` are kept.

        Example::

            faulty.fail("get", times=None)
            faulty.heal()
            assert 0 == faulty.armed
        """
        self._armed.clear()
        self._heals += 1
        if self._healed is not None:
            self._healed.set()
            self._healed = None

    async def lose_everything(self) -> int:
        """Delete, from the inner store, every record whose key went through this wrapper.

        As a Redis that restarted empty: the TokenStore protocol cannot list keys, so the
        wrapper remembers every key passed to ``get``, ``put`` and ``delete``. Locks are not
        touched, and no fault applies. Returns how many records were there.

        Example::

            await faulty.put("k", b"v", expected_version=None)
            assert 1 == await faulty.lose_everything()
            assert None is await faulty.get("k")
        """
        lost = 0
        for key in sorted(self._seen):
            if await self.inner.delete(key):
                lost += 1
        return lost

    # --- what happened ----------------------------------------------------------------------

    @property
    def counts(self) -> dict[Operation, int]:
        """Calls seen per operation, faulted or not (a copy).

        A ``lock`` is counted when its block is entered.

        >>> FaultyStore(MemoryStore()).counts
        {'get': 0, 'put': 0, 'delete': 0, 'lock': 0}
        """
        return dict(self._counts)

    @property
    def injected(self) -> int:
        """How many faults were injected so far (stalls and failures; one per call per fault).

        >>> FaultyStore(MemoryStore()).injected
        0
        """
        return self._injected

    @property
    def armed(self) -> int:
        """How many faults are armed (not used up, not healed).

        >>> faulty = FaultyStore(MemoryStore())
        >>> faulty.fail("put", times=3)
        >>> faulty.armed
        1
        """
        return len(self._armed)

    # --- the TokenStore protocol ------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        """The inner store's ``get``, after the faults armed on ``"get"``."""
        self._seen.add(key)
        await self._before("get")
        return await self.inner.get(key)

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None,
        ttl: float | None = None,
    ) -> int:
        """The inner store's ``put``, after (and, for ``fail_after_write``, around) the faults."""
        self._seen.add(key)
        after = await self._before("put")
        version = await self.inner.put(key, value, expected_version=expected_version, ttl=ttl)
        if after is not None:
            self._injected += 1
            raise after.make_error("put")
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """The inner store's ``delete``, after (and, for ``fail_after_write``, around) faults."""
        self._seen.add(key)
        after = await self._before("delete")
        existed = await self.inner.delete(key, expected_version=expected_version)
        if after is not None:
            self._injected += 1
            raise after.make_error("delete")
        return existed

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Lease]:
        """The inner store's lock; the faults armed on ``"lock"`` strike on entering it."""
        # Made now, so the inner store checks its arguments when lock() is called, as usual.
        return self._lock(self.inner.lock(key, ttl=ttl, wait=wait))

    async def aclose(self) -> None:
        """Close the inner store (no fault applies)."""
        await self.inner.aclose()

    # --- internals --------------------------------------------------------------------------

    @asynccontextmanager
    async def _lock(self, inner: AbstractAsyncContextManager[Lease]) -> AsyncIterator[Lease]:
        await self._before("lock")
        async with inner as lease:
            yield lease

    def _arm(self, fault: _Fault, times: int | None) -> None:
        self._armed.append(_Armed(fault, times))

    def _take(self, operation: Operation) -> list[_Fault]:
        """The faults one call of ``operation`` meets, each used up once: stalls, then a failure."""
        taken: list[_Fault] = []
        for armed in list(self._armed):
            if operation not in armed.fault.operations:
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining == 0:
                    self._armed.remove(armed)
            taken.append(armed.fault)
            if armed.fault.kind != "stall":
                break
        return taken

    async def _before(self, operation: Operation) -> _Fault | None:
        """Count the call and apply its faults: sleep through stalls, raise a failure.

        Returns the fault to raise once the write is done (``fail_after_write``), if any.
        """
        self._counts[operation] += 1
        # Faults are taken when the call starts, so concurrent calls share out ``times``.
        faults = self._take(operation)
        heals = self._heals
        for fault in faults:
            if heals != self._heals:
                return None  # healed during a stall: the rest of this call runs normally
            if fault.kind == "stall":
                self._injected += 1
                if self._healed is None:
                    self._healed = anyio.Event()
                with anyio.move_on_after(fault.seconds):
                    await self._healed.wait()
            elif fault.kind == "fail":
                self._injected += 1
                raise fault.make_error(operation)
            else:
                return fault
        return None
