"""Happy-path overhead: requests/s through the middleware vs bare aiohttp.

Run: ``python benchmarks/overhead.py [--requests 20000] [--concurrency 64] [--rounds 5] [--hooks]``

The emulator serves ``GET /v1/ping`` in its own process on 127.0.0.1. Each round runs bare
aiohttp and the middleware (default logging: structlog unconfigured, so first-attempt
successes are filtered DEBUG events) back to back, in alternating order; the table gives each
client's median requests/s and the ratio of medians. ``--hooks`` adds the middleware with each
instrumentation hook: OpenTelemetry's SDK with a batch span processor into an exporter that
drops the spans and a metric reader that is never read (the cost of the hook and the SDK's
recording, not of an exporter's I/O), and Prometheus with its own registry. Noise between runs
on a 2-core VM is around +-10-20 %, hence rounds and medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Sequence

import aiohttp
from yarl import URL

from resilience import ResilienceMiddleware
from resilience.instrumentation import Hook
from resilience.testing import EmulatorProcess


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


# client name -> the middleware's hooks (None: bare aiohttp, no middleware)
CLIENTS: dict[str, Callable[[], Sequence[Hook] | None]] = {
    "bare aiohttp": lambda: None,
    "resilience middleware": list,
}
HOOK_CLIENTS: dict[str, Callable[[], Sequence[Hook] | None]] = {
    "+ OpenTelemetryHook": otel_hooks,
    "+ PrometheusHook": prometheus_hooks,
}


async def run(
    url: URL, requests: int, concurrency: int, hooks: Sequence[Hook] | None
) -> tuple[float, float]:
    """Requests per second, and this process's CPU microseconds per request (less sensitive
    than the rate to other processes on a shared machine)."""
    middlewares = (ResilienceMiddleware(hooks=hooks),) if hooks is not None else ()
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
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu_us = (time.process_time() - cpu) / requests * 1e6
        return requests / (time.perf_counter() - start), cpu_us


async def main_async(requests: int, concurrency: int, rounds: int, with_hooks: bool) -> None:
    clients = {**CLIENTS, **(HOOK_CLIENTS if with_hooks else {})}
    rates: dict[str, list[float]] = {name: [] for name in clients}
    cpus: dict[str, list[float]] = {name: [] for name in clients}
    with EmulatorProcess(generation_time=0.0) as emulator:
        url = emulator.url / "v1/ping"
        for i in range(rounds):
            names = list(clients) if i % 2 == 0 else list(reversed(clients))
            for name in names:
                rate, cpu_us = await run(url, requests, concurrency, clients[name]())
                rates[name].append(rate)
                cpus[name].append(cpu_us)
    medians = {name: statistics.median(runs) for name, runs in rates.items()}
    bare = medians["bare aiohttp"]
    print(f"{'client':<22} {'median req/s':>12}  {'/ bare':>6}  {'cpu us/req':>10}   runs")
    for name, runs in rates.items():
        cpu = statistics.median(cpus[name])
        line = f"{name:<22} {medians[name]:>12.0f}  {medians[name] / bare:>6.3f}  {cpu:>10.1f}   "
        print(line + ", ".join(f"{x:.0f}" for x in runs))
    print(f"ratio middleware / bare: {medians['resilience middleware'] / bare:.3f}")
    for name in HOOK_CLIENTS if with_hooks else ():
        ratio = medians[name] / medians["resilience middleware"]
        print(f"ratio middleware {name} / middleware: {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--hooks", action="store_true", help="also the middleware with each instrumentation hook"
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.requests, args.concurrency, args.rounds, args.hooks))


if __name__ == "__main__":
    main()
