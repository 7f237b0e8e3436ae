"""The soak workload: the request mix, one logical request, and the client that drives a batch.

Shared by ``tests/test_soak.py`` (1,000 requests against the in-process emulator) and
``benchmarks/soak.py`` (10,000 against the emulator in its own process); each brings its own
server, settings and checks.

The mix: 60 % POSTs without an idempotency key, 20 % POSTs with one, 10 % GETs, 10 %
create-a-job-then-poll (425 until ready). Every logical request ends in a :class:`Result`: "ok",
the final HTTP error, the typed exception's class name, or a crash (anything untyped escaping).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import anyio
from yarl import URL

from resilience import DeadlineExceeded, ResilienceMiddleware
from resilience.testing import EmulatorConfig

TYPED: Final = (aiohttp.ClientError, DeadlineExceeded, TimeoutError)
MIXED_FAULTS: Final = EmulatorConfig(transient_rate=0.05, fatal_rate=0.02, reset_rate=0.03)
"""The emulator's 10 % random faults, drawn per request: 5 % retryable codes, 2 % non-retryable
codes, 3 % connections reset; the base config of both soaks' emulators."""

Kind = Literal["post", "post-keyed", "get", "poll"]
REQUEST_ID_PREFIX: Final[Mapping[Kind, str]] = {
    "post": "keyless",
    "post-keyed": "keyed",
    "get": "get",
    "poll": "poll",
}


def kind_of(i: int) -> Kind:
    """60 % POSTs without a key, 20 % with one, 10 % GETs, 10 % create-then-poll."""
    slot = i % 10
    if slot < 6:
        return "post"
    if slot < 8:
        return "post-keyed"
    return "get" if slot == 8 else "poll"


@dataclass
class Result:
    kind: Kind
    job: str | None
    outcome: str  # "ok", "HTTP <status> <code>", an exception class name, or "CRASH <repr>"

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


async def one(session: aiohttp.ClientSession, base: URL, i: int, *, named: bool = False) -> Result:
    """Logical request ``i``. ``named``: its request id says which one (``keyless-<i>``,
    ``keyed-<i>``, ``get-<i>``, ``poll-<i>``, and ``create-<i>`` for the job a poll creates)."""
    kind = kind_of(i)
    job = f"{kind}-{i}" if kind.startswith("post") else None

    def request_id(prefix: str) -> dict[str, str]:
        return {"X-Request-ID": f"{prefix}-{i}"} if named else {}

    headers = request_id(REQUEST_ID_PREFIX[kind])
    kwargs: dict[str, Any] = {}
    try:
        if kind == "poll":
            create = request_id("create")
            async with session.post(base / "v1/jobs", json={"text": "hi"}, headers=create) as r:
                body = await r.json()
                if r.status != 202:
                    return Result(kind, job, f"HTTP {r.status} {body.get('code')}")
            method, url = "GET", base / "v1/jobs" / body["id"]
        elif kind == "get":
            method, url = "GET", base / "v1/ping"
        else:
            if kind == "post-keyed":
                headers["Idempotency-Key"] = f"key-{i}"
            method, url = "POST", base / "v1/generate"
            kwargs = {"json": {"job": job}}
        async with session.request(method, url, headers=headers, **kwargs) as resp:
            body = await resp.json()
            if resp.status < 400:
                return Result(kind, job, "ok")
            return Result(kind, job, f"HTTP {resp.status} {body.get('code')}")
    except TYPED as exc:
        return Result(kind, job, type(exc).__name__)
    except Exception as exc:  # a crash: anything untyped escaping
        return Result(kind, job, f"CRASH {exc!r}")


def lost(result: Result, executions: Mapping[str, int]) -> bool:
    """Whether a keyless POST's outcome contradicts the server's count of its executions: one
    that succeeded ran exactly once, one that failed before reaching the generation never ran."""
    runs = executions.get(result.job or "", 0)
    if result.ok:
        return runs != 1
    if (
        result.outcome == "SocketTimeoutError"
    ):  # sent, then no answer in time: it may have run, once
        return runs > 1
    return runs != 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / (1024 * 1024)


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    marks: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # n: peak, now, t
    stats: dict[str, Any] = field(default_factory=dict)  # the server's, when it is remote
    wall: float = 0.0
    leaked_connections: int = 0
    leaked_permits: int = 0
    still_queued: int = 0  # tasks still waiting for a permit (or parked) after the batch


async def run(
    base: URL,
    mw: ResilienceMiddleware,
    requests: int,
    concurrency: int,
    *,
    timeout: aiohttp.ClientTimeout,
    named: bool = False,
    marks: Set[int] = frozenset(),
    before: Callable[[int], object] | None = None,
) -> Report:
    """Logical requests ``0 .. requests - 1`` through ``mw``, ``concurrency`` at a time, on one
    session with a connector of that size. ``before(i)`` runs as request ``i`` starts; after each
    count in ``marks`` the client's RSS is noted. The connector and the limiter are read back
    once the batch is done, before the session closes."""
    report = Report()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        middlewares=(mw,), connector=connector, timeout=timeout
    ) as session:
        started = time.monotonic()
        pending = iter(range(requests))

        async def worker() -> None:
            # A fixed pool of workers: memory reflects the steady state, not 10k queued tasks.
            for i in pending:
                if before is not None:
                    before(i)
                report.results.append(await one(session, base, i, named=named))
                done = len(report.results)
                if done in marks:
                    now = current_rss_mb()
                    report.marks[done] = (max(peak_rss_mb(), now), now, time.monotonic() - started)

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        report.wall = time.monotonic() - started
        report.leaked_connections = len(connector._acquired)
        limiter = getattr(mw.store, "limiter", None)
        if limiter is not None:
            report.leaked_permits, report.still_queued = limiter.in_flight, limiter.waiting
    return report
