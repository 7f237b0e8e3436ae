"""Outage benchmark: 2,000 jobs at width 200 through a 5 s full outage, then recovery.

Run from the repository root (needs ``pip install -e '.[test,redis]'``)::

    python benchmarks/outage.py                 # every row; starts its own emulator, redis-server
    python benchmarks/outage.py --only breaker --only stamina

The emulator runs in its own process on 127.0.0.1. Each row starts a 5 s outage (every request
answered ``503 DISPATCH_TIMEOUT``), sends 2,000 jobs with 200 in flight at most
(``max_attempts=6``, ``max_elapsed=30``: each job has 25 s to spare), and lets the server
recover. Rows: resilience with its circuit breaker (the default), resilience with
``circuit_breaker=None``, a fleet of 4 processes (500 jobs at width 50 each) sharing one
``RedisStore``, and stamina and tenacity with the same budget (6 attempts, 30 s, waits from
0.5 s doubling to 30 s, configured the way their docs suggest). Baselines, with no outage:
the same jobs through a bare aiohttp session (the machine's pace), and through resilience in
one process and in the fleet (the adaptive limit slow-starts from 4 there too, as after the
recovery); a baseline runs whenever a row compared with it does.

Columns: requests the outage answered, time from recovery to the first success, the drain
(from the first success to the last job's end), jobs lost (not completed), wall time; and the
targets: requests into the outage <= the breaker's minimum throughput plus one probe per break
that started during the outage (per fleet), the first success within one capped break duration
of recovery, 0 jobs lost, and the batch drained at the server's pace after it: the drain after
recovery at most ``DRAIN_SLACK`` times the healthy batch's (the same jobs, width and machine,
measured in the same run; the server's own pace, jobs x service time / width, is printed next
to it: the rest is the client's slow start and this machine's CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import stamina
import structlog
import tenacity
from yarl import URL

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilience import CircuitBreaker, ResilienceMiddleware  # noqa: E402
from resilience.redis import RedisStore  # noqa: E402
from resilience.testing import Emulator, EmulatorProcess, Fault  # noqa: E402

JOBS: Final = 2000
WIDTH: Final = 200
OUTAGE: Final = 5.0
ATTEMPTS: Final = 6
DEADLINE: Final = 30.0
INITIAL: Final = 0.5
MAX_DELAY: Final = 30.0
WORKERS: Final = 4
BREAKER: Final = CircuitBreaker()
DRAIN_SLACK: Final = 1.25
KINDS: Final = (  # each baseline before the rows compared with it
    "plain",
    "healthy",
    "breaker",
    "no-breaker",
    "healthy-fleet",
    "fleet",
    "stamina",
    "tenacity",
    "account",
)
BASELINE: Final = {"breaker": "healthy", "fleet": "healthy-fleet"}
"""The row whose drain each outage row's is compared with (same jobs, width, processes)."""
LABELS: Final = {
    "breaker": "resilience (circuit breaker, default)",
    "plain": "baseline: plain aiohttp, no middleware, no outage",
    "healthy": "baseline: resilience, no outage",
    "no-breaker": "resilience, circuit_breaker=None",
    "fleet": f"resilience, {WORKERS} processes, RedisStore",
    "healthy-fleet": f"baseline: resilience, {WORKERS} processes, RedisStore, no outage",
    "stamina": "stamina",
    "tenacity": "tenacity",
    "account": "resilience, 10,000 jobs on an empty account (402)",
}
ACCOUNT_JOBS: Final = 10_000
SERVER: Final[dict[str, Any]] = {"generation_time": 0.05, "seed": 0}
SERVER_PACE: Final = JOBS * SERVER["generation_time"] / WIDTH
"""Seconds the server needs for the batch at this width (no plan limit here): the floor."""


class Retryable(Exception):
    """What the peers raise to ask for a retry (they retry on exceptions)."""


LOST: Final = (Retryable, aiohttp.ClientError, asyncio.TimeoutError)  # AccountStopped too


