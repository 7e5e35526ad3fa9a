"""FaultyStore: failures, stalls, lost answers and lost data on demand, around a real store."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from deviceflow.exceptions import ConflictError, LockTimeoutError, StoreError
from deviceflow.stores import EncryptedFileStore, MemoryStore, TokenStore, Versioned, generate_key
from deviceflow.testing import FaultyStore
from deviceflow.testing._faulty_store import OPERATIONS, Operation
from helpers import time_factor

KEY = generate_key()


class DiskFullError(StoreError):
    """A user's own store error."""


class NeedsTwoArgumentsError(StoreError):
    """A store error that cannot be made from a message alone."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


class ClosingStore(MemoryStore):
    """A MemoryStore that remembers being closed."""

    closed = False

    async def aclose(self) -> None:
        """Remember the call."""
        self.closed = True


@pytest.fixture(params=["memory", "file"])
async def inner(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    """The wrapped store: MemoryStore, then EncryptedFileStore, empty."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        store = EncryptedFileStore(tmp_path / "tokens", key=KEY)
        yield store
        await store.aclose()


@pytest.fixture
def faulty(inner: TokenStore) -> FaultyStore:
    """A FaultyStore around ``inner``, with no fault armed."""
    return FaultyStore(inner)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until ``condition()`` holds (a safety limit, not a timing)."""
    with anyio.fail_after(10 * time_factor()):
        while not condition():
            await anyio.sleep(0)


async def call(store: TokenStore, operation: Operation) -> object:
    """One call of ``operation`` on the record "k" (at version 1), with its result."""
    if operation == "get":
        return await store.get("k")
    if operation == "put":
        return await store.put("k", b"v2", expected_version=1)
    if operation == "delete":
        return await store.delete("k")
    async with store.lock("k", ttl=10, wait=10) as lease:
        return lease.key


EXPECTED: dict[Operation, object] = {
    "get": Versioned(b"v", 1),
    "put": 2,
    "delete": True,
    "lock": "k",
}


# --- the wrapper itself ---------------------------------------------------------------------


async def test_is_a_token_store_around_inner(inner: TokenStore) -> None:
    """FaultyStore is a TokenStore and exposes the wrapped store as ``inner``."""
    faulty = FaultyStore(inner)
    assert isinstance(faulty, TokenStore)
    assert inner is faulty.inner


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_without_faults_every_call_goes_to_inner(
    faulty: FaultyStore, operation: Operation
) -> None:
    """With no fault armed, each operation answers what the inner store answers."""
    await faulty.inner.put("k", b"v", expected_version=None)
    assert EXPECTED[operation] == await call(faulty, operation)
    assert (0, 0) == (faulty.injected, faulty.armed)


async def test_inner_errors_pass_through(faulty: FaultyStore) -> None:
    """The inner store's own errors (a lost compare-and-set) reach the caller unchanged."""
    await faulty.put("k", b"v", expected_version=None)
    with pytest.raises(ConflictError):
        await faulty.put("k", b"w", expected_version=None)
    assert Versioned(b"v", 1) == await faulty.inner.get("k")


async def test_lock_is_the_inner_stores_lock(faulty: FaultyStore) -> None:
    """A lock held through the wrapper is held in the inner store, and released after the block."""

    async def hold_then_fail() -> None:
        async with faulty.lock("k", ttl=10, wait=0) as lease:
            assert "k" == lease.key
            with pytest.raises(LockTimeoutError):
                async with faulty.inner.lock("k", ttl=10, wait=0):
                    pass
            raise RuntimeError("the block fails")

    with pytest.raises(RuntimeError):
        await hold_then_fail()
    async with faulty.inner.lock("k", ttl=10, wait=0) as again:
        assert "k" == again.key


async def test_lock_checks_its_arguments_when_called(faulty: FaultyStore) -> None:
    """lock() rejects bad arguments at once, as the inner store does."""
    with pytest.raises(ValueError, match="ttl"):
        faulty.lock("k", ttl=0, wait=1)


