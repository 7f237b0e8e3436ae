"""RedisStore against a real redis-server: shared limits, leases, wake-ups, fallback, fleets."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError

from resilience import (
    DeadlineExceeded,
    Feedback,
    LocalStore,
    ResilienceMiddleware,
    RetryBudgetSettings,
    Signal,
    Store,
)
from resilience._quota import Quota
from resilience.redis import RedisStore
from resilience.redis._parking import PARK_POLL
from resilience.redis._scripts import source
from resilience.testing import Emulator
from tests.redis_server import RedisServer, free_port, holder, run_fleet, wake_delay

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "http://api.test"


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.connection_pool.disconnect()  # aclose() is redis-py >= 5.0.1


def store_events(logs: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "resilience.store" and e["action"] == action]


async def permits(raw: Redis, namespace: str) -> int:
    return int(await raw.zcard(f"resilience:{{{namespace}}}:permits"))


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll a predicate every 20 ms until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def no_permits(raw: Redis, namespace: str) -> bool:
    return await permits(raw, namespace) == 0


# --------------------------------------------------------------------------- the contract


def test_store_connects_lazily_and_hides_the_password() -> None:
    store = RedisStore.from_url("redis://:s3cret@127.0.0.1:1/0", namespace="acct-1")
    assert isinstance(store, Store)
    assert "s3cret" not in repr(store)
    assert "s3cret" not in store.redacted_url
    with pytest.raises(ValueError, match="namespace"):
        RedisStore.from_url("redis://127.0.0.1", namespace="a{b}")
    with pytest.raises(ValueError, match="scheme"):
        RedisStore.from_url("http://127.0.0.1", namespace="x")


async def test_happy_path_costs_two_round_trips(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    # The limits' own round trips (the breaker's are tests/test_breaker_redis.py's).
    async with RedisStore.from_url(server.url, namespace=namespace, circuit_breaker=None) as store:
        store.deposit_request()
        admission = await store.admit(ORIGIN, None)
        assert await permits(raw, namespace) == 1
        await admission.report(Feedback(Signal.SUCCESS))
        admission.release()
        admission.release()  # idempotent
        await store.drain()
        assert await permits(raw, namespace) == 0
        assert store.stats().round_trips == {"acquire": 1, "release": 1}


async def test_back_to_back_requests_cost_one_round_trip_each(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    async with RedisStore.from_url(server.url, namespace=namespace, circuit_breaker=None) as store:
        for _ in range(10):
            admission = await store.admit(ORIGIN, None)
            await admission.report(Feedback(Signal.SUCCESS))
            admission.release()  # rides on the next acquire
        await store.drain()
        trips = store.stats().round_trips
        assert trips["acquire"] == 10
        assert trips.get("release", 0) <= 1
        assert await permits(raw, namespace) == 0


async def test_limit_follows_the_local_store_rules(server: RedisServer, namespace: str) -> None:
    """The same sequence of sends and answers moves both stores' limits identically."""
    local = LocalStore(initial_concurrency=2, max_concurrency=9)
    async with RedisStore.from_url(
        server.url, namespace=namespace, initial_concurrency=2, max_concurrency=9
    ) as shared:
        stores: list[Store] = [local, shared]
        held: list[list[Any]] = [[], []]

        async def admit(n: int) -> None:
            for store, mine in zip(stores, held, strict=True):
                for _ in range(n):
                    mine.append(await store.admit(ORIGIN, time.monotonic() + 2))

        async def answer(index: int, signal: Signal) -> None:
            for mine in held:
                admission = mine.pop(index)
                await admission.report(Feedback(signal))
                admission.release()
            await shared.drain()

        trace: list[tuple[int, int]] = []
        ops = [
            ("admit", 2),
            ("ok", 0),
            ("ok", 0),  # slow start: 2 -> 3
            ("admit", 3),
            ("ok", 0),
            ("ok", 0),
            ("ok", 0),  # -> 4 -> 5
            ("admit", 5),
            ("limit", 4),
            ("limit", 3),  # cut once: 5 -> 4 older in flight
            ("ok", 0),
            ("ok", 0),
            ("ok", 0),  # +1/limit while half used
            ("admit", 4),
            ("ok", 0),
            ("ok", 0),
            ("ok", 0),
            ("ok", 0),  # -> 5
            ("admit", 1),
            ("limit", 0),  # nothing older in flight: floor 1
        ]
        for op, arg in ops:
            if op == "admit":
                await admit(arg)
            else:
                await answer(arg, Signal.SUCCESS if op == "ok" else Signal.CONCURRENCY)
            trace.append((local.concurrency_limit, shared.concurrency_limit))
        assert [a for a, _ in trace] == [b for _, b in trace], trace
        assert [a for a, _ in trace] == [2, 3, 3, 3, 4, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 2]


