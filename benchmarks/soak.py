"""Soak: 10,000 logical requests at concurrency 500 against the emulator with 10 % mixed faults.

Run: ``python benchmarks/soak.py`` (``--requests``, ``--concurrency``, ``--plan`` to change it).

The emulator runs in its own process on 127.0.0.1 (this script, started again with ``--serve``),
so the RSS reported is the client's alone. Faults, drawn per request by the emulator: 5 %
retryable codes, 2 % non-retryable codes, 3 % connection resets; a plan limit (429
GENERATION_CONCURRENCY_EXCEEDED) well below the client's concurrency; and one generation in 50
slower than the client's per-attempt read timeout (it runs on the server while the client times
out: the fault where resending a POST without an idempotency key would execute it twice). The
request mix: 60 % POSTs without an idempotency key, 20 % POSTs with one, 10 % GETs, 10 %
create-a-job-then-poll (425 until ready). The mix and the client driving it are
``tests/soak_workload.py``, which ``tests/test_soak.py`` runs at 1,000 requests.

Checks, reported in the table and in the exit code: every request ends with a response or a
typed error (no crash), no POST without a key executed twice, no keyless POST lost (succeeded
without executing, or executed although it failed before reaching the server), no connection or
permit leaked; RSS after 1k, 5k and 10k requests shows whether memory stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

import aiohttp
import structlog
from yarl import URL

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilience import Backoff, ResilienceMiddleware  # noqa: E402
from resilience.testing import Emulator, Fault  # noqa: E402
from tests.soak_workload import MIXED_FAULTS, Report, lost, run  # noqa: E402

READ_TIMEOUT = 0.5  # the client's per-attempt read timeout (sock_read)
SLOW = 1.0  # how long a slow generation takes
SLOW_EVERY = 50  # one /v1/generate in this many is slow


# ------------------------------------------------------------------ the server process


async def serve(plan: int, seed: int) -> None:
    """The emulator, plus a slow generation injected for every SLOW_EVERY-th /v1/generate."""
    async with Emulator(
        MIXED_FAULTS,
        plan_concurrency=plan,
        generation_time=0.005,
        ready_after=0.05,
        seed=seed,
    ) as emu:
        print(f"listening on {emu.url}", flush=True)
        injected = 0
        while True:
            due = emu.stats.by_path["/v1/generate"] // SLOW_EVERY + 1
            while injected < due:
                emu.inject(Fault.slow(SLOW), times=1, path="/v1/generate")
                injected += 1
            await asyncio.sleep(0.005)


class Server:
    """``python benchmarks/soak.py --serve`` as a child process; stopped on exit."""

    def __init__(self, plan: int, seed: int) -> None:
        argv = [sys.executable, __file__, "--serve", "--plan", str(plan), "--seed", str(seed)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the emulator process did not start: {line!r}")
        self.url = URL(line.removeprefix("listening on "))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ------------------------------------------------------------------ the client


async def measure(base: URL, requests: int, concurrency: int, marks: set[int]) -> Report:
    mw = ResilienceMiddleware(
        backoff=Backoff(initial=0.01, multiplier=2, max_delay=0.5),
        max_attempts=5,
        max_elapsed=30.0,
        # The emulator's random 402s are one-off faults, not an empty account: send every one.
        account_stop=None,
    )
    timeout = aiohttp.ClientTimeout(total=60, sock_read=READ_TIMEOUT)
    report = await run(base, mw, requests, concurrency, timeout=timeout, marks=marks)
    await asyncio.sleep(SLOW + 0.2)  # generations the client timed out on finish server-side
    async with aiohttp.ClientSession() as plain:
        async with plain.get(base / "_emulator/stats") as resp:
            report.stats = await resp.json()
    return report


def render(report: Report, requests: int, concurrency: int, plan: int) -> tuple[str, bool]:
    results = report.results
    stats = report.stats
    outcomes = Counter(r.outcome for r in results)
    ok = outcomes.pop("ok", 0)
    crashes = sum(n for o, n in outcomes.items() if o.startswith("CRASH"))
    executions: dict[str, int] = stats["executions"]
    keyless = [r for r in results if r.kind == "post" and r.job is not None]
    twice = sum(1 for r in keyless if executions.get(r.job or "", 0) > 1)
    timed_out = sum(1 for r in keyless if r.outcome == "SocketTimeoutError")
    lost_count = sum(1 for r in keyless if lost(r, executions))
    keyed_twice = sum(1 for n in stats["idempotency_executions"].values() if n > 1)
    by_code: dict[str, int] = stats["by_code"]
    width = 60

    def row(label: str, value: object) -> str:
        return f"{label:<{width}} {value!s:>14}"

    lines = [
        f"soak: {requests:,} logical requests, concurrency {concurrency}, plan limit {plan}",
        "",
        row("metric", "value"),
        "-" * (width + 15),
        row("logical requests", len(results)),
        row("ok", ok),
    ]
    for outcome, n in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(row(f"  typed failure: {outcome}", n))
    lines += [
        row("client crashes (untyped exceptions)", crashes),
        row("keyless POSTs executed twice", twice),
        row("keyless POSTs lost (outcome vs server executions)", lost_count),
        row("keyless POSTs timed out after sending (ran once, not resent)", timed_out),
        row("keyed POSTs executed twice (resent with the same key)", keyed_twice),
        row("server: requests (attempts)", stats["requests"]),
        row("server: connection resets", by_code.get("reset", 0)),
        row("server: plan-limit 429s", by_code.get("GENERATION_CONCURRENCY_EXCEEDED", 0)),
        row("server: 425 polls", by_code.get("GENERATION_NOT_READY", 0)),
        row("server: max generations in flight", stats["max_in_flight"]),
        row("client: leaked connections / permits", f"{report.leaked_connections} / "
            f"{report.leaked_permits}"),
    ]  # fmt: skip
    for n, (peak, now, at) in sorted(report.marks.items()):
        label = f"client RSS after {n:,} requests, peak / current MB (t={at:.1f}s)"
        lines.append(row(label, f"{peak:.1f} / {now:.1f}"))
    lines.append(row("wall time (s)", f"{report.wall:.2f}"))
    lines.append(row("throughput (logical requests/s)", f"{len(results) / report.wall:.0f}"))
    healthy = (
        len(results) == requests
        and crashes == 0
        and twice == 0
        and lost_count == 0
        and report.leaked_connections == 0
        and report.leaked_permits == 0
    )
    lines += ["", "PASS" if healthy else "FAIL"]
    return "\n".join(lines), healthy


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--plan", type=int, default=50, help="emulator plan concurrency limit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Attempt lines would dominate the run: errors only.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        cache_logger_on_first_use=True,
    )
    if args.serve:
        asyncio.run(serve(args.plan, args.seed))
        return
    marks = {n for n in (1_000, args.requests // 2, args.requests) if 0 < n <= args.requests}
    server = Server(args.plan, args.seed)
    try:
        report = asyncio.run(measure(server.url, args.requests, args.concurrency, marks))
    finally:
        server.stop()
    text, healthy = render(report, args.requests, args.concurrency, args.plan)
    print(text)
    if args.json:
        outcomes = Counter(r.outcome for r in report.results)
        print(json.dumps({"outcomes": outcomes, "marks": report.marks, "wall": report.wall}))
    sys.exit(0 if healthy else 1)


if __name__ == "__main__":
    main()