async def test_aclose_closes_inner() -> None:
    """aclose() closes the inner store."""
    inner = ClosingStore()
    await FaultyStore(inner).aclose()
    assert inner.closed


def test_rejects_what_is_not_a_store() -> None:
    """Wrapping something that is not a TokenStore is a TypeError."""
    not_a_store: Any = object()
    with pytest.raises(TypeError, match="inner must be a TokenStore, not object"):
        FaultyStore(not_a_store)


async def test_repr_shows_inner_and_armed_faults_only(faulty: FaultyStore) -> None:
    """repr() names the inner store and the number of armed faults, never a value or a key."""
    await faulty.put("k", b"s3cret-value", expected_version=None)
    faulty.fail("get")
    faulty.stall(1, times=None)
    text = repr(faulty)
    assert f"FaultyStore({faulty.inner!r}, armed=2)" == text
    assert "s3cret" not in text
    assert str(KEY) not in text


# --- fail -----------------------------------------------------------------------------------


async def test_fail_put_twice_then_normal(faulty: FaultyStore) -> None:
    """fail("put", times=2): two puts raise StoreError and write nothing; the third writes."""
    faulty.fail("put", times=2)
    for _ in range(2):
        with pytest.raises(StoreError, match=r"^injected fault: put failed$"):
            await faulty.put("k", b"v", expected_version=None)
        assert None is await faulty.inner.get("k")
    assert 1 == await faulty.put("k", b"v", expected_version=None)
    assert (2, 0) == (faulty.injected, faulty.armed)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_fail_each_operation_before_the_inner_store(
    faulty: FaultyStore, operation: Operation
) -> None:
    """A failed call raises the injected StoreError and leaves the inner store untouched."""
    await faulty.inner.put("k", b"v", expected_version=None)
    faulty.fail(operation)
    with pytest.raises(StoreError) as raised:
        await call(faulty, operation)
    assert f"injected fault: {operation} failed" == str(raised.value)
    assert StoreError is type(raised.value)
    assert Versioned(b"v", 1) == await faulty.inner.get("k")
    async with faulty.inner.lock("k", ttl=10, wait=0):  # not left held
        pass
    assert EXPECTED[operation] == await call(faulty, operation)


async def test_fail_lock_strikes_on_entering_the_block(faulty: FaultyStore) -> None:
    """A lock fault strikes when the block is entered, not when lock() is called."""
    faulty.fail("lock")
    held = faulty.lock("k", ttl=10, wait=0)
    assert (0, 1) == (faulty.counts["lock"], faulty.armed)
    with pytest.raises(StoreError, match="injected fault: lock failed"):
        async with held:
            pytest.fail("the block must not run")
    assert (1, 0) == (faulty.counts["lock"], faulty.armed)


async def test_fail_until_heal(faulty: FaultyStore) -> None:
    """fail(times=None) fails every call until heal()."""
    faulty.fail("get", times=None)
    for _ in range(3):
        with pytest.raises(StoreError):
            await faulty.get("k")
    assert (3, 1) == (faulty.injected, faulty.armed)
    faulty.heal()
    assert None is await faulty.get("k")


async def test_fail_with_a_chosen_instance(faulty: FaultyStore) -> None:
    """An error instance is raised as it is, every time."""
    error = LockTimeoutError("someone else holds it")
    faulty.fail("lock", times=2, error=error)
    for _ in range(2):
        with pytest.raises(LockTimeoutError) as raised:
            async with faulty.lock("k", ttl=10, wait=10):
                pass
        assert error is raised.value


async def test_fail_with_a_chosen_class(faulty: FaultyStore) -> None:
    """An error class is raised with the injected-fault message."""
    faulty.fail("put", error=DiskFullError)
    with pytest.raises(DiskFullError, match=r"^injected fault: put failed$"):
        await faulty.put("k", b"v", expected_version=None)