async def test_a_burst_of_plan_limit_429s_cuts_the_shared_limit_once(
    server: RedisServer, namespace: str
) -> None:
    settings: dict[str, Any] = {"namespace": namespace, "initial_concurrency": 6}
    async with (
        RedisStore.from_url(server.url, **settings) as a,
        RedisStore.from_url(server.url, **settings) as b,
    ):
        sent = [await (a if n % 2 else b).admit(ORIGIN, None) for n in range(6)]
        for n in (5, 4, 3):  # the three newest are turned away, in one round trip
            await sent[n].report(Feedback(Signal.CONCURRENCY))
            sent[n].release()
        await a.drain()
        await b.drain()
        assert a.concurrency_limit == 5  # cut once: older than the first rejected = 5
        after = await b.admit(ORIGIN, None)  # b sees the fleet's limit
        assert after.limit == 5
        await after.report(Feedback(Signal.CONCURRENCY))  # sent after the cut: cuts again
        assert b.concurrency_limit == 3  # 3 older requests still in flight
        after.release()
        for n in range(3):
            sent[n].release()


async def test_a_cut_does_not_count_requests_sent_after_the_rejected_one(
    server: RedisServer, namespace: str
) -> None:
    async with RedisStore.from_url(server.url, namespace=namespace, initial_concurrency=8) as s:
        older = [await s.admit(ORIGIN, None) for _ in range(5)]
        rejected = await s.admit(ORIGIN, None)
        await asyncio.sleep(0.05)  # well after it: these did not race it to the server
        newer = [await s.admit(ORIGIN, None) for _ in range(2)]
        await rejected.report(Feedback(Signal.CONCURRENCY))
        assert s.concurrency_limit == 5  # the 5 older ones, not the 7 others in flight
        for admission in (*older, rejected, *newer):
            admission.release()


async def test_ceiling_stops_growth_and_floor_is_one(server: RedisServer, namespace: str) -> None:
    async with RedisStore.from_url(
        server.url, namespace=namespace, initial_concurrency=2, max_concurrency=3
    ) as store:
        for _ in range(5):
            batch = [await store.admit(ORIGIN, None) for _ in range(store.concurrency_limit)]
            for admission in batch:
                await admission.report(Feedback(Signal.SUCCESS))
                admission.release()
            await store.drain()
        assert store.concurrency_limit == 3
        for _ in range(4):
            admission = await store.admit(ORIGIN, None)
            await admission.report(Feedback(Signal.CONCURRENCY))
            admission.release()
            await store.drain()
        assert store.concurrency_limit == 1


# --------------------------------------------------------------------------- waiting


async def test_a_waiter_is_woken_by_a_release_not_by_polling(
    server: RedisServer, namespace: str
) -> None:
    settings: dict[str, Any] = {"namespace": namespace, "max_concurrency": 1}
    async with (
        RedisStore.from_url(server.url, **settings) as a,
        RedisStore.from_url(server.url, **settings) as b,
    ):
        delay = await wake_delay(a, b, ORIGIN)
        # Woken by the release, not by the poll every PARK_POLL (a loaded machine took 0.1 s+).
        assert delay < PARK_POLL / 2, delay
        assert b.stats().round_trips["acquire"] == 2


async def test_wait_for_release_returns_when_the_fleet_frees_a_permit(
    server: RedisServer, namespace: str
) -> None:
    async with (
        RedisStore.from_url(server.url, namespace=namespace) as a,
        RedisStore.from_url(server.url, namespace=namespace) as b,
    ):
        held = await a.admit(ORIGIN, None)
        rejected = await b.admit(ORIGIN, None)  # the one the plan limit turned away
        rejected.release()
        waiter = asyncio.create_task(rejected.wait_for_release(5.0))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        held.release()
        await asyncio.wait_for(waiter, 1.0)
        assert time.monotonic() - started < 0.2


