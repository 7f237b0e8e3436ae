"""Happy-path overhead: the middleware against bare aiohttp and an empty pass-through middleware.

Run: ``python benchmarks/overhead.py [--requests 20000] [--concurrency 64] [--rounds 5]
[--hooks] [--profile] [--instructions]``

The emulator serves ``GET /v1/ping`` in its own process on 127.0.0.1. Clients, in interleaved
rounds (the order flips every round):

* bare aiohttp (no middleware);
* an empty pass-through middleware, ``async def mw(req, handler): return await handler(req)``:
  what aiohttp's middleware chain itself costs;
* resilience with defaults (structlog unconfigured: first-attempt successes are filtered DEBUG
  events; circuit breaker and account stop on);
* resilience with one ``LocalStore`` shared by two sessions (the requests split between them);
* resilience with the circuit breaker and the account stop off (what those two cost);
* with ``--hooks``, resilience with each instrumentation hook (OpenTelemetry's SDK with a batch
  span processor into an exporter that drops the spans and a metric reader never read: the
  hook's and the SDK's recording, not an exporter's I/O; Prometheus with its own registry).

Each row gives the median requests/s, this process's CPU microseconds per request (steadier
than the rate when other processes share the machine) and the ratio of each to bare aiohttp
and of resilience to the pass-through middleware: the target is resilience >= 0.95x the
pass-through's requests/s.

``--profile`` runs resilience with defaults once under cProfile and prints where its time goes.
``--instructions`` counts the client's CPU instructions per request under valgrind's callgrind
(``apt-get install valgrind``): the run with ``--requests`` requests minus one with none, for
each client. Instructions do not depend on what else the machine runs, so this ratio holds on
a loaded machine where wall-clock rates do not.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import aiohttp
from yarl import URL

from resilience import LocalStore, ResilienceMiddleware
from resilience.instrumentation import Hook
from resilience.testing import EmulatorProcess

Middlewares = tuple[aiohttp.ClientMiddlewareType, ...]


async def passthrough(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    return await handler(req)


def otel_hooks() -> list[Hook]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from resilience.instrumentation import OpenTelemetryHook

    class Discard(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return [OpenTelemetryHook(tracer_provider, meter_provider)]


def prometheus_hooks() -> list[Hook]:
    from prometheus_client import CollectorRegistry

    from resilience.instrumentation import PrometheusHook

    return [PrometheusHook(CollectorRegistry())]


def shared_store() -> list[Middlewares]:
    store = LocalStore()
    return [(ResilienceMiddleware(store=store),), (ResilienceMiddleware(store=store),)]


def with_hooks(make: Callable[[], Sequence[Hook]]) -> Callable[[], list[Middlewares]]:
    return lambda: [(ResilienceMiddleware(hooks=make()),)]


BARE, PASS, OURS = "bare aiohttp", "pass-through middleware", "resilience (defaults)"
# client name -> the middlewares of each of its sessions
CLIENTS: dict[str, Callable[[], list[Middlewares]]] = {
    BARE: lambda: [()],
    PASS: lambda: [(passthrough,)],
    OURS: lambda: [(ResilienceMiddleware(),)],
    "resilience, LocalStore x 2 sessions": shared_store,
    "resilience, no breaker, no account stop": lambda: [
        (ResilienceMiddleware(circuit_breaker=None, account_stop=None),)
    ],
}
HOOK_CLIENTS: dict[str, Callable[[], list[Middlewares]]] = {
    "resilience + OpenTelemetryHook": with_hooks(otel_hooks),
    "resilience + PrometheusHook": with_hooks(prometheus_hooks),
}


async def run(
    url: URL, requests: int, concurrency: int, sessions_of: list[Middlewares], warm: bool = True
) -> tuple[float, float]:
    """Requests per second, and this process's CPU microseconds per request."""
    sessions = [
        aiohttp.ClientSession(
            middlewares=middlewares,
            connector=aiohttp.TCPConnector(limit=max(1, concurrency // len(sessions_of))),
        )
        for middlewares in sessions_of
    ]
    try:
        remaining = 0

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        def workers() -> list[asyncio.Future[None]]:
            return [
                asyncio.ensure_future(worker(sessions[i % len(sessions)]))
                for i in range(concurrency)
            ]

        if warm:  # open the connections, learn the limits
            remaining = concurrency * 10
            await asyncio.gather(*workers())
        remaining = requests
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*workers())
        cpu_us = (time.process_time() - cpu) / max(requests, 1) * 1e6
        return requests / (time.perf_counter() - start), cpu_us
    finally:
        for session in sessions:
            await session.close()


def report(rates: dict[str, list[float]], cpus: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(runs) for name, runs in rates.items()}
    bare = medians[BARE]
    print(f"{'client':<38} {'req/s':>7} {'/ bare':>7} {'CPU us/req':>10}   runs (req/s)")
    for name, runs in rates.items():
        cpu = statistics.median(cpus[name])
        print(
            f"{name:<38} {medians[name]:>7.0f} {medians[name] / bare:>7.3f} {cpu:>10.1f}   "
            + ", ".join(f"{x:.0f}" for x in runs)
        )
    ours, plain = medians[OURS], medians[PASS]
    cpu_ours, cpu_plain = statistics.median(cpus[OURS]), statistics.median(cpus[PASS])
    print(
        f"resilience / pass-through: {ours / plain:.3f} (req/s), {cpu_plain / cpu_ours:.3f} (CPU)"
    )


async def measure(requests: int, concurrency: int, rounds: int, hooks: bool) -> None:
    clients = {**CLIENTS, **(HOOK_CLIENTS if hooks else {})}
    rates: dict[str, list[float]] = {name: [] for name in clients}
    cpus: dict[str, list[float]] = {name: [] for name in clients}
    with EmulatorProcess(generation_time=0.0) as emulator:
        url = emulator.url / "v1/ping"
        for i in range(rounds):
            for name in list(clients) if i % 2 == 0 else list(reversed(clients)):
                rate, cpu_us = await run(url, requests, concurrency, clients[name]())
                rates[name].append(rate)
                cpus[name].append(cpu_us)
    report(rates, cpus)


async def profile(requests: int, concurrency: int) -> None:
    with EmulatorProcess(generation_time=0.0) as emulator:
        url = emulator.url / "v1/ping"
        profiler = cProfile.Profile()
        await run(url, concurrency * 10, concurrency, CLIENTS[OURS]())
        profiler.enable()
        await run(url, requests, concurrency, CLIENTS[OURS]())
        profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"resilience (defaults), {requests} requests: our functions by own time")
    stats.sort_stats("tottime").print_stats(r"resilience/", 25)


