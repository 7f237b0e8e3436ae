"""The fleet's breaker on a real redis-server: the Lua rule against the Python one (one table of
cases), one probe for several processes, the local fallback when Redis is gone.

Run as ``python -m tests.test_breaker_redis URL REDIS NAMESPACE JOBS START_AT`` it is one worker
process of the fleet test: it sends JOBS jobs through a RedisStore and prints how many succeeded.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from redis.asyncio import Redis

from resilience import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    Feedback,
    ResilienceMiddleware,
    Signal,
)
from resilience._breaker import Breaker, BreakerState, Hold, Pass, Refuse, Tally
from resilience.redis import RedisStore
from resilience.redis._breaker import FLUSH_EVERY, SHARED_POLL, SharedBreakers
from resilience.redis._keys import Keys
from resilience.redis._scripts import source
from resilience.redis._source import ACL_COMMANDS
from resilience.testing import Emulator
from tests.conftest import wait_until
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]
BREAK = 0.1
RULE = CircuitBreaker(
    minimum_throughput=4, break_duration=BREAK, max_break_duration=0.4, probe_timeout=5.0
)


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    yield client
    await client.aclose()


class LuaBreaker:
    """The two scripts, called as SharedBreakers does (no fallback: a failure fails the test)."""

    def __init__(self, client: Redis) -> None:
        admit = client.register_script(source("breaker_admit"))
        record = client.register_script(source("breaker_record"))
        scripts = {"breaker_admit": admit, "breaker_record": record}

        async def run(kind: str, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
            return await scripts[script](keys=keys, args=args)

        self.shared = SharedBreakers(
            RULE,
            Keys.of(f"t-{uuid.uuid4().hex[:8]}"),
            run,
            shared=lambda: True,
            spawn=lambda coro: coro.close(),
            state_ms=60_000,
            trust_views=False,  # the scripts themselves, every time
        )


# Each case: a list of steps run against both rules. ("admit", deadline_in or None) admits a
# ticket (kept in order); ("end", index, tally) ends the index-th ticket; ("sleep", seconds).
CASES: dict[str, list[tuple[Any, ...]]] = {
    "opens at minimum throughput": [
        *[("admit", None)] * 4,
        *[("end", i, "f") for i in range(4)],
        ("admit", None),
        ("admit", 0.01),
    ],
    "successes keep it closed": [
        *[("admit", None)] * 8,
        *[("end", i, "s" if i % 2 else "f") for i in range(8)],
        ("admit", None),
    ],
    "throttles are not counted": [
        *[("admit", None)] * 6,
        *[("end", i, "n") for i in range(6)],
        ("admit", None),
        ("end", 6, "f"),
        ("admit", None),
    ],
    "only failures so far: no more in flight than needed": [
        *[("admit", None)] * 3,
        ("end", 0, "f"),
        ("admit", None),
        ("admit", None),
    ],
    "one probe, its success closes": [
        *[("admit", None)] * 4,
        *[("end", i, "f") for i in range(4)],
        ("sleep", BREAK * 1.3),
        ("admit", None),
        ("admit", None),
        ("end", 4, "s"),
        ("admit", None),
    ],
    "a failed probe opens it for longer": [
        *[("admit", None)] * 4,
        *[("end", i, "f") for i in range(4)],
        ("sleep", BREAK * 1.3),
        ("admit", None),
        ("end", 4, "f"),
        ("sleep", BREAK * 1.3),
        ("admit", None),
        ("admit", 0.05),
        ("sleep", BREAK * 1.3),
        ("admit", None),
    ],
    "a neutral probe answer lets the next one probe": [
        *[("admit", None)] * 4,
        *[("end", i, "f") for i in range(4)],
        ("sleep", BREAK * 1.3),
        ("admit", None),
        ("end", 4, "n"),
        ("admit", None),
    ],
}


def shape(decision: object) -> str:
    if isinstance(decision, Pass):
        return "probe" if decision.probe else "pass"
    if isinstance(decision, Refuse):
        return "refuse"
    assert isinstance(decision, Hold)
    return "hold"


@pytest.mark.parametrize("case", list(CASES))
async def test_lua_and_python_rules_agree(raw: Redis, case: str) -> None:
    python = Breaker(RULE)
    lua = LuaBreaker(raw).shared
    origin = "http://api.test"
    tickets: list[tuple[Pass | None, Pass | None]] = []
    seen: list[tuple[str, str]] = []
    for step in CASES[case]:
        if step[0] == "sleep":
            await anyio.sleep(float(step[1]))
            continue
        now = time.monotonic()
        if step[0] == "admit":
            deadline = None if step[1] is None else now + float(step[1])
            a = python.admit(now, deadline)
            b = await lua.admit(origin, deadline, commit=True)
            seen.append((shape(a), shape(b)))
            tickets.append((a if isinstance(a, Pass) else None, b if isinstance(b, Pass) else None))
            continue
        index, tally = (
            int(step[1]),
            {"s": Tally.SUCCESS, "f": Tally.FAILURE, "n": Tally.NEUTRAL}[str(step[2])],
        )
        a_ticket, b_ticket = tickets[index]
        assert a_ticket is not None
        assert b_ticket is not None
        python.record(a_ticket, tally, now, "DISPATCH_TIMEOUT")
        await lua.record(origin, b_ticket, tally, "DISPATCH_TIMEOUT")
        seen.append((python.state.value, lua.state(origin)[0].value))
    assert [a for a, _ in seen] == [b for _, b in seen], seen


async def test_lua_breaker_keeps_the_last_failure_code(raw: Redis) -> None:
    lua = LuaBreaker(raw).shared
    origin = "http://api.test"
    tickets = [await lua.admit(origin, None, commit=True) for _ in range(4)]
    for ticket in tickets:
        assert isinstance(ticket, Pass)
        await lua.record(origin, ticket, Tally.FAILURE, "GENERATION_TIMEOUT")
    refused = await lua.admit(origin, time.monotonic() + 0.01, commit=True)
    assert isinstance(refused, Refuse)
    assert refused.last_code == "GENERATION_TIMEOUT"
    assert lua.state(origin)[0] is BreakerState.OPEN


async def test_a_least_privilege_acl_user_runs_the_whole_breaker_cycle(
    server: RedisServer, raw: Redis
) -> None:
    """Open, a failed probe, a successful one: every command the scripts use is in
    ACL_COMMANDS (an ACL user's rules apply inside scripts too)."""
    user = f"breaker-{uuid.uuid4().hex[:8]}"
    rule = ["on", ">pw-1", "resetkeys", "~resilience:*", "resetchannels", "-@all",
            *(f"+{c}" for c in ACL_COMMANDS)]  # fmt: skip
    await raw.execute_command("ACL", "SETUSER", user, "reset", *rule)  # type: ignore[no-untyped-call]
    limited = Redis.from_url(server.url.replace("redis://", f"redis://{user}:pw-1@"))
    try:
        lua = LuaBreaker(limited).shared
        origin = "http://api.test"
        for ticket in [await lua.admit(origin, None, commit=True) for _ in range(4)]:
            assert isinstance(ticket, Pass)
            await lua.record(origin, ticket, Tally.FAILURE, "X")
        for tally in (Tally.FAILURE, Tally.SUCCESS):
            await anyio.sleep(RULE.max_break_duration * 1.1)
            probe = await lua.admit(origin, None, commit=True)
            assert isinstance(probe, Pass)
            assert probe.probe
            assert await lua.record(origin, probe, tally, "X")
        assert lua.state(origin)[0] is BreakerState.CLOSED
    finally:
        await limited.aclose()
        await raw.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]