def test_bad_arguments_are_refused() -> None:
    """Unknown operations, times below 1, bad errors and negative stalls are refused at once."""
    faulty = FaultyStore(MemoryStore())
    bad: Any = "list"
    read: Any = "get"
    lock: Any = "lock"
    os_error: Any = OSError("disk full")
    os_error_class: Any = OSError
    with pytest.raises(ValueError, match="unknown operation 'list'"):
        faulty.fail(bad)
    with pytest.raises(ValueError, match="times"):
        faulty.fail("put", times=0)
    with pytest.raises(TypeError, match="DeviceFlowError"):
        faulty.fail("put", error=os_error)
    with pytest.raises(TypeError, match="DeviceFlowError"):
        faulty.fail("put", error=os_error_class)
    with pytest.raises(TypeError, match="NeedsTwoArgumentsError"):
        faulty.fail("put", error=NeedsTwoArgumentsError)
    with pytest.raises(ValueError, match="seconds"):
        faulty.stall(-1)
    with pytest.raises(ValueError, match="seconds"):
        faulty.stall(math.nan)
    with pytest.raises(ValueError, match="at least one"):
        faulty.stall(1, operations=())
    with pytest.raises(ValueError, match="unknown operation 'list'"):
        faulty.stall(1, operations=("get", bad))
    with pytest.raises(ValueError, match="unknown operation 'get'"):
        faulty.fail_after_write(read)
    with pytest.raises(ValueError, match="unknown operation 'lock'"):
        faulty.fail_after_write(lock)
    assert 0 == faulty.armed


# --- stall ----------------------------------------------------------------------------------


async def test_stall_delays_one_call_while_others_run(faulty: FaultyStore) -> None:
    """A stalled get waits while other calls complete, then answers normally once healed."""
    await faulty.inner.put("k", b"v", expected_version=None)
    faulty.stall(60, operations=("get",), times=1)
    done: list[object] = []

    async def stalled() -> None:
        done.append(await faulty.get("k"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stalled)
        await until(lambda: faulty.injected == 1)
        done.append(await faulty.get("k"))  # the stall is used up: not delayed
        done.append(await faulty.put("other", b"x", expected_version=None))  # not a get
        assert [Versioned(b"v", 1), 1] == done
        faulty.heal()
    assert [Versioned(b"v", 1), 1, Versioned(b"v", 1)] == done


async def test_a_short_stall_ends_by_itself(faulty: FaultyStore) -> None:
    """A finite stall ends on its own and the call then runs normally."""
    faulty.stall(0.001, operations="put")
    assert 1 == await faulty.put("k", b"v", expected_version=None)
    assert (1, 0) == (faulty.injected, faulty.armed)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_stall_defaults_to_every_operation(faulty: FaultyStore, operation: Operation) -> None:
    """stall() with no operations delays each of the four; times=None keeps it armed."""
    await faulty.inner.put("k", b"v", expected_version=None)
    faulty.stall(math.inf, times=None)
    done: list[object] = []

    async def stalled() -> None:
        done.append(await call(faulty, operation))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stalled)
        await until(lambda: faulty.injected == 1)
        await faulty.inner.put("other", b"x", expected_version=None)
        assert ([], 1) == (done, faulty.armed)
        faulty.heal()
    assert [EXPECTED[operation]] == done


async def test_heal_ends_every_stall_under_way(faulty: FaultyStore) -> None:
    """heal() releases every stalled call at once, and each then runs normally."""
    await faulty.inner.put("k", b"v", expected_version=None)
    faulty.stall(math.inf, operations="get", times=None)
    done: list[object] = []

    async def stalled() -> None:
        done.append(await faulty.get("k"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stalled)
        tasks.start_soon(stalled)
        await until(lambda: faulty.injected == 2)
        assert [] == done
        faulty.heal()
    assert [Versioned(b"v", 1)] * 2 == done


async def test_stalled_lock_waits_before_acquiring(faulty: FaultyStore) -> None:
    """A stalled lock has not taken the lock yet: another task can take and release it."""
    faulty.stall(60, operations="lock")
    order: list[str] = []

    async def stalled() -> None:
        async with faulty.lock("k", ttl=10, wait=10):
            order.append("stalled holder")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stalled)
        await until(lambda: faulty.injected == 1)
        async with faulty.lock("k", ttl=10, wait=0):
            order.append("other holder")
        faulty.heal()
    assert ["other holder", "stalled holder"] == order


