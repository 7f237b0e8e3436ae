"""Adaptive concurrency, the rate gate and the retry budget, end to end against the emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import aiohttp
import anyio
import pytest

from resilience import Backoff, LocalStore, ResilienceMiddleware, RetryBudgetSettings
from resilience._store import LocalStore as _LocalStore
from resilience.testing import Emulator, Fault
from tests.conftest import attempts

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.001, multiplier=2, max_delay=0.004)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(generation_time=0.01) as emulator:
        yield emulator


def local(mw: ResilienceMiddleware) -> _LocalStore:
    assert isinstance(mw.store, _LocalStore)
    return mw.store


async def batch(session: aiohttp.ClientSession, emu: Emulator, n: int, prefix: str) -> list[int]:
    async def one(i: int) -> int:
        async with session.post(emu.url / "v1/generate", json={"job": f"{prefix}{i}"}) as resp:
            await resp.read()
            return resp.status

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_plan_limit_is_learned_and_throttles_spend_no_attempts(
    emu: Emulator, logs: list[MutableMapping[str, Any]]
) -> None:
    emu.configure(plan_concurrency=4)
    mw = ResilienceMiddleware(max_attempts=1, backoff=FAST, initial_concurrency=2)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        statuses = await batch(s, emu, 80, "j")
    assert statuses == [200] * 80  # max_attempts=1, yet every throttled job got through
    stats = emu.stats
    assert stats.max_in_flight <= 4
    assert stats.duplicates == 0
    assert stats.requests <= 80 * 1.3
    assert 4 <= mw.concurrency_limit <= 6
    cuts = [e for e in logs if e["event"] == "resilience.limit" and e["why"] == "cut"]
    assert cuts
    assert cuts[0]["log_level"] == "info"
    assert any(e["outcome"] == "throttled" for e in attempts(logs))
    assert local(mw).limiter.in_flight == 0


async def test_a_429_resends_when_a_permit_frees_not_after_a_timer(emu: Emulator) -> None:
    emu.configure(plan_concurrency=1, generation_time=0.05)
    # The park timeout (the backoff) is 5 s: only a completion can wake the throttled request.
    slow = Backoff(initial=5, multiplier=1, max_delay=5, jitter="none")
    mw = ResilienceMiddleware(backoff=slow, initial_concurrency=2)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with anyio.fail_after(2):
            statuses = await batch(s, emu, 2, "p")
    assert statuses == [200, 200]


async def test_the_ceiling_caps_concurrency(emu: Emulator) -> None:
    mw = ResilienceMiddleware(backoff=FAST, max_concurrency=3, initial_concurrency=3)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        assert await batch(s, emu, 30, "c") == [200] * 30
    assert emu.stats.max_in_flight <= 3
    assert mw.concurrency_limit == 3


async def test_one_store_shares_the_limit_between_sessions(emu: Emulator) -> None:
    emu.configure(plan_concurrency=3)
    store = LocalStore(max_concurrency=10, initial_concurrency=2)
    first = ResilienceMiddleware(store=store, backoff=FAST)
    second = ResilienceMiddleware(store=store, backoff=FAST)
    async with (
        aiohttp.ClientSession(middlewares=(first,)) as a,
        aiohttp.ClientSession(middlewares=(second,)) as b,
    ):
        results = await asyncio.gather(batch(a, emu, 40, "a"), batch(b, emu, 40, "b"))
    assert list(results) == [[200] * 40, [200] * 40]
    assert first.concurrency_limit == second.concurrency_limit == store.concurrency_limit
    assert emu.stats.max_in_flight <= 3
    assert emu.stats.requests <= 80 * 1.3


async def test_streamed_response_holds_its_permit_until_released(emu: Emulator) -> None:
    mw = ResilienceMiddleware(backoff=FAST, max_concurrency=1, initial_concurrency=1)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        # A body too big to arrive with the headers: the response stays open until read.
        emu.inject(Fault.status(200, body=b"x" * 4_000_000), times=1)
        first = await s.get(emu.url / "v1/ping")
        second = asyncio.ensure_future(s.get(emu.url / "v1/ping"))
        await asyncio.sleep(0.05)
        assert not second.done()  # still waiting for the only permit
        assert len(await first.read()) == 4_000_000
        resp = await asyncio.wait_for(second, 2)
        resp.release()
        assert local(mw).limiter.in_flight == 0


async def test_no_permit_leaks_after_errors_and_cancellation(emu: Emulator) -> None:
    emu.configure(plan_concurrency=2, reset_rate=0.2, transient_rate=0.2, fatal_rate=0.1)
    mw = ResilienceMiddleware(backoff=FAST, max_attempts=3)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:

        async def one(i: int) -> None:
            headers = {"Idempotency-Key": f"k{i}"}
            try:
                async with s.post(emu.url / "v1/generate", json={}, headers=headers) as r:
                    await r.read()
            except aiohttp.ClientError:
                pass

        tasks = [asyncio.ensure_future(one(i)) for i in range(40)]
        await asyncio.sleep(0.03)
        for task in tasks[::3]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    store = local(mw)
    assert store.limiter.in_flight == 0
    assert store.limiter.waiting == 0


async def test_rate_limited_closes_the_gate_for_every_request(emu: Emulator) -> None:
    emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=150), times=1)
    mw = ResilienceMiddleware(backoff=FAST)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        start = loop.time()
        first = asyncio.ensure_future(s.get(emu.url / "v1/ping"))
        await asyncio.sleep(0.03)  # the 429 has closed the gate by now
        async with s.get(emu.url / "v1/ping") as resp:  # another request, same origin
            assert resp.status == 200
            assert loop.time() - start >= 0.15
        (await first).release()
    assert emu.stats.requests == 3  # the 429, then one send each: nobody hammered


async def test_paced_after_the_gate_without_a_new_burst(emu: Emulator) -> None:
    emu.configure(rate_limit=200.0, rate_burst=5, generation_time=0.0)
    mw = ResilienceMiddleware(backoff=FAST)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        statuses = await batch(s, emu, 100, "r")
    assert statuses == [200] * 100
    assert emu.stats.by_code["RATE_LIMITED"] <= 20
    assert local(mw).pacer(str(emu.url.origin())).rate is not None


async def test_retry_budget_stops_a_retry_storm(
    emu: Emulator, logs: list[MutableMapping[str, Any]]
) -> None:
    emu.configure(transient_rate=1.0)  # a dead upstream
    budget = RetryBudgetSettings(ratio=0.2, min_per_second=0.1, ttl=10)
    # The budget alone (the circuit breaker would hold these requests instead).
    mw = ResilienceMiddleware(
        backoff=FAST, max_attempts=5, retry_budget=budget, circuit_breaker=None
    )
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        statuses = await batch(s, emu, 50, "b")
    assert all(status >= 500 for status in statuses)
    # 50 requests + at most 20 % of them + a reserve of 1; without the budget: 250.
    assert emu.stats.requests <= 50 + 10 + 1
    reasons = {e["reason"] for e in attempts(logs) if e["outcome"] == "give_up"}
    assert "retry_budget" in reasons


async def test_budget_can_be_turned_off(emu: Emulator) -> None:
    emu.configure(transient_rate=1.0)
    mw = ResilienceMiddleware(backoff=FAST, max_attempts=3, retry_budget=None, circuit_breaker=None)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        await batch(s, emu, 20, "n")
    assert emu.stats.requests == 60


async def test_throttles_do_not_touch_the_budget(emu: Emulator) -> None:
    emu.configure(plan_concurrency=2)
    budget = RetryBudgetSettings(ratio=0.0, min_per_second=0.0)  # no retries at all
    mw = ResilienceMiddleware(backoff=FAST, retry_budget=budget, initial_concurrency=8)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        assert await batch(s, emu, 30, "t") == [200] * 30