async def test_a_look_takes_no_probe(raw: Redis) -> None:
    lua = LuaBreaker(raw).shared
    origin = "http://api.test"
    for ticket in [await lua.admit(origin, None, commit=True) for _ in range(4)]:
        assert isinstance(ticket, Pass)
        await lua.record(origin, ticket, Tally.FAILURE, "X")
    await anyio.sleep(BREAK * 1.3)
    for _ in range(3):
        look = await lua.admit(origin, None, commit=False)
        assert isinstance(look, Pass)
        assert look.probe
    probe = await lua.admit(origin, None, commit=True)
    assert isinstance(probe, Pass)
    assert probe.probe
    assert isinstance(await lua.admit(origin, None, commit=True), Hold)


async def test_a_healthy_origin_costs_no_breaker_round_trip_per_request(
    server: RedisServer,
) -> None:
    namespace = f"cost-{uuid.uuid4().hex[:8]}"
    async with RedisStore.from_url(server.url, namespace=namespace, circuit_breaker=RULE) as store:
        for _ in range(3):  # until a success is in the shared window
            admission = await store.admit("http://api.test", None)
            await admission.report(Feedback(Signal.SUCCESS))
            admission.release()
        before = store.stats().round_trips.get("breaker", 0)
        started = time.monotonic()
        for _ in range(100):
            admission = await store.admit("http://api.test", None)
            await admission.report(Feedback(Signal.SUCCESS))
            admission.release()
        elapsed = time.monotonic() - started
        spent = store.stats().round_trips.get("breaker", 0) - before
    # A look every SHARED_POLL and a batch of successes every FLUSH_EVERY, not 3 per request:
    # bounded by what the elapsed time allows (a loaded machine takes longer, so it looks more
    # often), plus the first of each; asking Redis at every admission and record costs 300.
    allowed = int(elapsed / SHARED_POLL) + 1 + int(elapsed / FLUSH_EVERY) + 1
    assert spent <= allowed, (spent, f"{elapsed:.3f} s")


