"""A store's timeout measures the server, not the queue (stores/_turns.py).

A burst of calls beyond the Redis pool's connections waits its turn for as long as Redis keeps
answering, and fails only once Redis has answered nothing for the store's timeout.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable

import anyio
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from _redis import RedisProcess
from deviceflow.exceptions import StoreError
from deviceflow.stores import RedisStore, generate_key
from deviceflow.stores._turns import Turns, TurnTimeout, deadline
from helpers import time_factor

RedisFactory = Callable[..., RedisProcess]


async def test_turns_are_handed_out_first_come_first_served() -> None:
    turns = Turns(1, patience=60)
    await turns.take()
    order: list[int] = []

    async def queued(n: int) -> None:
        await turns.take()
        order.append(n)
        turns.give()

    async with anyio.create_task_group() as group:
        for n in range(5):
            group.start_soon(queued, n)
            await asyncio.sleep(0)  # each one queues before the next starts
        turns.give()
    assert [0, 1, 2, 3, 4] == order


async def test_a_queued_call_waits_while_the_server_answers_others() -> None:
    """Queued longer than ``patience`` in all, but the server answered within every ``patience``."""
    patience = 0.2 * time_factor()
    turns = Turns(1, patience=patience)
    await turns.take()
    waiting = asyncio.ensure_future(turns.take())
    started = time.monotonic()
    while time.monotonic() - started < 3 * patience:
        await asyncio.sleep(patience / 4)
        turns.answered()  # the holder's commands keep getting replies
    assert not waiting.done()
    turns.give()
    await waiting  # its turn, not a TurnTimeout


async def test_a_queued_call_gives_up_when_the_server_answers_nothing() -> None:
    turns = Turns(1, patience=0.1 * time_factor())
    await turns.take()
    with anyio.fail_after(10 * time_factor()), pytest.raises(TurnTimeout, match="answered nothing"):
        await turns.take()
    turns.give()
    await turns.take()  # the turn is still there: the timed-out caller took none


async def test_a_cancelled_caller_loses_no_turn() -> None:
    turns = Turns(1, patience=60)
    await turns.take()
    cancelled = asyncio.ensure_future(turns.take())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    turns.give()
    with anyio.fail_after(5 * time_factor()):
        await turns.take()  # not held by the cancelled caller


async def test_a_turn_handed_to_a_caller_cancelled_in_the_same_step_is_passed_on() -> None:
    turns = Turns(1, patience=60)
    await turns.take()
    first = asyncio.ensure_future(turns.take())
    second = asyncio.ensure_future(turns.take())
    await asyncio.sleep(0)
    turns.give()  # hands the turn to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    with anyio.fail_after(5 * time_factor()):
        await second


def test_turns_need_a_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Turns(0, patience=1)


@pytest.mark.redis
async def test_a_burst_beyond_the_pool_outlasts_the_timeout_and_fails_no_call(
    redis_factory: RedisFactory,
) -> None:
    """Two connections (one turn, one kept for watches), a timeout far shorter than the queue:
    every call succeeds. The burst doubles until the queue has lasted over twice the timeout."""
    server = redis_factory()
    # Each call's own round trip stays far inside it, even on a loaded machine (0.5 s once
    # failed there, when another worker's tests kept both cores busy).
    timeout = 1.0 * time_factor()
    pool = BlockingConnectionPool.from_url(server.url, max_connections=2, timeout=timeout)
    client = Redis.from_pool(pool)
    store = RedisStore(client, key=generate_key(), timeout=timeout)
    try:
        await store.put("k", b"v", expected_version=None)
        burst, lasted = 1000, 0.0
        while lasted < 2 * timeout:
            started = time.monotonic()
            async with anyio.create_task_group() as group:
                for _ in range(burst):
                    group.start_soon(store.get, "k")
            lasted = time.monotonic() - started
            burst *= 2
            assert burst < 1_000_000, "the queue never outlasted the timeout"
    finally:
        await store.aclose()
        await client.aclose()


@pytest.mark.redis
async def test_a_frozen_redis_fails_every_queued_call(redis_factory: RedisFactory) -> None:
    """However long the queue, a Redis that answers nothing fails each call after about the
    timeout: the queue does not turn a stuck server into a hang."""
    server = redis_factory()
    pool = BlockingConnectionPool.from_url(server.url, max_connections=3, timeout=0.5)
    client = Redis.from_pool(pool)
    store = RedisStore(client, key=generate_key(), timeout=0.5)
    failures: list[BaseException] = []

    async def call() -> None:
        try:
            await store.get("k")
        except StoreError as exc:
            failures.append(exc)

    try:
        await store.put("k", b"v", expected_version=None)
        server.pause()
        try:
            with anyio.fail_after(10 * time_factor()):
                async with anyio.create_task_group() as group:
                    for _ in range(200):
                        group.start_soon(call)
        finally:
            server.resume()
        assert 200 == len(failures)
        assert all("did not answer" in str(exc) for exc in failures)
        assert b"v" == (await store.get("k") or pytest.fail("lost")).value  # back once it answers
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_deadline_cuts_a_block_that_overruns() -> None:
    with pytest.raises(TimeoutError):
        async with deadline(0.01):
            await asyncio.sleep(60)


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def guarded() -> None:
        async with deadline(60):
            await asyncio.sleep(60)

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_reply_that_came_while_the_loop_was_busy_beats_the_deadline() -> None:
    """The loop is blocked past the deadline while the answer arrives: the answer wins, as it
    came long before the deadline and only the loop was late to read it."""
    left, right = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=left)
    try:

        async def command() -> bytes:
            async with deadline(0.05):
                return await reader.readline()

        task = asyncio.ensure_future(command())
        await asyncio.sleep(0)  # the command is waiting for its reply
        right.sendall(b"+OK\r\n")  # answered at once...
        time.sleep(0.2)  # ...but the loop is busy past the deadline
        assert b"+OK\r\n" == await task
    finally:
        writer.close()
        right.close()


async def test_a_deadline_in_a_task_being_cancelled_still_times_out() -> None:
    """A shielded clean-up (releasing a lock) in a task already being cancelled: its deadline
    is a TimeoutError there (a StoreError in the store), not the task's cancellation."""
    outcome: list[str] = []

    async def holder() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    async with deadline(0.01):
                        await asyncio.sleep(60)
                except TimeoutError:
                    outcome.append("timed out")

    task = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ["timed out"] == outcome


