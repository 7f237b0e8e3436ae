"""Fleet benchmark: 4 worker processes on one API key, against the emulator in its own process.

Run from the repository root (needs ``pip install -e '.[bench]'``)::

    python benchmarks/fleet.py            # starts its own redis-server and emulator
    python benchmarks/fleet.py --redis redis://127.0.0.1:6379/0 --workers 4
    python benchmarks/fleet.py --capacity  # Redis round trips and CPU per 1,000 requests

The scenarios and the peers' settings are ``benchmarks/throttling.py``'s, split across the
workers (the plan and rate limits belong to the key, not to a process):

* plan: 4 workers x 100 jobs, plan limit 8 generations of 50 ms: floor 2.5 s.
* rate: 4 workers x 75 jobs, 100 requests/s, burst 10, 429 with Retry-After and
  Retry-After-Ms: floor 2.9 s.
* rate-seconds: the same with a whole-second Retry-After only.
* window-x-unix: 4 x 75 jobs, a fixed window of 100 requests per wall-clock second announced in
  X-RateLimit-* headers (Unix-time Reset): floor the start of the third window, the batch
  starting 0.05-0.7 s into a second.
* window-ietf, window-ietf-old, window-x: the same window announced with a delta Reset in whole
  seconds: ``RateLimit``/``RateLimit-Policy``, ``RateLimit-Limit/-Remaining/-Reset``,
  ``X-RateLimit-*``.

Rows: resilience with the in-process store in each worker, resilience with one ``RedisStore``
shared by the fleet, and stamina and tenacity in each worker (5 attempts, 0.5 s initial wait,
as configured in throttling.py). Columns: wall time over the floor, attempts per job, 429s, jobs
lost. Then the cost of one shared permit: latency and permits/s, in-process vs Redis store,
without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Final

import aiohttp
import structlog
from yarl import URL

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import throttling  # noqa: E402
from resilience import Backoff, Feedback, LocalStore, ResilienceMiddleware, Signal, Store  # noqa: E402
from resilience.redis import RedisStore  # noqa: E402
from resilience.testing import EmulatorProcess  # noqa: E402

KINDS: Final = ("local", "redis", "stamina", "tenacity")
LABELS: Final = {
    "local": "resilience, in-process store per worker",
    "redis": "resilience, RedisStore shared",
    "stamina": "stamina per worker",
    "tenacity": "tenacity per worker",
}
SCENARIOS: Final = {
    "plan": throttling.SCENARIOS[0],
    "rate": throttling.SCENARIOS[1],
    "rate-seconds": throttling.SCENARIOS[3],
    "window-ietf": throttling.SCENARIOS[5],
    "window-ietf-old": throttling.SCENARIOS[6],
    "window-x": throttling.SCENARIOS[7],
    "window-x-unix": throttling.SCENARIOS[8],
}


# --------------------------------------------------------------------------- one worker


async def run_redis(
    base: URL, jobs: list[str], redis_url: str, namespace: str, redis_timeout: float
) -> tuple[list[bool], dict[str, int]]:
    """throttling.run_resilience with the fleet's shared store."""
    store = RedisStore.from_url(redis_url, namespace=namespace, redis_timeout=redis_timeout)
    mw = ResilienceMiddleware(
        max_attempts=throttling.ATTEMPTS,
        max_elapsed=throttling.DEADLINE,
        backoff=Backoff(
            initial=throttling.INITIAL, multiplier=2, max_delay=throttling.MAX_DELAY, jitter="full"
        ),
        store=store,
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with store, aiohttp.ClientSession(middlewares=(mw,), connector=connector) as session:

        async def one(job: str) -> bool:
            try:
                async with session.post(base / "v1/generate", json={"job": job}) as resp:
                    await resp.read()
                    return resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        results = list(await asyncio.gather(*(one(j) for j in jobs)))
        stats = store.stats()
        return results, {**stats.round_trips, "fallbacks": stats.fallbacks}


async def worker(args: argparse.Namespace) -> dict[str, Any]:
    base = URL(args.emulator)
    jobs = [f"{args.name}-{n}" for n in range(args.jobs)]
    delay = args.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    started = time.time()
    round_trips: dict[str, int] = {}
    if args.worker == "redis":
        results, round_trips = await run_redis(
            base, jobs, args.redis, args.namespace, args.redis_timeout
        )
    else:
        client = "resilience" if args.worker == "local" else args.worker
        results = await throttling.CLIENTS[client](base, jobs)
    ended = time.time()
    return {
        "ok": results.count(True),
        "started": started,
        "ended": ended,
        "round_trips": round_trips,
    }


# --------------------------------------------------------------------------- the fleet


def run_fleet(
    kind: str, scenario: str, base: URL, redis_url: str, workers: int, redis_timeout: float = 0.25
) -> dict[str, Any]:
    """One row: ``workers`` processes, each with ``kind``, the whole scenario split among them."""

    def control(what: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            str(base / f"_emulator/{what}"), data=data, method="GET" if what == "stats" else "POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    spec = SCENARIOS[scenario]
    per_worker = spec.jobs // workers
    control("configure", {**throttling.NEUTRAL, **spec.settings})
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 3.0  # every worker imported and ready: they start together
    if not spec.floor:  # a fixed window: start 0.05-0.7 s into a second
        start_at = math.floor(start_at) + 1.0 + random.uniform(0.05, 0.7)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, "--emulator", str(base),
             "--redis", redis_url, "--namespace", namespace, "--name", f"{kind}-{n}",
             "--jobs", str(per_worker), "--start-at", repr(start_at),
             "--redis-timeout", repr(redis_timeout)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for n in range(workers)
    ]  # fmt: skip
    time.sleep(max(0.0, start_at - time.time() - 0.5))
    control("reset")  # also lets the emulator's rate bucket refill
    outs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"a {kind} worker failed with exit code {proc.returncode}")
        outs.append(json.loads(lines[-1].removeprefix("RESULT ")))
    stats = control("stats")
    jobs = per_worker * workers
    floor = spec.floor or math.floor(start_at) + 2.0 - start_at
    wall = max(o["ended"] for o in outs) - min(o["started"] for o in outs)
    by_code = stats["by_code"]
    trips: dict[str, int] = {}
    fallbacks = 0
    for o in outs:
        fallbacks += o["round_trips"].pop("fallbacks", 0)
        for key, value in o["round_trips"].items():
            trips[key] = trips.get(key, 0) + value
    return {
        "kind": kind,
        "scenario": scenario,
        "floor": floor,
        "ratio": wall / floor,
        "wall": wall,
        "attempts": stats["requests"] / jobs,
        "429s": by_code.get("GENERATION_CONCURRENCY_EXCEEDED", 0) + by_code.get("RATE_LIMITED", 0),
        "lost": jobs - sum(o["ok"] for o in outs),
        "duplicates": stats["duplicates"],
        "redis_calls_per_attempt": (sum(trips.values()) / stats["requests"] if trips else None),
        "fallbacks": fallbacks,
    }