async def test_successes_ending_together_after_a_flush_interval_cost_one_flush(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("resilience.redis._breaker.FLUSH_EVERY", 0.05)
    namespace = f"flush-{uuid.uuid4().hex[:8]}"
    async with RedisStore.from_url(server.url, namespace=namespace, circuit_breaker=RULE) as store:
        admissions = [await store.admit("http://api.test", None) for _ in range(4)]
        await anyio.sleep(0.06)  # the interval is over: the next success starts a flush
        before = store.stats().round_trips.get("breaker", 0)
        for admission in admissions:  # all four before the flush has run
            await admission.report(Feedback(Signal.SUCCESS))
            admission.release()
        await wait_until(lambda: store.stats().round_trips.get("breaker", 0) > before, 5)
        await anyio.sleep(0.02)  # time for any other flush to run
        assert store.stats().round_trips.get("breaker", 0) - before == 1


# --------------------------------------------------------------------------- the fleet


def _worker_argv(url: str, redis_url: str, namespace: str, jobs: int, start_at: float) -> list[str]:
    return [sys.executable, "-m", "tests.test_breaker_redis", url, redis_url, namespace,
            str(jobs), repr(start_at)]  # fmt: skip


async def test_a_fleet_sends_one_probe_per_break_and_loses_nothing(server: RedisServer) -> None:
    workers, jobs = 3, 20
    async with Emulator(generation_time=0.0) as emu:
        emu.start_outage()
        namespace = f"fleet-{uuid.uuid4().hex[:8]}"
        start_at = time.time() + 2.0
        procs = [
            await anyio.open_process(
                _worker_argv(str(emu.url), server.url, namespace, jobs, start_at),
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            with anyio.fail_after(30):  # the workers import, then start together
                await wait_until(lambda: emu.stats.outage_answers >= 1, 30)
            await anyio.sleep(1.0)
            # 1 s into the outage: breaks of 0.1, 0.2, 0.4, 0.4 s; a probe ends each.
            into_outage = emu.stats.outage_answers
            emu.end_outage()
            outs = []
            with anyio.fail_after(60):
                for proc in procs:
                    assert proc.stdout is not None
                    out = b""
                    async for chunk in proc.stdout:
                        out += chunk
                    await proc.wait()
                    outs.append(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    assert sum(o["ok"] for o in outs) == workers * jobs, "no job lost"
    # The fleet decides on minimum_throughput answers, then one probe per break for all three
    # processes (not one each): 4 + at most 4 probes in the first second, + at most one send
    # per worker that had not seen the fleet's breaker open yet (a view lasts SHARED_POLL).
    # Per-process breakers would send 4 + 3 x 4.
    assert into_outage <= RULE.minimum_throughput + 4 + workers, (into_outage, outs)
    assert emu.stats.duplicates == 0


async def test_without_redis_each_worker_falls_back_to_its_own_breaker() -> None:
    with RedisServer() as dead:
        url = dead.url
    long_break = CircuitBreaker(minimum_throughput=4, break_duration=5.0)
    async with Emulator(generation_time=0.0) as emu:
        emu.start_outage()
        store = RedisStore.from_url(
            url, namespace="gone", circuit_breaker=long_break, redis_timeout=0.1
        )
        mw = ResilienceMiddleware(
            max_attempts=1, max_elapsed=2.0, backoff=Backoff(initial=0.001), store=store
        )
        refused = 0
        async with store, aiohttp.ClientSession(middlewares=(mw,)) as session:
            for i in range(12):
                try:
                    async with session.post(emu.url / "v1/generate", json={"job": f"{i}"}) as r:
                        await r.read()
                except CircuitOpen:
                    refused += 1
        assert store.stats().mode == "local"
        assert emu.stats.outage_answers == long_break.minimum_throughput
        assert refused == 12 - long_break.minimum_throughput


# --------------------------------------------------------------------------- worker process


async def _worker(
    url: str, redis_url: str, namespace: str, jobs: int, start_at: float
) -> dict[str, int]:
    # A generous Redis timeout: a loaded test machine must not make a worker fall back.
    store = RedisStore.from_url(
        redis_url, namespace=namespace, circuit_breaker=RULE, redis_timeout=2.0
    )
    mw = ResilienceMiddleware(
        max_attempts=6, max_elapsed=30.0, backoff=Backoff(initial=0.01, max_delay=0.1), store=store
    )
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async with store, aiohttp.ClientSession(middlewares=(mw,)) as session:

        async def one(n: int) -> bool:
            try:
                job = {"job": f"{os.getpid()}-{n}"}
                async with session.post(f"{url}/v1/generate", json=job) as resp:
                    await resp.read()
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        results = await asyncio.gather(*(one(n) for n in range(jobs)))
    return {"ok": sum(results), "fallbacks": store.stats().fallbacks}


if __name__ == "__main__":
    url, redis_url, namespace, jobs, start_at = sys.argv[1:6]
    result = asyncio.run(_worker(url, redis_url, namespace, int(jobs), float(start_at)))
    print(json.dumps(result), flush=True)