# --------------------------------------------------------------------------- gate, pace, budget


async def test_a_rate_limit_closes_the_gate_for_the_whole_namespace(
    server: RedisServer, namespace: str, logs: list[dict[str, Any]]
) -> None:
    async with (
        RedisStore.from_url(server.url, namespace=namespace) as a,
        RedisStore.from_url(server.url, namespace=namespace) as b,
    ):
        admission = await a.admit(ORIGIN, None)
        await admission.report(Feedback(Signal.RATE, 0.4))
        admission.release()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="gate"):
            await b.admit(ORIGIN, started + 0.1)
        assert time.monotonic() - started < 0.05  # fails fast, does not sleep into it
        other = await b.admit("http://other.test", None)  # gates are per origin
        other.release()
        admission = await b.admit(ORIGIN, None)
        assert time.monotonic() - started > 0.3
        admission.release()
        assert len([e for e in logs if e.get("event") == "resilience.gate"]) == 1


async def test_a_spent_announced_quota_holds_the_whole_namespace_without_a_cut(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    async with (
        RedisStore.from_url(server.url, namespace=namespace) as a,
        RedisStore.from_url(server.url, namespace=namespace) as b,
    ):
        admission = await a.admit(ORIGIN, None)
        await admission.report(Feedback(Signal.SUCCESS, quota=Quota(10, None, 0, 0.4)))
        admission.release()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="gate"):
            await b.admit(ORIGIN, started + 0.1)  # the other process is held too
        admission = await b.admit(ORIGIN, None)
        assert time.monotonic() - started > 0.3
        admission.release()
        key = f"resilience:{{{namespace}}}:rate:{ORIGIN}"
        assert await raw.hget(key, "rate") is None  # a quota is no 429: no pacing started


async def test_an_announced_quota_is_counted_down_by_the_whole_fleet(
    server: RedisServer, namespace: str
) -> None:
    async with (
        RedisStore.from_url(server.url, namespace=namespace) as a,
        RedisStore.from_url(server.url, namespace=namespace) as b,
    ):
        admission = await a.admit(ORIGIN, None)
        await admission.report(Feedback(Signal.SUCCESS, quota=Quota(10, None, 3, 0.6)))
        admission.release()
        await a.drain()
        for store in (b, a, b):  # the three the server said remain, from either process
            admission = await store.admit(ORIGIN, None)
            admission.release()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="gate"):
            await a.admit(ORIGIN, started + 0.1)  # spent: held until the reset, no 429 sent
        admission = await b.admit(ORIGIN, None)  # the reset: the whole quota again
        assert time.monotonic() - started > 0.3
        admission.release()