# --------------------------------------------------------------------------- permit cost


async def _cycle(store: Store) -> float:
    """Admit -> report success -> release; returns the seconds admit took."""
    began = time.perf_counter()
    admission = await store.admit("http://bench", None)
    took = time.perf_counter() - began
    await admission.report(Feedback(Signal.SUCCESS))
    admission.release()
    return took


async def _permits_per_second(store: Store, tasks: int, total: int) -> float:
    async def loop(n: int) -> None:
        for _ in range(n):
            await _cycle(store)

    began = time.perf_counter()
    await asyncio.gather(*(loop(total // tasks) for _ in range(tasks)))
    if isinstance(store, RedisStore):
        await store.drain()
    return total // tasks * tasks / (time.perf_counter() - began)


async def _store_cost(store: Store, sequential: int) -> str:
    await _cycle(store)
    admit, cycle = [], []
    for _ in range(sequential):
        began = time.perf_counter()
        admit.append(await _cycle(store))
        if isinstance(store, RedisStore):
            await store.drain()  # the release's round trip too
        cycle.append(time.perf_counter() - began)
    admit.sort()
    cycle.sort()
    one = await _permits_per_second(store, 1, sequential)
    many = await _permits_per_second(store, 64, sequential * 4)
    return (
        f"| {type(store).__name__} | {statistics.median(admit) * 1e6:,.0f} µs "
        f"| {admit[int(len(admit) * 0.99)] * 1e6:,.0f} µs "
        f"| {statistics.median(cycle) * 1e6:,.0f} µs | {one:,.0f} | {many:,.0f} |"
    )


async def permit_cost(redis_url: str, sequential: int = 2000) -> list[str]:
    """What one permit costs without HTTP, in-process store vs Redis store (limit 64)."""
    local = LocalStore(initial_concurrency=64, max_concurrency=64)
    shared = RedisStore.from_url(
        redis_url, namespace=f"cost-{uuid.uuid4().hex[:8]}", initial_concurrency=64,
        max_concurrency=64,
    )  # fmt: skip
    async with shared:
        return [await _store_cost(local, sequential), await _store_cost(shared, sequential)]


# --------------------------------------------------------------------------- capacity

CAPACITY_WORKERS: Final = (4, 8, 16)


def _redis_cpu(redis_url: str) -> float:
    """Seconds of CPU the redis-server has used so far (INFO cpu: user + sys)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def capacity(base: URL, redis_url: str, redis_timeout: float) -> list[dict[str, Any]]:
    """Redis round trips and Redis server CPU per 1,000 requests, at 4, 8 and 16 workers."""
    rows = []
    for scenario in SCENARIOS:
        for workers in CAPACITY_WORKERS:
            before = _redis_cpu(redis_url)
            row = run_fleet("redis", scenario, base, redis_url, workers, redis_timeout)
            cpu = _redis_cpu(redis_url) - before
            requests = row["attempts"] * (SCENARIOS[scenario].jobs // workers * workers)
            calls = row["redis_calls_per_attempt"] or 0.0
            rows.append({
                **row, "workers": workers, "requests": requests,
                "trips_per_1000": calls * 1000, "cpu_ms_per_1000": cpu * 1e6 / requests,
            })  # fmt: skip
    return rows


def print_capacity(rows: list[dict[str, Any]]) -> None:
    print("| scenario | workers | wall / floor | requests | Redis round trips / 1,000 requests "
          "| Redis CPU ms / 1,000 requests | fallbacks | jobs lost |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['workers']} | {r['ratio']:.2f}x | {r['requests']:.0f} "
            f"| {r['trips_per_1000']:,.0f} | {r['cpu_ms_per_1000']:.1f} | {r['fallbacks']} "
            f"| {r['lost']} |",
            flush=True,
        )
    worst = max(r["cpu_ms_per_1000"] for r in rows)
    print()
    print(
        f"One Redis shard (one core) for one namespace: at most 1,000 / {worst:.1f} ms x 1,000 "
        f"= {1e6 / worst:,.0f} requests/s at 100 % CPU, {0.5e6 / worst:,.0f} at 50 %."
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--redis", default=None, help="Redis URL (default: start a redis-server)")
    parser.add_argument("--only", choices=KINDS, action="append", help="run only these rows")
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), action="append")
    parser.add_argument("--no-cost", action="store_true", help="skip the permit-cost table")
    parser.add_argument(
        "--redis-timeout",
        type=float,
        default=0.25,
        help="RedisStore redis_timeout (a loaded machine trips the default 0.25 s)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="Redis round trips and CPU per 1,000 requests at 4, 8, 16 workers (only that)",
    )
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--emulator", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The peers log through stdlib logging / structlog: keep their per-retry warnings quiet.
    logging.basicConfig(level=logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.worker is not None:
        print("RESULT " + json.dumps(asyncio.run(worker(args))), flush=True)
        return

    server = None
    redis_url = args.redis
    if redis_url is None:
        from tests.redis_server import RedisServer

        server = RedisServer()
        server.start()
        redis_url = server.url
    try:
        if args.capacity:
            version = sys.version.split()[0]
            print(f"RedisStore fleet capacity ({os.cpu_count()} CPUs, Python {version})")
            print()
            with EmulatorProcess(**throttling.NEUTRAL) as emulator:
                cap = capacity(emulator.url, redis_url, args.redis_timeout)
            print_capacity(cap)
            if args.json:
                print(json.dumps(cap, indent=2))
            return
        kinds = args.only or list(KINDS)
        print(
            f"{args.workers} worker processes, emulator and redis-server on one host "
            f"({os.cpu_count()} CPUs), Python {sys.version.split()[0]}"
        )
        print()
        print("| scenario | client | wall / floor | attempts / job | 429s | jobs lost |")
        print("|---|---|---:|---:|---:|---:|")
        rows = []
        with EmulatorProcess(**throttling.NEUTRAL) as emulator:
            for scenario in args.scenario or list(SCENARIOS):
                for kind in kinds:
                    row = run_fleet(
                        kind, scenario, emulator.url, redis_url, args.workers, args.redis_timeout
                    )
                    rows.append(row)
                    calls = row["redis_calls_per_attempt"]
                    extra = f" ({calls:.2f} Redis calls / attempt" if calls else ""
                    if extra and row["fallbacks"]:
                        extra += f", {row['fallbacks']} fallbacks to local limits"
                    extra += ")" if extra else ""
                    print(
                        f"| {scenario} (floor {row['floor']:.1f} s) | {LABELS[kind]}{extra} "
                        f"| {row['ratio']:.2f}x ({row['wall']:.2f} s) | {row['attempts']:.2f} "
                        f"| {row['429s']} | {row['lost']} |",
                        flush=True,
                    )
        if not args.no_cost:
            print()
            print(
                "| store | admit p50 | admit p99 | admit + release p50 "
                "| permits/s, 1 task | permits/s, 64 tasks |"
            )
            print("|---|---:|---:|---:|---:|---:|")
            for line in asyncio.run(permit_cost(redis_url)):
                print(line)
        if args.json:
            print(json.dumps(rows, indent=2))
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
