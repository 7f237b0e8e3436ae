"""Happy-path overhead: requests/s through the middleware vs bare aiohttp.

Run: ``python benchmarks/overhead.py [--requests 20000] [--concurrency 64] [--rounds 5]``

The emulator serves ``GET /v1/ping`` in its own process on 127.0.0.1. Each round runs bare
aiohttp and the middleware (default logging: structlog unconfigured, so first-attempt
successes are filtered DEBUG events) back to back, in alternating order; the table gives each
client's median requests/s and the ratio of medians. Noise between runs on a 2-core VM is
around +-10-20 %, hence rounds and medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from yarl import URL

from resilience import ResilienceMiddleware
from resilience.testing import EmulatorProcess


async def run(url: URL, requests: int, concurrency: int, with_middleware: bool) -> float:
    middlewares = (ResilienceMiddleware(),) if with_middleware else ()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(middlewares=middlewares, connector=connector) as session:
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        # warm-up: open the connections
        warm = remaining
        remaining = concurrency * 10
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        remaining = warm
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


async def main_async(requests: int, concurrency: int, rounds: int) -> None:
    with EmulatorProcess(generation_time=0.0) as emulator:
        url = emulator.url / "v1/ping"
        bare: list[float] = []
        ours: list[float] = []
        for i in range(rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            for flag in order:
                rate = await run(url, requests, concurrency, flag)
                (ours if flag else bare).append(rate)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"{'client':<22} {'median req/s':>12}   runs")
    print(f"{'bare aiohttp':<22} {b:>12.0f}   {', '.join(f'{x:.0f}' for x in bare)}")
    print(f"{'resilience middleware':<22} {o:>12.0f}   {', '.join(f'{x:.0f}' for x in ours)}")
    print(f"ratio middleware / bare: {o / b:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main_async(args.requests, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
