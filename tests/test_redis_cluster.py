"""The fleet guarantees on a real 3-primary Redis Cluster (Debian's redis-server, cluster mode).

The cluster is started by the module fixture on free loopback ports with
``redis-cli --cluster create`` and stopped afterwards. Every namespace's keys share one hash
tag, so each namespace lives on one slot; the store's ``RedisCluster`` client follows the
cluster's redirections to it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from resilience import Feedback, Signal
from resilience.redis import RedisStore
from resilience.redis._parking import PARK_POLL
from resilience.testing import Emulator
from tests.redis_server import holder, run_fleet, wake_delay
from tests.redis_topologies import RedisClusterServers

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ORIGIN = "http://api.test"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(primaries=3) as servers:
        yield servers


@pytest.fixture
async def raw(cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    yield client
    await client.aclose()


def spread_namespaces(cluster: RedisClusterServers, count: int) -> list[str]:
    """``count`` namespaces whose slots live on different primaries (as far as there are)."""
    chosen: list[str] = []
    owners: set[int] = set()
    while len(chosen) < count:
        name = f"acct-{uuid.uuid4().hex[:8]}"
        owner = cluster.owner(f"{{{name}}}").port
        if owner not in owners or len(owners) == 3:
            chosen.append(name)
            owners.add(owner)
    return chosen


def store(cluster: RedisClusterServers, namespace: str, **opts: object) -> RedisStore:
    return RedisStore.from_url(cluster.url, namespace=namespace, cluster=True, **opts)  # type: ignore[arg-type]


async def test_namespaces_on_other_nodes_share_nothing_and_never_fall_back(
    cluster: RedisClusterServers, raw: RedisCluster
) -> None:
    """The issue's failure: three of four namespaces fell back with MovedError on a plain
    client. Here each one stays shared, its keys live on its own slot only, and a cut in one
    namespace leaves the others' limits alone."""
    names = spread_namespaces(cluster, 4)
    assert len({cluster.owner(f"{{{n}}}").port for n in names}) == 3
    stores = [store(cluster, n, initial_concurrency=4) for n in names]
    try:
        for s in stores:
            admission = await s.admit(ORIGIN, None)
            await admission.report(Feedback(Signal.SUCCESS))
            admission.release()
            await s.drain()
        rejected = await stores[0].admit(ORIGIN, None)
        await rejected.report(Feedback(Signal.CONCURRENCY))
        rejected.release()
        for s in stores:
            assert s.stats().mode == "redis"
            assert s.stats().fallbacks == 0
        limits = [int(await raw.hget(f"resilience:{{{n}}}:ctl", "limit") or 0) for n in names]
        assert limits[0] < 4 <= min(limits[1:])
        for name in names:
            node = cluster.owner(f"{{{name}}}")
            keys = cluster.info(node, f"KEYS resilience:{{{name}}}:*").split()
            assert f"resilience:{{{name}}}:ctl" in keys
            for other in cluster.nodes:
                if other.port != node.port:
                    assert not cluster.info(other, f"KEYS resilience:{{{name}}}:*").split()
    finally:
        for s in stores:
            await s.aclose()


async def test_scripts_survive_script_flush_on_every_node(cluster: RedisClusterServers) -> None:
    (name,) = spread_namespaces(cluster, 1)
    async with store(cluster, name) as s:
        (await s.admit(ORIGIN, None)).release()
        await s.drain()
        for node in cluster.nodes:
            assert cluster.info(node, "SCRIPT FLUSH").strip() == "OK"
        for _ in range(3):
            admission = await s.admit(ORIGIN, None)
            await admission.report(Feedback(Signal.RATE, 0.0))  # the report script too
            admission.release()
        await s.drain()
        assert s.stats().mode == "redis"
        assert s.stats().fallbacks == 0
        assert "probe" not in s.stats().round_trips


async def test_a_waiter_is_woken_by_a_release_on_a_cluster(cluster: RedisClusterServers) -> None:
    (name,) = spread_namespaces(cluster, 1)
    async with (
        store(cluster, name, max_concurrency=1) as a,
        store(cluster, name, max_concurrency=1) as b,
    ):
        delay = await wake_delay(a, b, ORIGIN)
        assert delay < PARK_POLL / 2, delay  # woken by the release, not its own poll
        assert b.stats().round_trips["wake"] >= 1
        assert b.stats().round_trips["acquire"] == 2


async def test_three_processes_never_exceed_one_shared_limit_on_a_cluster(
    cluster: RedisClusterServers,
) -> None:
    (name,) = spread_namespaces(cluster, 1)
    async with Emulator(generation_time=0.05) as emu:
        results = await asyncio.to_thread(
            run_fleet,
            cluster.url,
            str(emu.url),
            name,
            processes=3,
            jobs=16,
            max_concurrency=3,
            initial_concurrency=3,
            cluster=1,
            redis_timeout=1,  # a loaded 2-core machine: no fallback is what this test wants
        )
        stats = emu.stats
    assert sum(r["ok"] for r in results) == 48
    assert all(r["mode"] == "redis" and r["fallbacks"] == 0 for r in results)
    assert stats.max_in_flight == 3
    assert stats.duplicates == 0


async def test_a_killed_process_permits_come_back_within_the_ttl_on_a_cluster(
    cluster: RedisClusterServers, raw: RedisCluster
) -> None:
    (name,) = spread_namespaces(cluster, 1)
    ttl = 1.0
    proc = holder(cluster.url, name, permits=2, lease_ttl=ttl, cluster=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.startswith(b"ready 2"), line
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert await raw.zcard(f"resilience:{{{name}}}:permits") == 2
        async with store(cluster, name, max_concurrency=2, lease_ttl=ttl) as s:
            got = [await s.admit(ORIGIN, killed_at + 5) for _ in range(2)]
            assert time.monotonic() - killed_at < ttl + 0.5
            for admission in got:
                admission.release()
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_cluster_client_of_the_app_is_used_and_never_closed(
    cluster: RedisClusterServers, raw: RedisCluster
) -> None:
    (name,) = spread_namespaces(cluster, 1)
    async with RedisStore(client=raw, namespace=name) as s:
        (await s.admit(ORIGIN, None)).release()
        await s.drain()
        assert s.stats().mode == "redis"
    assert await raw.ping()  # still the app's, still open