async def test_cancelled_stall_writes_nothing(faulty: FaultyStore) -> None:
    """A call cancelled during its stall never reaches the inner store."""
    faulty.stall(60, operations="put")

    async def stalled() -> None:
        await faulty.put("k", b"v", expected_version=None)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stalled)
        await until(lambda: faulty.injected == 1)
        tasks.cancel_scope.cancel()
    assert None is await faulty.inner.get("k")


# --- fail_after_write -----------------------------------------------------------------------


async def test_fail_after_write_put_lands_then_raises(faulty: FaultyStore) -> None:
    """fail_after_write("put"): the value is written, the caller gets StoreError anyway."""
    faulty.fail_after_write("put", times=1)
    with pytest.raises(StoreError) as raised:
        await faulty.put("k", b"s3cret-value", expected_version=None)
    assert "injected fault: put failed after the write reached the store" == str(raised.value)
    assert Versioned(b"s3cret-value", 1) == await faulty.inner.get("k")
    with pytest.raises(ConflictError):  # a blind retry of the same write now loses
        await faulty.put("k", b"s3cret-value", expected_version=None)
    assert (1, 0) == (faulty.injected, faulty.armed)


async def test_fail_after_write_delete_lands_then_raises(faulty: FaultyStore) -> None:
    """fail_after_write("delete"): the record is gone, the caller gets StoreError anyway."""
    await faulty.put("k", b"v", expected_version=None)
    faulty.fail_after_write("delete", error=DiskFullError)
    with pytest.raises(DiskFullError, match="after the write"):
        await faulty.delete("k", expected_version=1)
    assert None is await faulty.inner.get("k")


async def test_fail_after_write_lets_the_inner_error_through(faulty: FaultyStore) -> None:
    """When the inner write itself fails, its error is raised and nothing is injected."""
    faulty.fail_after_write("put")
    with pytest.raises(ConflictError):
        await faulty.put("k", b"v", expected_version=5)
    assert (0, 0) == (faulty.injected, faulty.armed)


# --- order ----------------------------------------------------------------------------------


async def test_failures_apply_in_the_order_armed(faulty: FaultyStore) -> None:
    """Two failures armed on one operation strike one call each, in the order armed."""
    faulty.fail("put", error=DiskFullError("first"))
    faulty.fail("put", error=LockTimeoutError("second"))
    with pytest.raises(DiskFullError, match="first"):
        await faulty.put("k", b"v", expected_version=None)
    with pytest.raises(LockTimeoutError, match="second"):
        await faulty.put("k", b"v", expected_version=None)
    assert 1 == await faulty.put("k", b"v", expected_version=None)


async def test_a_stall_then_a_failure_strike_one_call(faulty: FaultyStore) -> None:
    """A stall armed before a failure delays the same call that then fails."""
    faulty.stall(0, operations="put")
    faulty.fail("put")
    with pytest.raises(StoreError):
        await faulty.put("k", b"v", expected_version=None)
    assert (2, 0) == (faulty.injected, faulty.armed)


async def test_a_failure_then_a_stall_strike_two_calls(faulty: FaultyStore) -> None:
    """A failure armed before a stall ends the first call; the stall waits for the next one."""
    faulty.fail("put")
    faulty.stall(0, operations="put")
    with pytest.raises(StoreError):
        await faulty.put("k", b"v", expected_version=None)
    assert (1, 1) == (faulty.injected, faulty.armed)
    assert 1 == await faulty.put("k", b"v", expected_version=None)
    assert (2, 0) == (faulty.injected, faulty.armed)