@dataclass
class Run:
    """What one client (or one worker of a fleet) saw."""

    ok: int = 0
    first_ok: float | None = None  # time.time() of the first success
    last_done: float | None = None  # time.time() the last job ended (done or lost)
    fallbacks: int = 0  # RedisStore fallbacks to local limits (a loaded machine's Redis)

    def done(self, success: bool) -> None:
        self.last_done = time.time()
        if success:
            self.ok += 1
            if self.first_ok is None:
                self.first_ok = time.time()


async def _post(
    session: aiohttp.ClientSession, url: URL, job: str, *, raise_retryable: bool
) -> bool:
    async with session.post(url, json={"job": job}) as resp:
        await resp.read()
        if raise_retryable and resp.status >= 500:
            raise Retryable(resp.status)
        return resp.status == 200


async def _width(jobs: list[str], width: int, send: Callable[[str], Awaitable[bool]]) -> Run:
    """``width`` jobs in flight at most; a job whose ``send`` raises is lost."""
    run = Run()
    queue = iter(jobs)

    async def lane() -> None:
        for job in queue:
            try:
                success = await send(job)
            except LOST:
                success = False
            run.done(success)

    await asyncio.gather(*(lane() for _ in range(width)))
    return run


def _connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=0)


async def _batch(session: aiohttp.ClientSession, url: URL, jobs: list[str], width: int) -> Run:
    """The jobs through a session that retries by itself (or not at all): a 200 is done."""
    return await _width(jobs, width, lambda job: _post(session, url, job, raise_retryable=False))


async def run_resilience(
    base: URL, jobs: list[str], width: int, *, breaker: bool, redis: tuple[str, str] | None
) -> Run:
    store = None
    if redis is not None:
        url, namespace = redis
        store = RedisStore.from_url(url, namespace=namespace, circuit_breaker=BREAKER)
        mw = ResilienceMiddleware(max_attempts=ATTEMPTS, max_elapsed=DEADLINE, store=store)
    else:
        mw = ResilienceMiddleware(
            max_attempts=ATTEMPTS,
            max_elapsed=DEADLINE,
            circuit_breaker=BREAKER if breaker else None,
        )
    async with aiohttp.ClientSession(middlewares=(mw,), connector=_connector()) as session:
        try:
            return await _batch(session, base / "v1/generate", jobs, width)
        finally:
            if store is not None:
                fallbacks = store.stats().fallbacks
                await store.aclose()
                if fallbacks:
                    print(f"fallbacks: {fallbacks}", file=sys.stderr)


async def run_plain(base: URL, jobs: list[str], width: int) -> Run:
    """The machine's pace: the same jobs through a bare session (no retries, no limits)."""
    async with aiohttp.ClientSession(connector=_connector()) as session:
        return await _batch(session, base / "v1/generate", jobs, width)


async def run_stamina(base: URL, jobs: list[str], width: int) -> Run:
    async with aiohttp.ClientSession(connector=_connector()) as session:

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

        return await _width(jobs, width, call)


async def run_tenacity(base: URL, jobs: list[str], width: int) -> Run:
    async with aiohttp.ClientSession(connector=_connector()) as session:

        @tenacity.retry(
            stop=tenacity.stop_after_attempt(ATTEMPTS) | tenacity.stop_after_delay(DEADLINE),
            wait=tenacity.wait_random_exponential(multiplier=INITIAL, max=MAX_DELAY),
            retry=tenacity.retry_if_exception_type((Retryable, aiohttp.ClientError)),
            reraise=True,
        )
        async def call(job: str) -> bool:
            return await _post(session, base / "v1/generate", job, raise_retryable=True)

        return await _width(jobs, width, call)


async def run_client(kind: str, base: URL, jobs: list[str], width: int, redis: Any) -> Run:
    if kind in ("breaker", "healthy", "no-breaker", "fleet", "healthy-fleet"):
        return await run_resilience(base, jobs, width, breaker=kind != "no-breaker", redis=redis)
    if kind == "plain":
        return await run_plain(base, jobs, width)
    if kind == "stamina":
        return await run_stamina(base, jobs, width)
    return await run_tenacity(base, jobs, width)