async def test_an_expired_deadline_leaves_no_cancellation_behind() -> None:
    """A block that turns the deadline's cancellation into an error of its own (as a library
    may) still has it taken back: the task is not left counted as being cancelled."""

    async def command() -> None:
        async with deadline(0.01):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise ConnectionError("the library's own error") from None

    with pytest.raises(ConnectionError):
        await command()
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):  # Task.cancelling() is new in 3.11
        assert 0 == task.cancelling()
    with pytest.raises(TimeoutError):  # and the next deadline is a timeout again
        async with deadline(0.01):
            await asyncio.sleep(60)


@pytest.mark.redis
async def test_stores_sharing_a_client_share_its_pool_without_exceeding_it(
    redis_factory: RedisFactory,
) -> None:
    """Three stores (three prefixes) on one client with a plain pool of 4 connections: a burst
    on all three at once never asks the pool for a fifth ("Too many connections")."""
    server = redis_factory()
    client = Redis.from_url(server.url, max_connections=4)
    key = generate_key()
    stores = [
        RedisStore(client, key=key, prefix=f"p{n}:", timeout=5 * time_factor()) for n in range(3)
    ]
    try:
        async with anyio.create_task_group() as group:
            for n in range(300):
                group.start_soon(stores[n % 3].get, "k")
    finally:
        for store in stores:
            await store.aclose()
        await client.aclose()


def test_a_queue_on_a_new_event_loop_gets_a_watchdog_of_its_own() -> None:
    """A loop that ended with callers queued leaves its watchdog behind; the next loop's
    callers are still failed after ``patience`` when nothing answers."""
    turns = Turns(1, patience=0.05 * time_factor())

    async def first_loop() -> None:
        await turns.take()  # the turn is never given back: everyone after it queues
        queued = asyncio.ensure_future(turns.take())
        await asyncio.sleep(0)  # queued, with the watchdog armed on this loop
        queued.cancel()

    async def second_loop() -> None:
        with anyio.fail_after(10 * time_factor()), pytest.raises(TurnTimeout):
            await turns.take()

    asyncio.run(first_loop())
    asyncio.run(second_loop())