def instructions(requests: int, concurrency: int) -> None:
    """Client instructions per request under callgrind: (run with N) - (run with 0), / N."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("error: --instructions needs valgrind (apt-get install valgrind)")
    with EmulatorProcess(generation_time=0.0) as emulator:
        url = str(emulator.url / "v1/ping")
        per_request: dict[str, float] = {}
        for name in CLIENTS:
            counts = []
            for n in (0, requests):
                proc = subprocess.run(
                    [
                        valgrind,
                        "--tool=callgrind",
                        "--callgrind-out-file=/dev/null",
                        sys.executable,
                        __file__,
                        "--child",
                        name,
                        url,
                        str(n),
                        str(concurrency),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=1800,
                )
                match = re.search(r"Collected : (\d+)", proc.stderr)
                assert match is not None, proc.stderr[-2000:]
                counts.append(int(match.group(1)))
            per_request[name] = (counts[1] - counts[0]) / requests
    bare, plain = per_request[BARE], per_request[PASS]
    print(f"{'client':<38} {'instructions/request':>20} {'bare / this':>12}")
    for name, count in per_request.items():
        print(f"{name:<38} {count:>20,.0f} {bare / count:>12.3f}")
    print(f"pass-through / resilience (instructions): {plain / per_request[OURS]:.3f}")


def child(name: str, url: str, requests: int, concurrency: int) -> None:
    """One client's run, for --instructions: the warm-up, then ``requests`` requests."""
    asyncio.run(run(URL(url), requests, concurrency, CLIENTS[name]()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--hooks", action="store_true", help="also the middleware with each instrumentation hook"
    )
    parser.add_argument("--profile", action="store_true", help="where resilience's time goes")
    parser.add_argument(
        "--instructions", action="store_true", help="instructions per request (callgrind)"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, url, requests, concurrency = args.child
        child(name, url, int(requests), int(concurrency))
    elif args.profile:
        asyncio.run(profile(args.requests, args.concurrency))
    elif args.instructions:
        instructions(args.requests, args.concurrency)
    else:
        asyncio.run(measure(args.requests, args.concurrency, args.rounds, args.hooks))


if __name__ == "__main__":
    main()