# --------------------------------------------------------------------------- one row


def _control(base: URL, what: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        str(base / f"_emulator/{what}"), data=data, method="GET" if what == "stats" else "POST"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _fleet(base: URL, redis_url: str, *, outage: bool) -> tuple[list[Run], float]:
    namespace = f"outage-{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 3.0  # every worker imported and ready: they start together
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", "--emulator", str(base), "--redis", redis_url,
             "--namespace", namespace, "--name", f"w{n}", "--start-at", repr(start_at)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for n in range(WORKERS)
    ]  # fmt: skip
    time.sleep(max(0.0, start_at - time.time() - 0.2))
    began = _start_outage(base) if outage else _reset(base)
    runs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"a fleet worker failed with exit code {proc.returncode}")
        runs.append(Run(**json.loads(lines[-1].removeprefix("RESULT "))))
    return runs, began


def _reset(base: URL) -> float:
    _control(base, "reset")
    return time.time()


def _start_outage(base: URL) -> float:
    _reset(base)
    _control(base, "configure", {"outage_for": OUTAGE, "outage_code": "DISPATCH_TIMEOUT"})
    return time.time()


async def _empty_account() -> dict[str, Any]:
    """10,000 jobs at width 200 where every request would be answered 402: how many are sent."""
    async with Emulator(generation_time=0.0) as emu:
        emu.inject(Fault.code("BILLING_INSUFFICIENT_CREDITS"), times=ACCOUNT_JOBS)
        mw = ResilienceMiddleware(max_attempts=ATTEMPTS, max_elapsed=DEADLINE)
        began = time.time()
        async with aiohttp.ClientSession(middlewares=(mw,), connector=_connector()) as session:
            jobs = [f"a-{i}" for i in range(ACCOUNT_JOBS)]
            run = await _batch(session, emu.url / "v1/generate", jobs, WIDTH)
        return {
            "kind": "account",
            "into_outage": emu.stats.requests,
            "requests": emu.stats.requests,
            "first_ok_after_recovery": None,
            "drain": None,
            "lost": ACCOUNT_JOBS - run.ok,
            "wall": time.time() - began,
        }


