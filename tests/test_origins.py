"""State per origin: each origin has its own adaptive concurrency limit unless the store is told
that several hosts are one API, and the per-origin state stays bounded without forgetting a
closed gate or an origin with requests in flight."""

from __future__ import annotations

import time

import aiohttp
import anyio
import pytest
from yarl import URL

from resilience import DeadlineExceeded, Feedback, LocalStore, Signal
from resilience._store import MAX_IDLE_ORIGINS
from resilience.testing import Emulator, Fault
from tests.conftest import Events, assert_baseline, attempts, local, middleware

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002)]

API, API_EU, STORAGE = "https://api.example.com", "https://api-eu.example.com", "https://cdn.test"


def _soon(seconds: float = 0.05) -> float:
    return time.monotonic() + seconds


async def test_each_origin_has_its_own_concurrency_limit() -> None:
    """Downloads from a storage host do not take the API's plan permits, and the API's 429
    does not cut the storage host's limit."""
    store = LocalStore(initial_concurrency=2)
    held = [await store.admit(API, None) for _ in range(2)]
    with pytest.raises(DeadlineExceeded):
        await store.admit(API, _soon())  # the API's two permits are taken
    download = await store.admit(STORAGE, _soon())  # the storage host has its own
    await held[0].report(Feedback(Signal.CONCURRENCY))
    assert (store.limit_of(API), store.limit_of(STORAGE)) == (1, 2)
    for admission in (*held, download):
        admission.release()


async def test_limit_groups_share_one_limit_across_the_hosts_of_one_api() -> None:
    store = LocalStore(initial_concurrency=2, limit_groups={API: "plan", API_EU + "/": "plan"})
    held = [await store.admit(API, None), await store.admit(API_EU, None)]
    with pytest.raises(DeadlineExceeded):
        await store.admit(API_EU, _soon())  # one plan limit for both hosts
    await held[1].report(Feedback(Signal.CONCURRENCY))
    assert store.limit_of(API) == store.limit_of(API_EU) == 1
    (await store.admit(STORAGE, _soon())).release()  # not in the group: its own limit
    for admission in held:
        admission.release()


async def test_shared_limit_gives_every_origin_one_limit() -> None:
    store = LocalStore(initial_concurrency=1, shared_limit=True)
    held = await store.admit(API, None)
    with pytest.raises(DeadlineExceeded):
        await store.admit(STORAGE, _soon())
    held.release()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit_groups": {"api.example.com": "x"}}, ValueError),  # not an origin
        ({"limit_groups": {API: 3}}, TypeError),
        ({"limit_groups": [API]}, TypeError),
        ({"shared_limit": "yes"}, TypeError),
        ({"shared_limit": True, "limit_groups": {API: "x"}}, ValueError),
    ],
)
def test_bad_limit_scopes_are_rejected(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        LocalStore(**kwargs)  # type: ignore[arg-type]


async def test_origin_state_is_bounded() -> None:
    """20,000 origins used once each leave at most MAX_IDLE_ORIGINS entries behind."""
    store = LocalStore()
    for i in range(20_000):
        admission = await store.admit(f"https://h{i}.test", None)
        await admission.report(Feedback(Signal.SUCCESS))
        admission.release()
    assert len(store._states) <= MAX_IDLE_ORIGINS + 1
    assert len(store._scopes) <= MAX_IDLE_ORIGINS + 1


async def test_a_closed_gate_and_a_request_in_flight_survive_eviction() -> None:
    store = LocalStore()
    gated = await store.admit("https://gated.test", None)
    await gated.report(Feedback(Signal.RATE, gate=60.0))
    gated.release()
    busy = await store.admit("https://busy.test", None)  # in flight all along
    for i in range(3 * MAX_IDLE_ORIGINS):
        (await store.admit(f"https://h{i}.test", None)).release()
    with pytest.raises(DeadlineExceeded):  # the gate is still closed
        await store.admit("https://gated.test", _soon())
    await busy.report(Feedback(Signal.RATE, gate=60.0))  # its answer still reaches its gate
    busy.release()
    with pytest.raises(DeadlineExceeded):
        await store.admit("https://busy.test", _soon())


async def test_the_middlewares_origin_cache_is_bounded() -> None:
    mw = middleware()
    for i in range(5000):
        assert mw._origin_of(URL(f"https://h{i}.test/x?y=1")) == f"https://h{i}.test"
    assert len(mw._origins) <= MAX_IDLE_ORIGINS


async def test_downloads_from_a_storage_host_take_no_api_permits(emu: Emulator) -> None:
    """End to end, limit 2: two slow downloads from a storage host hold its two permits; the
    API's requests meanwhile go at once instead of queueing behind them (one shared limit
    would hold them until the downloads end)."""
    mw = middleware(initial_concurrency=2, max_concurrency=2)
    done: dict[str, float] = {}
    async with Emulator(generation_time=0.001) as storage:
        storage.inject(Fault.slow(0.3), times=2, path="/v1/ping")
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:

            async def download(name: str) -> None:
                async with s.get(storage.url / "v1/ping") as resp:
                    await resp.read()
                done[name] = time.monotonic()

            async def generate(job: str) -> None:
                async with s.post(emu.url / "v1/generate", json={"job": job}) as resp:
                    assert resp.status == 200
                done[job] = time.monotonic()

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(download, "d1")
                    tg.start_soon(download, "d2")
                    await anyio.sleep(0.05)
                    for job in ("a", "b", "c"):
                        tg.start_soon(generate, job)
            assert_baseline(s, mw)
    assert max(done[j] for j in "abc") < min(done["d1"], done["d2"])


async def test_each_event_logs_the_limit_of_its_own_origin(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("GENERATION_CONCURRENCY_EXCEEDED"), times=1, path="/v1/generate")
    mw = middleware(initial_concurrency=4)
    async with Emulator(generation_time=0.001) as storage:
        storage.inject(Fault.code("DISPATCH_TIMEOUT"), times=1, path="/v1/ping")
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
                assert resp.status == 200
            async with s.get(storage.url / "v1/ping") as resp:
                assert resp.status == 200
        storage_origin = str(storage.url.origin())
    store = local(mw)
    api_limit = store.limit_of(str(emu.url.origin()))
    assert api_limit < store.limit_of(storage_origin) == 4
    by_origin = {e["origin"]: e["limit"] for e in attempts(logs)}
    assert by_origin[storage_origin] == 4
