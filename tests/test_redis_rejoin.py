"""Falling back and rejoining never overshoots the plan limit (issue 16 item 2), on a real
redis-server paused with SIGSTOP and resumed with SIGCONT while a batch is in flight."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest

from resilience import ResilienceMiddleware
from resilience.redis import RedisStore
from resilience.testing import Emulator
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def run_batch_through_a_pause(
    limit: int, jobs: int, *, pause_at: float, pause_for: float, restart: bool = False
) -> tuple[int, int, RedisStore]:
    """``jobs`` 1-second generations, half at once and half just after Redis is back; Redis
    stops ``pause_at`` s in for ``pause_for`` s (or is killed and restarted empty). Returns
    (the most requests in flight at the server, jobs done, the store)."""
    with RedisServer() as srv:
        store = RedisStore.from_url(
            srv.url,
            namespace=f"rejoin-{uuid.uuid4().hex[:8]}",
            max_concurrency=limit,
            initial_concurrency=limit,
            redis_timeout=0.1,
            probe_max_delay=0.1,
        )
        mw = ResilienceMiddleware(max_attempts=3, max_elapsed=60.0, store=store)
        async with Emulator(generation_time=1.0) as emu:  # the server itself has no limit
            async with store, aiohttp.ClientSession(middlewares=(mw,)) as session:

                async def job(n: int) -> bool:
                    if n >= jobs // 2:  # new work arriving once Redis answers again
                        await asyncio.sleep(pause_at + pause_for + 0.3)
                    payload = {"job": f"job-{n}"}
                    async with session.post(emu.url / "v1/generate", json=payload) as resp:
                        await resp.read()
                        return resp.status == 200

                async def outage() -> None:
                    await asyncio.sleep(pause_at)
                    if restart:
                        srv.kill()
                    else:
                        srv.pause()
                    await asyncio.sleep(pause_for)
                    if restart:
                        srv.restart()
                    else:
                        srv.resume()

                results, _ = await asyncio.gather(
                    asyncio.gather(*(job(n) for n in range(jobs))), outage()
                )
            stats = emu.stats
        return stats.max_in_flight, sum(results), store


async def test_a_pause_of_redis_mid_batch_never_exceeds_the_plan_limit() -> None:
    """Before: 8 in flight with max_concurrency=4 right after the rejoin (the fallback's
    requests still on the wire plus a full set of new leases)."""
    started = time.monotonic()
    most, done, store = await run_batch_through_a_pause(4, 16, pause_at=0.5, pause_for=0.9)
    assert done == 16
    assert store.stats().fallbacks >= 1
    assert store.stats().rejoins >= 1
    assert most <= 4
    assert time.monotonic() - started < 15


async def test_a_restart_of_redis_mid_batch_never_exceeds_the_plan_limit() -> None:
    """Before: 16 in flight with max_concurrency=8 and a restart (Redis came back empty)."""
    most, done, store = await run_batch_through_a_pause(
        8, 24, pause_at=0.5, pause_for=1.5, restart=True
    )
    assert done == 24
    assert store.stats().rejoins >= 1
    assert most <= 8
