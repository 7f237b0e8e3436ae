"""Running the demo: a batch of generation jobs through the middleware, against the embedded
emulator with a realistic fault mix (``python -m resilience demo`` renders it).

Everything happens in this process, on 127.0.0.1: the emulator serves, one ``ClientSession``
with a :class:`~resilience.ResilienceMiddleware` sends every job at once and lets the adaptive
limiter and the rate pacer do the throttling. The attempt events go to ``--log-file`` (JSON
lines, as :func:`resilience.configure_logging` writes them) or to a temporary file, and the
summary is read back from them with :func:`resilience.logs.summarize`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
import anyio

from resilience._backoff import Backoff
from resilience._logsetup import configure_logging
from resilience._middleware import ResilienceMiddleware, Settings
from resilience.cli._args import CommandError
from resilience.logs import LogSummary, summarize
from resilience.testing import Emulator, EmulatorConfig, EmulatorStats

__all__ = [
    "DEFAULT_EMULATOR",
    "DEFAULT_JOBS",
    "MAX_JOBS",
    "DemoError",
    "DemoResult",
    "DemoSettings",
    "OnJobDone",
    "run_demo",
]

DEFAULT_JOBS: Final = 500
"""About 12 s with the default fault mix (~43 jobs/s: the plan limit binds, 8 x 1/0.15 s)."""
MAX_JOBS: Final = 10_000
DEFAULT_EMULATOR: Final = EmulatorConfig(
    plan_concurrency=8,
    rate_limit=60.0,
    rate_burst=10,
    generation_time=0.15,
    transient_rate=0.08,
    fatal_rate=0.02,
    reset_rate=0.01,
    seed=0,
)
"""The fault mix: a plan of 8 generations in flight, 60 requests/s (burst 10), 150 ms per
generation, 8 % retryable errors, 2 % non-retryable ones, 1 % connection resets. Both limits
bite: the plan allows ~53 generations/s, the rate limit 60 requests/s with retries included."""
DEFAULT_TIMEOUT: Final = 300.0


class DemoError(CommandError):
    """The demo could not run (e.g. the log file cannot be opened)."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """What the demo runs: the batch, the emulator's fault mix and the middleware's settings."""

    jobs: int = DEFAULT_JOBS
    emulator: EmulatorConfig = DEFAULT_EMULATOR
    max_attempts: int = 5
    max_elapsed: float | None = 60.0
    backoff: Backoff = field(default_factory=Backoff)
    log_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    """The whole run stops after this many seconds; unfinished jobs count as ``cancelled``."""

    def __post_init__(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int):
            raise TypeError(f"jobs must be an int, got {self.jobs!r}")
        if not 1 <= self.jobs <= MAX_JOBS:
            raise ValueError(f"jobs must be in [1, {MAX_JOBS}], got {self.jobs}")
        if not 0 < self.timeout < float("inf"):
            raise ValueError(f"timeout must be > 0 and finite, got {self.timeout!r}")
        # Validate the middleware's settings now, with its own messages.
        Settings(max_attempts=self.max_attempts, max_elapsed=self.max_elapsed, backoff=self.backoff)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What happened: per-job outcomes, the attempt log's summary, the emulator's counters."""

    settings: DemoSettings
    jobs_ok: int
    failures: Counter[str]
    """Failed jobs by their final answer: the error code, ``HTTP <status>``, or an exception."""
    cancelled: int
    """Jobs still running when ``timeout`` stopped the run."""
    log: LogSummary
    wall_time: float
    final_limit: int
    emulator: EmulatorStats

    @property
    def jobs_failed(self) -> int:
        """Jobs that ended with an error."""
        return sum(self.failures.values())


OnJobDone = Callable[[bool, int], None]
"""Called after each job with (ok, the middleware's concurrency limit now)."""


async def _failure_key(resp: aiohttp.ClientResponse) -> str:
    try:
        body: Any = await resp.json(content_type=None)
    except ValueError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if isinstance(code, str) and code:
        return f"{code} ({resp.status})"
    return f"HTTP {resp.status}"


async def _run_jobs(
    settings: DemoSettings, emu: Emulator, progress: OnJobDone | None
) -> tuple[int, Counter[str], int, int]:
    """Send every job at once through one middleware; (ok, failures, cancelled, final limit)."""
    middleware = ResilienceMiddleware(
        max_attempts=settings.max_attempts,
        max_elapsed=settings.max_elapsed,
        backoff=settings.backoff,
        # The emulator's random 402s are one-off faults, not an empty account: send every one.
        account_stop=None,
    )
    url = emu.url / "v1/generate"
    id_header = middleware.settings.request_id_header
    failures: Counter[str] = Counter()
    ok = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)

    async with aiohttp.ClientSession(middlewares=(middleware,), timeout=timeout) as session:

        async def job(n: int) -> None:
            nonlocal ok
            key = f"demo-{n:06d}"
            failure: str | None = None
            try:
                # The idempotency key makes a POST safe to resend after a connection reset;
                # the request ID names the job in the attempt log.
                headers = {"Idempotency-Key": key, id_header: key}
                async with session.post(url, json={"job": key}, headers=headers) as resp:
                    if resp.status < 400:
                        await resp.read()
                    else:
                        failure = await _failure_key(resp)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failure = type(exc).__name__
            if failure is None:
                ok += 1
            else:
                failures[failure] += 1
            if progress is not None:
                progress(failure is None, middleware.concurrency_limit)

        with anyio.move_on_after(settings.timeout):
            async with anyio.create_task_group() as tg:
                for n in range(settings.jobs):
                    tg.start_soon(job, n)
    cancelled = settings.jobs - ok - sum(failures.values())
    return ok, failures, cancelled, middleware.concurrency_limit


def _read_log(lines: Iterable[str | bytes]) -> LogSummary:
    return summarize(lines, top=5)


async def run_demo(settings: DemoSettings, *, progress: OnJobDone | None = None) -> DemoResult:
    """Start the emulator, run the batch, read the attempt log back; bounded by the timeout.

    Raises :class:`DemoError` when ``settings.log_file`` cannot be written.
    """
    log_path = settings.log_file
    scratch: IO[str] | None = None
    start_offset = 0
    try:
        if log_path is not None:
            start_offset = log_path.stat().st_size if log_path.exists() else 0
            undo = configure_logging(log_path, level="debug")
        else:
            scratch = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
            undo = configure_logging(scratch, level="debug")
    except OSError as exc:
        raise DemoError(f"cannot write the log file {log_path}: {exc.strerror or exc}") from None
    try:
        try:
            async with Emulator(settings.emulator) as emu:
                began = time.monotonic()
                ok, failures, cancelled, limit = await _run_jobs(settings, emu, progress)
                wall = time.monotonic() - began
                stats = emu.stats
        finally:
            undo()
        # Only this run's lines: a log file opened in append mode may hold earlier runs.
        if scratch is not None:
            scratch.flush()
            scratch.seek(0)
            log = _read_log(scratch)
        else:
            assert log_path is not None
            with log_path.open("rb") as f:
                f.seek(start_offset)
                log = _read_log(f)
    finally:
        if scratch is not None:
            scratch.close()
    return DemoResult(
        settings=settings,
        jobs_ok=ok,
        failures=failures,
        cancelled=cancelled,
        log=log,
        wall_time=wall,
        final_limit=limit,
        emulator=stats,
    )
