"""Throttling benchmark: the same batch through resilience and its peers, side by side.

Run: ``python benchmarks/throttling.py`` (needs ``pip install -e '.[bench]'``).

The emulator runs in its own process on 127.0.0.1. Each scenario sends every job at once and
is run once per client, in one process run:

(a) plan: plan limit 8 generations of 50 ms, 400 jobs                   floor 2.5 s
(b) rate: 100 requests/s, burst 10, Retry-After + Retry-After-Ms, 300 jobs  floor 2.9 s
(c) transient: plan limit 8 x 50 ms plus 20 % retryable errors, 400 jobs  floor 2.5 s
(d) rate as (b), whole-second Retry-After only                         floor 2.9 s
(e) rate as (b), Retry-After as an HTTP-date                           floor 2.9 s
(f-i) a fixed window of 100 requests per second (wall-clock aligned), announced on every
    answer in one header style each: (f) RateLimit/RateLimit-Policy, (g) RateLimit-Limit/
    -Remaining/-Reset, (h) X-RateLimit-* with delta Reset, (i) X-RateLimit-* with a Unix-time
    Reset; its 429 has a whole-second Retry-After; 300 jobs. The floor is the start of the
    window that admits the last job: the third window counted from the one the batch starts
    in. Each batch starts at a random point 0.05-0.7 s into a wall-clock second (a batch
    started at the very end of a window could not use it, whatever the client).

Every client gets the same budget: 5 attempts, 0.5 s initial wait doubling to 30 s, full
jitter, 60 s deadline, configured the way its docs suggest. Columns: wall time / physical
floor, attempts per job (what the server saw), jobs lost (not completed: final error or
exception), duplicate executions (a job generated more than once).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import stamina
import structlog
import tenacity
from aiohttp_retry import ExponentialRetry, RetryClient
from yarl import URL

from resilience import Backoff, ResilienceMiddleware
from resilience.testing import EmulatorProcess

ATTEMPTS = 5
INITIAL = 0.5
MAX_DELAY = 30.0
DEADLINE = 60.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    floor: float  # seconds; 0: the fixed window's, computed from where the batch starts
    settings: dict[str, Any]


RATE: Final = {"rate_limit": 100.0, "generation_time": 0.0}
WINDOW: Final = {
    "window_limit": 100,
    "window_seconds": 1.0,
    "generation_time": 0.0,
    "retry_after_style": "seconds",  # what most servers send
}


SCENARIOS = (
    Scenario("plan limit 8 x 50 ms", 400, 2.5, {"plan_concurrency": 8, "generation_time": 0.05}),
    Scenario("rate 100/s, Retry-After-Ms", 300, 2.9, RATE),
    Scenario(
        "20% transient + plan 8",
        400,
        2.5,
        {"plan_concurrency": 8, "generation_time": 0.05, "transient_rate": 0.2},
    ),
    Scenario("rate, Retry-After: N s", 300, 2.9, {**RATE, "retry_after_style": "seconds"}),
    Scenario("rate, Retry-After: date", 300, 2.9, {**RATE, "retry_after_style": "date"}),
    *(
        Scenario(f"window 100/s, {style}", 300, 0.0, {**WINDOW, "quota_headers": style})
        for style in ("ietf", "ietf-old", "x", "x-unix")
    ),
)
LETTERS: Final = "abcdefghi"
NEUTRAL: dict[str, Any] = {
    "plan_concurrency": None,
    "rate_limit": None,
    "transient_rate": 0.0,
    "fatal_rate": 0.0,
    "reset_rate": 0.0,
    "rate_burst": 10,
    "generation_time": 0.05,
    "retry_after_style": "ms",
    "window_limit": None,
    "quota_headers": "ietf",
}


class Retryable(Exception):
    """What the peers raise to ask for a retry (they retry on exceptions)."""


LOST = (Retryable, aiohttp.ClientError, asyncio.TimeoutError)  # what a job's failure ends in
Poster = aiohttp.ClientSession | RetryClient


async def _post(session: Poster, url: URL, job: str, *, raise_retryable: bool = False) -> bool:
    """Whether job ``job`` was generated; ``raise_retryable``: a retryable status raises
    :class:`Retryable` instead, for the peers that retry on exceptions."""
    async with session.post(url, json={"job": job}) as resp:
        await resp.read()
        if raise_retryable and resp.status in RETRY_STATUSES:
            raise Retryable(resp.status)
        return resp.status == 200


async def _all_at_once(jobs: list[str], send: Callable[[str], Awaitable[bool]]) -> list[bool]:
    """Every job sent at once; a job whose ``send`` raises is lost."""

    async def one(job: str) -> bool:
        try:
            return await send(job)
        except LOST:
            return False

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def run_resilience(base: URL, jobs: list[str]) -> list[bool]:
    mw = ResilienceMiddleware(
        max_attempts=ATTEMPTS,
        max_elapsed=DEADLINE,
        backoff=Backoff(initial=INITIAL, multiplier=2, max_delay=MAX_DELAY, jitter="full"),
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(middlewares=(mw,), connector=connector) as session:
        return await _all_at_once(jobs, functools.partial(_post, session, base / "v1/generate"))


async def run_aiohttp_retry(base: URL, jobs: list[str]) -> list[bool]:
    options = ExponentialRetry(
        attempts=ATTEMPTS,
        start_timeout=INITIAL,
        max_timeout=MAX_DELAY,
        factor=2.0,
        statuses=set(RETRY_STATUSES),
        methods={"POST"},
        exceptions={aiohttp.ClientError},
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with RetryClient(
        client_session=aiohttp.ClientSession(connector=connector), retry_options=options
    ) as client:
        return await _all_at_once(jobs, functools.partial(_post, client, base / "v1/generate"))


async def run_tenacity(base: URL, jobs: list[str]) -> list[bool]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        @tenacity.retry(
            stop=tenacity.stop_after_attempt(ATTEMPTS) | tenacity.stop_after_delay(DEADLINE),
            wait=tenacity.wait_random_exponential(multiplier=INITIAL, max=MAX_DELAY),
            retry=tenacity.retry_if_exception_type((Retryable, aiohttp.ClientError)),
            reraise=True,
        )
        async def call(job: str) -> bool:
            return await _post(session, base / "v1/generate", job, raise_retryable=True)

        return await _all_at_once(jobs, call)


async def run_stamina(base: URL, jobs: list[str]) -> list[bool]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        @stamina.retry(
            on=(Retryable, aiohttp.ClientError),
            attempts=ATTEMPTS,
            timeout=DEADLINE,
            wait_initial=INITIAL,
            wait_max=MAX_DELAY,
            wait_exp_base=2,
        )
        async def call(job: str) -> bool:
            return await _post(session, base / "v1/generate", job, raise_retryable=True)

        return await _all_at_once(jobs, call)


CLIENTS: dict[str, Callable[[URL, list[str]], Awaitable[list[bool]]]] = {
    "resilience": run_resilience,
    "aiohttp-retry": run_aiohttp_retry,
    "tenacity": run_tenacity,
    "stamina": run_stamina,
}


@dataclass(frozen=True)
class Row:
    scenario: str
    client: str
    wall: float
    floor: float
    ratio: float
    attempts_per_job: float
    lost: int
    duplicates: int
    throttled: int


async def _control(session: aiohttp.ClientSession, base: URL, what: str, **body: Any) -> Any:
    if what == "stats":
        async with session.get(base / "_emulator/stats") as resp:
            return await resp.json()
    async with session.post(base / f"_emulator/{what}", json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def measure(base: URL, scenario: Scenario, client: str) -> Row:
    async with aiohttp.ClientSession() as control:
        await _control(control, base, "configure", **{**NEUTRAL, **scenario.settings})
        await _control(control, base, "reset")
        await asyncio.sleep(0.3)  # let the emulator's rate bucket refill
        jobs = [f"{client}-{i}" for i in range(scenario.jobs)]
        floor = scenario.floor
        if not floor:
            # Start 0.05-0.7 s into a window; the last job is admitted two windows later. The
            # window is a new one: the emulator's window outlives a reset of its counters, so
            # a batch started in the second the previous batch ended in would find it spent.
            await asyncio.sleep(1.0 - time.time() % 1.0 + random.uniform(0.05, 0.7))
            floor = math.floor(time.time()) + 2.0 - time.time()
        start = time.perf_counter()
        results = await asyncio.wait_for(CLIENTS[client](base, jobs), timeout=300)
        wall = time.perf_counter() - start
        stats = await _control(control, base, "stats")
    by_code = stats["by_code"]
    throttled = by_code.get("GENERATION_CONCURRENCY_EXCEEDED", 0) + by_code.get("RATE_LIMITED", 0)
    return Row(
        scenario.name,
        client,
        wall,
        floor,
        wall / floor,
        stats["requests"] / scenario.jobs,
        results.count(False),
        stats["duplicates"],
        throttled,
    )


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'scenario':<26} {'client':<14} {'wall s':>7} {'floor s':>8} {'x floor':>8} "
        f"{'+ s':>6} {'attempts/job':>13} {'429s':>6} {'lost':>5} {'dupes':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.scenario:<26} {r.client:<14} {r.wall:>7.2f} {r.floor:>8.2f} {r.ratio:>8.2f} "
            f"{r.wall - r.floor:>+6.2f} {r.attempts_per_job:>13.2f} {r.throttled:>6} "
            f"{r.lost:>5} {r.duplicates:>6}"
        )


async def main_async(clients: list[str], scenarios: list[Scenario], as_json: bool) -> None:
    with EmulatorProcess(**NEUTRAL) as emulator:
        base = emulator.url
        rows = []
        for scenario in scenarios:
            for client in clients:
                row = await measure(base, scenario, client)
                rows.append(row)
                if not as_json:
                    print(f"  ran {scenario.name} / {client}: {row.wall:.2f}s", file=sys.stderr)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    parser.add_argument(
        "--scenarios", default=",".join(LETTERS), help=f"comma-separated, of {LETTERS}"
    )
    parser.add_argument("--runs", type=int, default=1, help="run each scenario this often")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    clients = [c for c in args.clients.split(",") if c]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients: {sorted(unknown)}")
    picked = [SCENARIOS[LETTERS.index(s)] for s in args.scenarios.split(",") if s and s in LETTERS]
    picked = [s for s in picked for _ in range(args.runs)]
    # The peers log through stdlib logging / structlog: keep their per-retry warnings quiet.
    logging.basicConfig(level=logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    asyncio.run(main_async(clients, picked, args.json))


if __name__ == "__main__":
    main()