def measure(kind: str, base: URL, redis_url: str | None) -> dict[str, Any]:
    if kind == "account":
        return asyncio.run(_empty_account())
    outage = kind not in ("plain", "healthy", "healthy-fleet")
    if kind.endswith("fleet"):
        assert redis_url is not None
        started = time.time()
        runs, began = _fleet(base, redis_url, outage=outage)
    else:
        began = _start_outage(base) if outage else _reset(base)
        jobs = [f"{kind}-{i}" for i in range(JOBS)]
        runs = [asyncio.run(run_client(kind, base, jobs, WIDTH, None))]
        started = began
    ended = time.time()
    stats = _control(base, "stats")
    firsts = [r.first_ok for r in runs if r.first_ok is not None]
    lasts = [r.last_done for r in runs if r.last_done is not None]
    return {
        "kind": kind,
        "into_outage": stats["outage_answers"] if outage else None,
        "requests": stats["requests"],
        "first_ok_after_recovery": min(firsts) - (began + OUTAGE) if firsts and outage else None,
        # From the first success to the last job's end: how fast the batch drains once the
        # server answers (after recovery; from the start for a baseline).
        "drain": max(lasts) - min(firsts) if firsts and lasts else None,
        "lost": JOBS - sum(r.ok for r in runs),
        "wall": ended - max(began, started),
    }


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over repeated runs of one row (None when any run had none)."""
    row: dict[str, Any] = {"kind": runs[0]["kind"], "runs": len(runs)}
    for key in runs[0]:
        if key == "kind":
            continue
        values = [run[key] for run in runs]
        row[key] = None if None in values else statistics.median(values)
        if key == "drain" and row[key] is not None:
            row["drain_range"] = (min(values), max(values))
    return row


def drain_verdict(row: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """The drain against its healthy baseline: ``1.05x ok`` (within DRAIN_SLACK), or ``-``."""
    if baseline is None or row["drain"] is None or not baseline["drain"]:
        return "-"
    ratio = row["drain"] / baseline["drain"]
    return f"{ratio:.2f}x {'ok' if ratio <= DRAIN_SLACK else 'SLOW'}"


def probes_during_outage(settings: CircuitBreaker, outage: float) -> int:
    """Breaks that end (one probe each) before recovery, if the breaker opens at once."""
    probes, at, opens = 0, 0.0, 1
    while (at := at + settings.break_for(opens)) < outage:
        probes += 1
        opens += 1
    return probes


# --------------------------------------------------------------------------- main


def _figure(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    delay = args.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    jobs = [f"{args.name}-{i}" for i in range(JOBS // WORKERS)]
    run = await run_resilience(
        URL(args.emulator), jobs, WIDTH // WORKERS, breaker=True, redis=(args.redis, args.namespace)
    )
    return {"ok": run.ok, "first_ok": run.first_ok, "last_done": run.last_done}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=KINDS, action="append", help="run only these rows")
    parser.add_argument("--redis", default=None, help="Redis URL (default: start a redis-server)")
    parser.add_argument("--runs", type=int, default=1, help="runs per row (the median is shown)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--emulator", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The peers log through stdlib logging / structlog: keep their per-retry warnings quiet.
    logging.basicConfig(level=logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.worker:
        print("RESULT " + json.dumps(asyncio.run(_worker(args))), flush=True)
        return

    wanted = set(args.only or KINDS)
    wanted |= {BASELINE[kind] for kind in wanted if kind in BASELINE}
    kinds = [kind for kind in KINDS if kind in wanted]
    server = None
    redis_url = args.redis
    if redis_url is None and any(kind.endswith("fleet") for kind in kinds):
        from tests.redis_server import RedisServer

        server = RedisServer()
        server.start()
        redis_url = server.url
    bound = BREAKER.minimum_throughput + probes_during_outage(BREAKER, OUTAGE)
    print(
        f"{JOBS} jobs at width {WIDTH}, {OUTAGE:g} s outage (503 DISPATCH_TIMEOUT), "
        f"max_attempts={ATTEMPTS}, max_elapsed={DEADLINE:g}; {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}; median of {args.runs} run(s) per row"
    )
    print(
        f"server's pace: {JOBS} jobs x {SERVER['generation_time'] * 1000:g} ms / {WIDTH} in "
        f"flight = {SERVER_PACE:.2f} s"
    )
    print(
        f"targets: into the outage <= {bound} (minimum throughput {BREAKER.minimum_throughput} "
        f"+ {bound - BREAKER.minimum_throughput} probes), first success <= "
        f"{BREAKER.max_break_duration:g} s after recovery, 0 lost, drain after recovery <= "
        f"{DRAIN_SLACK:g}x the healthy batch's"
    )
    print()
    print(
        "| client | into the outage | recovery -> first success | drain | vs healthy "
        "| jobs lost | wall | requests |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows: dict[str, dict[str, Any]] = {}
    try:
        with EmulatorProcess(**SERVER) as emulator:
            for kind in kinds:
                row = median_row([measure(kind, emulator.url, redis_url) for _ in range(args.runs)])
                rows[kind] = row
                first, drain = row["first_ok_after_recovery"], row["drain"]
                print(
                    f"| {LABELS[kind]} | {_figure(row['into_outage'], '{:g}')} "
                    f"| {_figure(first, '{:.2f} s')} | {_figure(drain, '{:.2f} s')} "
                    f"| {drain_verdict(row, rows.get(BASELINE.get(kind, '')))} | {row['lost']:g} "
                    f"| {row['wall']:.1f} s | {row['requests']:g} |",
                    flush=True,
                )
    finally:
        if server is not None:
            server.close()
    if args.json:
        print(json.dumps(list(rows.values()), indent=2))


if __name__ == "__main__":
    main()
