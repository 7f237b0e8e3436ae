"""Failover on real servers: a primary, a replica and three Sentinels (Debian's redis-server and
redis-sentinel); the primary is killed mid-batch. Slow (a Sentinel election takes a second or
two), hence the ``redis_failover`` marker: ``pytest -m redis_failover`` (README)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from resilience import ResilienceMiddleware
from resilience.redis import RedisStore
from resilience.testing import Emulator
from tests.redis_topologies import RedisClusterServers, RedisSentinels

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.redis_failover]

REDIS_TIMEOUT = 0.25


def sentinel_client(group: RedisSentinels) -> Any:
    """The app's client, as an app would build it: timeouts of redis_timeout, no retries."""
    options: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinel = Sentinel(group.sentinels, sentinel_kwargs=options, **options)  # type: ignore[no-untyped-call]
    return sentinel.master_for(RedisSentinels.SERVICE, **options)


async def test_a_killed_primary_falls_back_then_rejoins_the_promoted_replica(
    logs: list[dict[str, Any]],
) -> None:
    """Two workers (one store and one Sentinel client each) share a plan limit of 4 while the
    primary is SIGKILLed mid-batch: each falls back within one request plus redis_timeout,
    rejoins the promoted replica, no job is lost, and the server never sees more than the
    plan limit plus the documented fallback bound (one per worker)."""
    plan, workers, jobs = 4, 2, 30
    with RedisSentinels() as group:
        namespace = f"failover-{uuid.uuid4().hex[:8]}"
        clients = [sentinel_client(group) for _ in range(workers)]
        stores = [
            RedisStore(
                client=c,
                namespace=namespace,
                max_concurrency=plan,
                initial_concurrency=plan,
                redis_timeout=REDIS_TIMEOUT,
                probe_max_delay=0.2,
            )
            for c in clients
        ]
        killed_at = 0.0
        async with Emulator(plan_concurrency=plan, generation_time=0.2) as emu:

            async def worker(store: RedisStore, name: str) -> list[bool]:
                mw = ResilienceMiddleware(max_attempts=5, max_elapsed=60.0, store=store)
                async with aiohttp.ClientSession(middlewares=(mw,)) as session:

                    async def job(n: int) -> bool:
                        payload = {"job": f"{name}-{n}"}
                        async with session.post(emu.url / "v1/generate", json=payload) as resp:
                            await resp.read()
                            return resp.status == 200

                    return list(await asyncio.gather(*(job(n) for n in range(jobs))))

            local_at: dict[int, float] = {}

            async def kill_primary() -> None:
                nonlocal killed_at
                await asyncio.sleep(0.5)
                killed_at = time.monotonic()
                group.primary.kill()
                while len(local_at) < workers and time.monotonic() - killed_at < 10:
                    for n, store in enumerate(stores):
                        if store.stats().mode == "local":
                            local_at.setdefault(n, time.monotonic())
                    await asyncio.sleep(0.005)

            killer = asyncio.create_task(kill_primary())
            results = await asyncio.gather(*(worker(s, f"w{n}") for n, s in enumerate(stores)))
            await killer
            stats = emu.stats
            promoted = group.master_address(group.sentinel_ports[0])
        for store in stores:
            await store.aclose()
        for client in clients:
            await client.aclose()
    done = [ok for worker_results in results for ok in worker_results]
    assert done.count(True) == workers * jobs  # no job lost
    assert stats.duplicates == 0
    assert promoted == ("127.0.0.1", group.replica.port)
    for store in stores:
        assert store.stats().fallbacks >= 1
        assert store.stats().rejoins >= 1
    fallbacks = [e for e in logs if e.get("action") == "fallback"]
    assert fallbacks
    # each worker fell back within one generation (its next Redis call) plus redis_timeout
    # (twice it for a given client: connect, then the call; 0.3 s of slack for a busy machine)
    assert sorted(local_at) == list(range(workers))
    assert max(local_at.values()) - killed_at <= 0.2 + 2 * REDIS_TIMEOUT + 0.3, local_at
    assert stats.max_in_flight <= plan + workers, stats.max_in_flight
    print(
        f"fell back after {[round(t - killed_at, 3) for t in local_at.values()]} s, "
        f"max in flight {stats.max_in_flight} of plan {plan}, "
        f"plan-limit 429s {stats.by_code.get('GENERATION_CONCURRENCY_EXCEEDED', 0)}"
    )


async def test_a_killed_cluster_primary_is_replaced_by_its_replica() -> None:
    """Six nodes (3 primaries, a replica each): the primary serving the namespace's slot is
    SIGKILLed mid-batch; the store falls back, rejoins once the cluster has promoted the
    replica, and no job is lost."""
    plan, jobs = 4, 40
    with RedisClusterServers(primaries=3, replicas=1, node_timeout_ms=500) as cluster:
        namespace = f"cfail-{uuid.uuid4().hex[:8]}"
        owner = cluster.owner(f"{{{namespace}}}")
        entry = next(n for n in cluster.nodes if n.port != owner.port)
        store = RedisStore.from_url(
            entry.url,
            namespace=namespace,
            cluster=True,
            max_concurrency=plan,
            initial_concurrency=plan,
            redis_timeout=REDIS_TIMEOUT,
            probe_max_delay=0.2,
        )
        async with Emulator(plan_concurrency=plan, generation_time=0.2) as emu:
            mw = ResilienceMiddleware(max_attempts=5, max_elapsed=60.0, store=store)
            async with store, aiohttp.ClientSession(middlewares=(mw,)) as session:

                async def job(n: int) -> bool:
                    async with session.post(emu.url / "v1/generate", json={"job": f"j{n}"}) as r:
                        await r.read()
                        return r.status == 200

                async def kill_owner() -> None:
                    await asyncio.sleep(0.5)
                    owner.kill()

                killer = asyncio.create_task(kill_owner())
                results = await asyncio.gather(*(job(n) for n in range(jobs)))
                await killer
                await asyncio.to_thread(cluster.wait_ok)  # the replica took the slot over
                deadline = time.monotonic() + 10
                while store.stats().mode != "redis":
                    assert time.monotonic() < deadline, "never rejoined the promoted replica"
                    (await store.admit("http://api.test", None)).release()
                    await asyncio.sleep(0.1)
                stats = emu.stats
                new_owner = cluster.owner(f"{{{namespace}}}")
    assert all(results)  # no job lost
    assert stats.duplicates == 0
    assert new_owner.port != owner.port
    assert store.stats().fallbacks >= 1
    assert store.stats().rejoins >= 1
    assert stats.max_in_flight <= plan + 1, stats.max_in_flight