async def test_heal_during_a_stall_drops_the_calls_failure(faulty: FaultyStore) -> None:
    """heal() during a stall ends it, and the failure armed after it no longer strikes."""
    faulty.stall(math.inf, operations="put")
    faulty.fail("put")
    versions: list[int] = []

    async def stalled() -> None:
        versions.append(await faulty.put("k", b"v", expected_version=None))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stalled)
        await until(lambda: faulty.injected == 1)
        faulty.heal()
    assert [1] == versions
    assert (1, 0) == (faulty.injected, faulty.armed)


# --- lose_everything ------------------------------------------------------------------------


async def test_lose_everything_deletes_every_record_seen(faulty: FaultyStore) -> None:
    """Records written or read through the wrapper are deleted; others stay, locks stay held."""
    await faulty.put("a", b"1", expected_version=None)
    await faulty.put("b", b"2", expected_version=None)
    await faulty.inner.put("read", b"3", expected_version=None)
    await faulty.get("read")
    await faulty.inner.put("unseen", b"4", expected_version=None)
    await faulty.delete("never-there")
    async with faulty.lock("a", ttl=10, wait=0):
        assert 3 == await faulty.lose_everything()
        with pytest.raises(LockTimeoutError):
            async with faulty.inner.lock("a", ttl=10, wait=0):
                pass
    for key in ("a", "b", "read"):
        assert None is await faulty.inner.get(key)
    assert Versioned(b"4", 1) == await faulty.inner.get("unseen")
    assert 1 == await faulty.put("a", b"again", expected_version=None)
    assert 0 == await FaultyStore(faulty.inner).lose_everything()


async def test_lose_everything_ignores_faults_and_counts(faulty: FaultyStore) -> None:
    """lose_everything() is not a client call: no fault strikes it and it is not counted."""
    await faulty.put("k", b"v", expected_version=None)
    faulty.fail("delete", times=None)
    assert 1 == await faulty.lose_everything()
    assert (0, 0, 1) == (faulty.counts["delete"], faulty.injected, faulty.armed)
    assert 0 == await faulty.lose_everything()


# --- heal, counts, injected -----------------------------------------------------------------


async def test_heal_disarms_everything_and_keeps_the_tallies(faulty: FaultyStore) -> None:
    """heal() disarms every fault; counts and injected stay as they were."""
    faulty.fail("get")
    faulty.fail("put", times=None)
    faulty.fail_after_write("delete", times=None)
    faulty.stall(math.inf, times=None)
    faulty.stall(0, operations="lock", times=None)
    with pytest.raises(StoreError):
        await faulty.put("k", b"v", expected_version=None)
    assert 1 == faulty.injected  # the put failure, armed before the stall, ends the call
    faulty.heal()
    assert 0 == faulty.armed
    assert 1 == await faulty.put("k", b"v", expected_version=None)
    assert Versioned(b"v", 1) == await faulty.get("k")
    assert await faulty.delete("k")
    async with faulty.lock("k", ttl=10, wait=0):
        pass
    assert {"get": 1, "put": 2, "delete": 1, "lock": 1} == faulty.counts
    assert 1 == faulty.injected


async def test_counts_every_call_faulted_or_not(faulty: FaultyStore) -> None:
    """counts has one entry per operation, counting failed calls too; it is a copy."""
    assert {"get": 0, "put": 0, "delete": 0, "lock": 0} == faulty.counts
    faulty.fail("get", times=2)
    for _ in range(2):
        with pytest.raises(StoreError):
            await faulty.get("k")
    assert None is await faulty.get("k")
    await faulty.put("k", b"v", expected_version=None)
    await faulty.delete("k")
    await faulty.delete("k")
    async with faulty.lock("k", ttl=10, wait=0):
        pass
    counts = faulty.counts
    assert {"get": 3, "put": 1, "delete": 2, "lock": 1} == counts
    counts["get"] = 99
    assert 3 == faulty.counts["get"]
    assert 2 == faulty.injected
