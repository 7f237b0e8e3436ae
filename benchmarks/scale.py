"""Cost as the work grows: client CPU per job and memory per queued request at 400 to 40,000 jobs.

Run: ``python benchmarks/scale.py [--sizes 400 4000 40000] [--plan 64]``

Every job of a batch is sent at once through one session with the middleware (defaults) against
the emulator in its own process on 127.0.0.1, whose plan admits ``--plan`` generations at a time
(1 ms each): all but a plan's worth of requests queue in the middleware for a permit. Each size
runs in a fresh child process, so one batch's memory does not carry into the next, and twice:

* CPU: ``time.process_time()`` of the client over the batch, per job;
* memory: with ``tracemalloc`` on, a snapshot taken while the queue is at its longest, counting
  only the blocks allocated by ``resilience/`` code, per queued request (aiohttp's own request
  objects, the tasks and the emulator are not ours and not counted).

A cost that is flat per job means no per-waiter scans and no growth with the queue's length:
the target is CPU per job at 40,000 within 1.2x of the figure at 400.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import tracemalloc

import aiohttp

from resilience import ResilienceMiddleware
from resilience.testing import EmulatorProcess

_OURS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resilience")


async def batch(url: str, jobs: int, measure_memory: bool) -> dict[str, float]:
    mw = ResilienceMiddleware(max_elapsed=None, max_attempts=3)
    connector = aiohttp.TCPConnector(limit=0)
    queued_peak, ours_at_peak = 0, 0
    async with aiohttp.ClientSession(middlewares=(mw,), connector=connector) as session:

        async def one(i: int) -> int:
            async with session.post(url, json={"job": f"s{i}"}) as resp:
                await resp.read()
                return resp.status

        cpu = time.process_time()
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(one(i)) for i in range(jobs)]
        if measure_memory:
            # Sample while the batch runs; keep the snapshot taken at the longest queue.
            while not all(t.done() for t in tasks[-10:]):
                await asyncio.sleep(0.05)
                waiting = _waiting(mw)
                if waiting > queued_peak:
                    snapshot = tracemalloc.take_snapshot().filter_traces(
                        (tracemalloc.Filter(True, os.path.join(_OURS, "*")),)
                    )
                    queued_peak = waiting
                    ours_at_peak = sum(stat.size for stat in snapshot.statistics("filename"))
        statuses = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    ok = sum(1 for s in statuses if s == 200)
    return {
        "jobs": jobs,
        "ok": ok,
        "wall_s": elapsed,
        "cpu_ms_per_job": cpu * 1000 / jobs,
        "queued_peak": queued_peak,
        "bytes_per_queued": ours_at_peak / queued_peak if queued_peak else 0.0,
    }


def _waiting(mw: ResilienceMiddleware) -> int:
    """Requests queued in the middleware for a permit or a turn, over every origin."""
    limiters = getattr(mw.store, "_scopes", {})
    return sum(limiter.waiting for limiter in list(limiters.values()))


def child(url: str, jobs: int, memory: bool) -> None:
    if memory:
        tracemalloc.start()
    result = asyncio.run(batch(url, jobs, memory))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 4000, 40000])
    parser.add_argument("--plan", type=int, default=64)
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "JOBS", "MEMORY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        url, jobs, memory = args.child
        child(url, int(jobs), memory == "1")
        return
    rows = []
    with EmulatorProcess(plan_concurrency=args.plan, generation_time=0.001) as emulator:
        url = str(emulator.url / "v1/generate")
        for jobs in args.sizes:
            runs = {}
            for memory in ("0", "1"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", url, str(jobs), memory],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=900,
                )
                runs[memory] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((jobs, runs["0"], runs["1"]))
    base = rows[0][1]["cpu_ms_per_job"]
    print(f"plan limit {args.plan} x 1 ms, every job at once, resilience defaults")
    print(
        f"{'jobs':>7} {'ok':>7} {'wall s':>7} {'CPU ms/job':>11} {'vs first':>9} "
        f"{'queued peak':>12} {'B/queued (ours)':>16}"
    )
    for jobs, cpu_run, mem_run in rows:
        print(
            f"{jobs:>7} {cpu_run['ok']:>7} {cpu_run['wall_s']:>7.2f} "
            f"{cpu_run['cpu_ms_per_job']:>11.3f} {cpu_run['cpu_ms_per_job'] / base:>8.2f}x "
            f"{mem_run['queued_peak']:>12} {mem_run['bytes_per_queued']:>16.0f}"
        )


if __name__ == "__main__":
    main()