async def test_a_counted_send_that_fails_leaves_the_fleets_count_and_stays_spent(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    # Another origin's request stays in flight throughout, so the leases held are no bound on
    # this origin's sends in flight: the failed send's release must take it out of flight.
    async with RedisStore.from_url(server.url, namespace=namespace) as store:
        other = await store.admit("http://other.test", None)
        first = await store.admit(ORIGIN, None)
        await first.report(Feedback(Signal.SUCCESS, quota=Quota(10, None, 5, 60.0)))
        first.release()
        await store.drain()
        sends = [await store.admit(ORIGIN, None) for _ in range(3)]
        sends[0].release()  # a transport error: no answer, maybe counted by the server
        await sends[1].report(Feedback(Signal.SUCCESS, quota=Quota(10, None, 4, 60.0)))
        sends[1].release()
        await store.drain()
        key = f"resilience:{{{namespace}}}:rate:{ORIGIN}"
        # 4 remaining, the failed send spent, the third still in flight
        assert await raw.hmget(key, "qleft", "qleast", "qfly") == ["3", "4", "1"]
        sends[2].release()
        other.release()


async def test_the_fleet_holds_a_spent_quota_to_its_aligned_end_then_lets_one_probe_go(
    server: RedisServer, namespace: str
) -> None:
    async with (
        RedisStore.from_url(server.url, namespace=namespace) as a,
        RedisStore.from_url(server.url, namespace=namespace) as b,
    ):
        admission = await a.admit(ORIGIN, None)
        spent = Quota(10, 1.0, 0, 0.9, aligned=0.1)  # named: 0.9 s; aligned: 0.1 s
        await admission.report(Feedback(Signal.SUCCESS, quota=spent))
        admission.release()
        started = time.monotonic()
        probe = await b.admit(ORIGIN, None)
        assert 0.1 <= time.monotonic() - started < 0.6
        with pytest.raises(DeadlineExceeded):
            await a.admit(ORIGIN, time.monotonic() + 0.1)  # the probe is out: the rest wait
        refilled = Quota(10, 1.0, 9, 1.0, aligned=0.9)
        await probe.report(Feedback(Signal.SUCCESS, quota=refilled))
        probe.release()
        await b.drain()
        admission = await a.admit(ORIGIN, time.monotonic() + 0.3)  # confirmed: the rest go
        admission.release()


async def test_pacing_after_a_rate_limit_is_shared(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    async with (
        RedisStore.from_url(server.url, namespace=namespace) as a,
        RedisStore.from_url(server.url, namespace=namespace) as b,
    ):
        for _ in range(10):  # traffic at ~100/s: the rate the server let through
            admission = await a.admit(ORIGIN, None)
            await admission.report(Feedback(Signal.SUCCESS))
            admission.release()
            await asyncio.sleep(0.01)
        await a.drain()
        admission = await a.admit(ORIGIN, None)
        await admission.report(Feedback(Signal.RATE, 0.0))
        admission.release()
        rate = float(await raw.hget(f"resilience:{{{namespace}}}:rate:{ORIGIN}", "rate") or 0)
        assert 20 <= rate <= 150  # cut to 70 % of it
        started = time.monotonic()
        for n in range(8):
            store = a if n % 2 else b
            admission = await store.admit(ORIGIN, None)
            admission.release()
        # Eight sends from two processes are spaced by one pace, not bursted.
        assert time.monotonic() - started >= 0.8 * 7 / rate


async def test_the_retry_budget_is_shared(server: RedisServer, namespace: str) -> None:
    budget = RetryBudgetSettings(ratio=0.5, min_per_second=0.0, ttl=10.0)
    async with (
        RedisStore.from_url(server.url, namespace=namespace, retry_budget=budget) as a,
        RedisStore.from_url(server.url, namespace=namespace, retry_budget=budget) as b,
    ):
        for _ in range(4):
            a.deposit_request()  # 4 requests x 0.5 = 2 retries for the fleet
        assert await a.try_retry()
        assert await b.try_retry()
        assert not await b.try_retry()
        assert not await a.try_retry()


# --------------------------------------------------------------------------- isolation, scripts


async def test_namespaces_never_see_each_other(server: RedisServer, raw: Redis) -> None:
    one, two = f"iso-{uuid.uuid4().hex[:6]}", f"iso-{uuid.uuid4().hex[:6]}"
    async with (
        RedisStore.from_url(server.url, namespace=one, max_concurrency=1) as a,
        RedisStore.from_url(server.url, namespace=two, max_concurrency=1) as b,
    ):
        held = await a.admit(ORIGIN, None)
        await held.report(Feedback(Signal.RATE, 5.0))  # closes one's gate only
        other = await b.admit(ORIGIN, time.monotonic() + 0.5)
        with pytest.raises(DeadlineExceeded):
            await a.admit(ORIGIN, time.monotonic() + 0.2)
        keys = [str(k) for k in await raw.keys("*")]
        ours = [k for k in keys if one in k or two in k]
        assert len(ours) >= 8
        for key in ours:
            # One hash tag per namespace: every key of a namespace lands in one cluster slot.
            assert key[key.index("{") + 1 : key.index("}")] in (one, two)
        held.release()
        other.release()


async def test_script_flush_and_a_fresh_connection_are_survived(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    async with RedisStore.from_url(server.url, namespace=namespace) as store:
        admission = await store.admit(ORIGIN, None)
        admission.release()
        await store.drain()
        await raw.script_flush()
        await raw.client_kill_filter(_type="normal", skipme=True)
        for _ in range(3):
            admission = await store.admit(ORIGIN, None)
            await admission.report(Feedback(Signal.CONCURRENCY))
            admission.release()
        await store.drain()
        stats = store.stats()
        assert stats.mode == "redis"
        assert await permits(raw, namespace) == 0


# --------------------------------------------------------------------------- leases


async def test_cancellation_releases_leases(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    store = RedisStore.from_url(server.url, namespace=namespace, max_concurrency=2)
    mw = ResilienceMiddleware(store=store)
    async with (
        Emulator(generation_time=30.0) as emu,
        aiohttp.ClientSession(middlewares=(mw,)) as session,
    ):

        async def call(n: int) -> None:
            async with session.post(emu.url / "v1/generate", json={"job": str(n)}) as resp:
                await resp.read()

        tasks = [asyncio.create_task(call(n)) for n in range(4)]  # 2 in flight, 2 waiting
        await eventually(lambda: emu.stats.in_flight == 2)
        assert await permits(raw, namespace) == 2
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await eventually(lambda: no_permits(raw, namespace), timeout=1.0)

        # Cancelled while the acquire script is on its way: the lease it may get is returned.
        await raw.client_pause(300, all=False)  # WRITE pause: scripts wait
        admit = asyncio.create_task(store.admit(ORIGIN, None))
        await asyncio.sleep(0.05)
        admit.cancel()
        await asyncio.gather(admit, return_exceptions=True)
        await asyncio.sleep(0.4)
        await eventually(lambda: no_permits(raw, namespace), timeout=1.0)
    await store.aclose()


async def test_a_lease_is_renewed_while_its_request_is_in_flight(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    settings: dict[str, Any] = {"namespace": namespace, "max_concurrency": 1, "lease_ttl": 0.6}
    async with (
        RedisStore.from_url(server.url, **settings) as a,
        RedisStore.from_url(server.url, **settings) as b,
    ):
        held = await a.admit(ORIGIN, None)
        await asyncio.sleep(1.5)  # 2.5 TTLs
        assert await permits(raw, namespace) == 1
        with pytest.raises(DeadlineExceeded):
            await b.admit(ORIGIN, time.monotonic() + 0.3)
        held.release()
        admission = await b.admit(ORIGIN, time.monotonic() + 1)
        admission.release()


async def test_a_killed_process_permits_come_back_within_the_ttl(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    ttl = 1.0
    proc = holder(server.url, namespace, permits=2, lease_ttl=ttl)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.startswith(b"ready 2"), line
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert await permits(raw, namespace) == 2
        async with RedisStore.from_url(
            server.url, namespace=namespace, max_concurrency=2, lease_ttl=ttl
        ) as store:
            got = [await store.admit(ORIGIN, killed_at + 5) for _ in range(2)]
            assert time.monotonic() - killed_at < ttl + 0.5
            for admission in got:
                admission.release()
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- fleets


async def test_three_processes_never_exceed_one_shared_limit(
    server: RedisServer, namespace: str
) -> None:
    async with Emulator(generation_time=0.05) as emu:  # the server itself has no limit
        results = await asyncio.to_thread(
            run_fleet,
            server.url,
            str(emu.url),
            namespace,
            processes=3,
            jobs=16,
            max_concurrency=3,
            initial_concurrency=3,
            redis_timeout=1,  # a loaded machine: no fallback is what this test wants
        )
        stats = emu.stats
    assert sum(r["ok"] for r in results) == 48
    assert all(r["mode"] == "redis" and r["fallbacks"] == 0 for r in results)
    assert stats.max_in_flight == 3  # one limit of 3 for the fleet, not 3 per process
    assert stats.duplicates == 0


async def test_three_processes_learn_the_plan_limit_together(
    server: RedisServer, namespace: str
) -> None:
    async with Emulator(plan_concurrency=4, generation_time=0.05) as emu:
        results = await asyncio.to_thread(
            run_fleet,
            server.url,
            str(emu.url),
            namespace,
            processes=3,
            jobs=30,
            initial_concurrency=2,
            redis_timeout=1,  # a loaded machine: no fallback is what this test wants
        )
        stats = emu.stats
    assert sum(r["ok"] for r in results) == 90
    rejected = stats.by_code["GENERATION_CONCURRENCY_EXCEEDED"]
    # Per-process limiters send more than 2x; a shared one about 1.1x on a quiet machine (1.6:
    # room for a loaded one, where the fleet's cut lags its sends).
    assert (90 + rejected) / 90 <= 1.6, stats.by_code
    assert stats.duplicates == 0


# --------------------------------------------------------------------------- Redis trouble


async def test_redis_down_at_start_falls_back_to_bounded_local_limits(
    logs: list[dict[str, Any]],
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    store = RedisStore.from_url(url, namespace="down", initial_concurrency=2)
    mw = ResilienceMiddleware(store=store)
    async with (
        Emulator(generation_time=0.02) as emu,
        aiohttp.ClientSession(middlewares=(mw,)) as session,
    ):

        async def call(n: int) -> int:
            async with session.post(emu.url / "v1/generate", json={"job": str(n)}) as resp:
                return resp.status

        statuses = await asyncio.gather(*(call(n) for n in range(20)))
        assert statuses == [200] * 20
        assert emu.stats.max_in_flight <= 2  # bounded: the initial limit, never unlimited
    await store.aclose()
    assert len(store_events(logs, "fallback")) == 1
    assert store.stats().mode == "local"
    assert "s3cret" not in json.dumps(logs, default=str)


async def test_a_hung_redis_costs_one_timeout_then_local_limits(
    logs: list[dict[str, Any]],
) -> None:
    with RedisServer() as srv:
        store = RedisStore.from_url(
            srv.url, namespace="hang", redis_timeout=0.2, probe_max_delay=0.2
        )
        admission = await store.admit(ORIGIN, None)
        admission.release()
        await store.drain()
        srv.pause()
        try:
            started = time.monotonic()
            admission = await store.admit(ORIGIN, None)
            assert time.monotonic() - started < 0.5
            admission.release()
            assert store.stats().mode == "local"
        finally:
            srv.resume()
        await eventually(lambda: store.stats().mode == "redis")
        await store.aclose()
    assert len(store_events(logs, "fallback")) == 1
    assert len(store_events(logs, "rejoin")) == 1


async def test_a_fallback_splits_the_last_limit_across_the_live_workers(
    logs: list[dict[str, Any]],
) -> None:
    with RedisServer() as srv:
        settings: dict[str, Any] = {"namespace": "split", "initial_concurrency": 8}
        async with (
            RedisStore.from_url(srv.url, **settings) as a,
            RedisStore.from_url(srv.url, **settings) as b,
        ):
            for store in (a, b, a):  # a's second visit sees b registered
                (await store.admit(ORIGIN, None)).release()
                await store.drain()
            srv.kill()
            held = [await a.admit(ORIGIN, None) for _ in range(4)]
            assert a.stats().mode == "local"
            assert a.concurrency_limit == 4  # 8 for the fleet, 2 workers: 4 each
            with pytest.raises(DeadlineExceeded):
                await a.admit(ORIGIN, time.monotonic() + 0.1)  # bounded, never unlimited
            for admission in held:
                admission.release()
    (event,) = store_events(logs, "fallback")
    assert event["limit"] == 4
    assert event["workers"] == 2


async def test_redis_killed_mid_batch_and_restarted_loses_no_request(
    logs: list[dict[str, Any]],
) -> None:
    with RedisServer() as srv:
        store = RedisStore.from_url(
            srv.url, namespace="restart", lease_ttl=1.0, probe_max_delay=0.2
        )
        mw = ResilienceMiddleware(store=store)
        async with (
            Emulator(plan_concurrency=4, generation_time=0.03) as emu,
            aiohttp.ClientSession(middlewares=(mw,)) as session,
        ):
            done = 0

            async def call(n: int) -> int:
                nonlocal done
                async with session.post(emu.url / "v1/generate", json={"job": str(n)}) as resp:
                    await resp.read()
                    done += 1
                    return resp.status

            batch = asyncio.gather(*(call(n) for n in range(80)))
            await eventually(lambda: done >= 10)
            srv.kill()
            await eventually(lambda: store.stats().mode == "local")
            await asyncio.sleep(0.2)
            srv.restart()
            statuses = await asyncio.wait_for(batch, 30)
            await eventually(lambda: store.stats().mode == "redis")
            assert statuses == [200] * 80
            assert emu.stats.duplicates == 0
            # Back on the shared limit: the new Redis holds the namespace's state again.
            more = await asyncio.gather(*(call(n) for n in range(80, 90)))
            assert more == [200] * 10
        client = Redis.from_url(srv.url)
        assert await client.exists("resilience:{restart}:ctl")
        await client.connection_pool.disconnect()  # aclose() is redis-py >= 5.0.1
        await store.aclose()
    assert len(store_events(logs, "fallback")) == 1
    assert len(store_events(logs, "rejoin")) == 1


async def test_rediss_works(namespace: str) -> None:
    with RedisServer(tls=True) as srv:
        assert srv.url.startswith("rediss://")
        async with RedisStore.from_url(
            srv.url,
            namespace=namespace,
            redis_timeout=2.0,  # a TLS handshake on a loaded machine: not what is tested
            connection_options={"ssl_ca_certs": str(srv.ca_file)},
        ) as store:
            admission = await store.admit(ORIGIN, None)
            admission.release()
            await store.drain()
            assert store.stats().mode == "redis"


# --------------------------------------------------------------------------- review fixes


async def test_a_retried_acquire_or_release_counts_once(raw: Redis, namespace: str) -> None:
    acquire = raw.register_script(source("acquire"))
    release = raw.register_script(source("release"))
    ns = f"resilience:{{{namespace}}}:"
    keys = [ns + k for k in ("ctl", "permits", "order", "wake", "workers", "budget", "rate:o")]
    # limit 1: the same acquire twice (a retry whose first reply was lost) is one grant
    args: list[str | int | float] = ["w:1", "w", 30000, 1, 1, -1, 0, 0.2, 10, 10, 86400000, 60000]
    first = await acquire(keys=keys, args=args)
    assert await acquire(keys=keys, args=args) == first
    assert first[0] == 0
    assert await raw.zrange(ns + "permits", 0, -1) == ["w:1"]
    # the same release twice: one success, one growth
    await raw.delete(*keys)
    args[3] = 2
    args[4] = 0
    await acquire(keys=keys, args=args)
    rkeys = [ns + k for k in ("ctl", "permits", "order", "wake", "rate:o")]
    assert (await release(keys=rkeys, args=[2, 0, 30000, 86400000, "w:1", 1]))[:3] == [2, 3, 1]
    assert (await release(keys=rkeys, args=[2, 0, 30000, 86400000, "w:1", 1]))[:3] == [3, 3, 0]
    assert await raw.hget(ns + "ctl", "limit") == "3"


async def test_a_script_that_counts_is_not_repeated_on_a_dropped_connection(
    server: RedisServer, namespace: str
) -> None:
    async with RedisStore.from_url(server.url, namespace=namespace) as store:
        (await store.admit(ORIGIN, None)).release()
        await store.drain()
        calls = 0

        async def dropped(**_: Any) -> Any:
            nonlocal calls
            calls += 1
            raise RedisConnectionError("Connection reset by peer")

        link = store._link()
        link.scripts = dataclasses.replace(link.scripts, budget=dropped, report=dropped)  # type: ignore[arg-type]
        assert await store.try_retry()  # the local budget answers
        assert calls == 1
        assert store.stats().mode == "local"


async def test_no_admission_after_the_deadline(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    async with RedisStore.from_url(server.url, namespace=namespace) as store:
        with pytest.raises(DeadlineExceeded):
            await store.admit(ORIGIN, time.monotonic() - 0.01)
        assert "acquire" not in store.stats().round_trips
        assert await permits(raw, namespace) == 0


def test_a_fallback_rejoins_on_a_new_loop_and_after_aclose() -> None:
    with RedisServer() as srv:
        store = RedisStore.from_url(srv.url, namespace="rejoin", probe_max_delay=0.2)

        async def one() -> None:
            (await store.admit(ORIGIN, None)).release()
            await store.drain()

        async def until_shared() -> None:
            deadline = time.monotonic() + 3
            while store.stats().mode != "redis":
                assert time.monotonic() < deadline, "never rejoined"
                await one()
                await asyncio.sleep(0.05)

        asyncio.run(one())
        srv.kill()
        asyncio.run(one())  # falls back; the probe dies with this loop
        assert store.stats().mode == "local"
        srv.restart()
        asyncio.run(until_shared())  # a new loop: a new probe

        async def after_aclose() -> None:
            srv.kill()
            await one()
            assert store.stats().mode == "local"
            await store.aclose()
            srv.restart()
            await until_shared()
            await store.aclose()

        asyncio.run(after_aclose())
        assert store.stats().rejoins == 2


async def test_aclose_with_redis_down_stops_everything() -> None:
    with RedisServer() as srv:
        store = RedisStore.from_url(
            srv.url, namespace="closing", probe_max_delay=0.2, circuit_breaker=None
        )
        admission = await store.admit(ORIGIN, None)
        await admission.report(Feedback(Signal.SUCCESS))
        srv.kill()
        await store.aclose()
        await asyncio.sleep(0.3)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not [t for t in others if "RedisStore" in repr(t.get_coro())]
        trips = store.stats().round_trips
        assert "probe" not in trips
        assert getattr(
            getattr(admission, "lease", None), "released", False
        )  # returned by aclose: release() is a no-op
        admission.release()
        await asyncio.sleep(0.05)
        assert store._conn.current is None
        assert store.stats().round_trips == trips


def test_a_paced_origin_stalls_no_other_and_no_new_loop(server: RedisServer) -> None:
    store = RedisStore.from_url(server.url, namespace=f"paced-{uuid.uuid4().hex[:8]}")
    other = "http://other.test"

    async def first_loop() -> None:
        admission = await store.admit(ORIGIN, None)
        await admission.report(Feedback(Signal.RATE, 0.0))  # paced from now on
        admission.release()
        (await store.admit(ORIGIN, None)).release()  # learns it: a turn per process
        turn = store._turns[ORIGIN]
        await turn.acquire()  # a long turn: every sender to ORIGIN queues behind it

        async def send() -> None:
            (await store.admit(ORIGIN, None)).release()

        senders = [asyncio.create_task(send()) for _ in range(10)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        (await store.admit(other, time.monotonic() + 0.5)).release()
        assert time.monotonic() - started < 0.25
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        # the loop ends with the turn still taken

    async def second_loop() -> None:
        (await store.admit(ORIGIN, time.monotonic() + 1.0)).release()
        await store.aclose()

    asyncio.run(first_loop())
    asyncio.run(second_loop())


async def test_a_redis_that_answers_ping_but_refuses_scripts_stays_down(
    server: RedisServer, raw: Redis, namespace: str
) -> None:
    async with RedisStore.from_url(server.url, namespace=namespace, probe_max_delay=0.1) as store:
        (await store.admit(ORIGIN, None)).release()
        await store.drain()
        await raw.config_set("maxmemory-policy", "noeviction")
        await raw.config_set("maxmemory", 1)
        try:
            until = time.monotonic() + 0.8
            while time.monotonic() < until:
                (await store.admit(ORIGIN, None)).release()
                await asyncio.sleep(0.01)
            stats = store.stats()
        finally:
            await raw.config_set("maxmemory", 0)
        assert (stats.fallbacks, stats.rejoins) == (1, 0)
        await eventually(lambda: store.stats().mode == "redis")


async def test_a_redis_that_rejoins_and_fails_again_is_probed_with_backoff(
    server: RedisServer, namespace: str
) -> None:
    async with RedisStore.from_url(server.url, namespace=namespace) as store:
        (await store.admit(ORIGIN, None)).release()
        await store.drain()

        async def refused(**_: Any) -> Any:
            raise RedisResponseError("the probe passes, the traffic does not")

        link = store._link()
        link.scripts = dataclasses.replace(link.scripts, acquire=refused)  # type: ignore[arg-type]
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            (await store.admit(ORIGIN, None)).release()
            await asyncio.sleep(0.01)
        # backing off 0.05, 0.1, 0.2, 0.4 s (halved by jitter at most): not every 50 ms
        assert store.stats().rejoins <= 7


async def test_an_error_inside_redis_py_is_redis_trouble_not_the_callers(
    server: RedisServer, namespace: str
) -> None:
    """A connection torn down under a call surfaced as AttributeError from redis-py's internals
    (seen under load): the caller gets a local admission, never that error."""
    async with RedisStore.from_url(server.url, namespace=namespace, probe_max_delay=0.1) as store:
        (await store.admit(ORIGIN, None)).release()
        await store.drain()

        async def torn(**_: Any) -> Any:
            raise AttributeError("'NoneType' object has no attribute 'writelines'")

        link = store._link()
        link.scripts = dataclasses.replace(link.scripts, acquire=torn)  # type: ignore[arg-type]
        admission = await store.admit(ORIGIN, None)  # no AttributeError
        admission.release()
        assert store.stats().fallbacks == 1
        await eventually(lambda: store.stats().mode == "redis")  # the probe still rejoins
