"""The adaptive limiter's queue: free slots without an await, FIFO waiters, no lost hand-over."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from resilience._concurrency import AdaptiveLimiter, ConcurrencyPermit

pytestmark = pytest.mark.anyio


async def test_a_free_slot_is_taken_without_waiting() -> None:
    limiter = AdaptiveLimiter(initial=2)
    first, second = limiter.try_acquire(), limiter.try_acquire()
    assert isinstance(first, ConcurrencyPermit)
    assert isinstance(second, ConcurrencyPermit)
    assert limiter.try_acquire() is None
    assert limiter.in_flight == 2


async def test_waiters_are_served_first_come_first_served() -> None:
    limiter = AdaptiveLimiter(initial=1)
    held = limiter.try_acquire()
    assert held is not None
    order: list[int] = []

    async def wait(n: int) -> None:
        permit = await limiter.acquire()
        order.append(n)
        limiter.release(permit)

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(wait, n)
            await anyio.wait_all_tasks_blocked()
        assert limiter.waiting == 5
        limiter.release(held)
    assert order == [0, 1, 2, 3, 4]
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_a_newcomer_cannot_take_a_slot_handed_to_a_waiter() -> None:
    limiter = AdaptiveLimiter(initial=1)
    held = limiter.try_acquire()
    assert held is not None
    got: list[ConcurrencyPermit] = []

    async def wait() -> None:
        got.append(await limiter.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        limiter.release(held)  # handed to the waiter, which has not run yet
        assert limiter.try_acquire() is None
    assert len(got) == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancelled_while_handed_a_slot_gives_it_to_the_next() -> None:
    limiter = AdaptiveLimiter(initial=1)
    held = limiter.try_acquire()
    assert held is not None
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    await anyio.wait_all_tasks_blocked()
    limiter.release(held)  # the slot is handed to the first waiter...
    first.cancel()  # ...cancelled before it could run
    with anyio.fail_after(5):
        permit = await second  # the slot was passed on, not lost
    assert first.cancelled()
    limiter.release(permit)
    assert (limiter.in_flight, limiter.waiting, limiter._reserved) == (0, 0, 0)


async def test_growth_wakes_as_many_waiters_as_there_is_new_room() -> None:
    limiter = AdaptiveLimiter(initial=2)
    held = [limiter.try_acquire(), limiter.try_acquire()]
    got: list[ConcurrencyPermit] = []

    async def wait() -> None:
        got.append(await limiter.acquire())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert held[0] is not None
        limiter.on_success(held[0])  # slow start: 2 -> 3, one more slot
        await anyio.wait_all_tasks_blocked()
        assert len(got) == 1
        tg.cancel_scope.cancel()
    assert limiter.waiting == 0
