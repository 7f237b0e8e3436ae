"""``python -m resilience demo``: a batch of generation jobs through the middleware, against the
embedded emulator with a realistic fault mix, ending with a summary table.

Everything happens in this process, on 127.0.0.1: the emulator serves, one ``ClientSession``
with a :class:`~resilience.ResilienceMiddleware` sends every job at once and lets the adaptive
limiter and the rate pacer do the throttling. The attempt events go to ``--log-file`` (JSON
lines, as :func:`resilience.configure_logging` writes them) or to a temporary file, and the
summary is read back from them with the log reader.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import aiohttp
import anyio

from ._backoff import Backoff
from ._cli import (
    PROG,
    add_backoff_arguments,
    backoff_from,
    bounded_int,
    optional,
    positive_float,
    require_rich,
)
from ._logreader import LogSummary, summarize
from ._logsetup import configure_logging
from ._middleware import ResilienceMiddleware, Settings
from .testing import Emulator, EmulatorConfig, EmulatorStats
from .testing._settings import add_arguments as emulator_arguments
from .testing._settings import config_from_args as emulator_from_args

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "DEFAULT_EMULATOR",
    "DEFAULT_JOBS",
    "DemoError",
    "DemoResult",
    "DemoSettings",
    "add_arguments",
    "main",
    "render_result",
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


class DemoError(Exception):
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


# -- rendering -----------------------------------------------------------------------------------


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else ""


def _or_none(value: float | int | None, unit: str = "") -> str:
    return "none" if value is None else f"{value:g}{unit}"


def describe(settings: DemoSettings) -> str:
    """A few lines: the fault mix, the middleware settings, the batch."""
    c = settings.emulator
    b = settings.backoff
    return (
        f"Emulator:   plan {_or_none(c.plan_concurrency)} in flight, "
        f"{_or_none(c.rate_limit)} requests/s (burst {c.rate_burst}), "
        f"{c.generation_time * 1000:g} ms per generation\n"
        f"Faults:     {c.transient_rate:.0%} retryable, {c.fatal_rate:.0%} non-retryable, "
        f"{c.reset_rate:.0%} connection resets (seed {_or_none(c.seed)})\n"
        f"Middleware: max_attempts {settings.max_attempts}, "
        f"max_elapsed {_or_none(settings.max_elapsed, ' s')}, "
        f"backoff {b.initial:g} s x{b.multiplier:g} up to {b.max_delay:g} s, {b.jitter} jitter\n"
        f"Sending {settings.jobs:,} jobs at once; the middleware's limiter paces them."
    )


def render_result(result: DemoResult, console: Console) -> None:
    """Print the summary tables of a run."""
    from rich.table import Table
    from rich.text import Text

    s, log, emu = result.settings, result.log, result.emulator
    n = s.jobs
    plan = s.emulator.plan_concurrency
    totals = Table(title="Summary", title_justify="left", show_header=False, box=None)
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    totals.add_column(style="dim")
    rows: list[tuple[str, str, str]] = [
        ("jobs", f"{n:,}", ""),
        ("  ok", f"{result.jobs_ok:,}", _pct(result.jobs_ok, n)),
        ("  failed", f"{result.jobs_failed:,}", _pct(result.jobs_failed, n)),
    ]
    if result.cancelled:
        rows.append(
            ("  cancelled", f"{result.cancelled:,}", f"still running after {s.timeout:g} s")
        )
    sent_note = (
        "one per attempt"
        if emu.requests == log.attempt_events
        else f"{log.attempt_events - emu.requests:+,} attempts never sent (deadline)"
    )
    per_job = f"{log.attempt_events / n:.2f} per job" if n else ""
    rows += [
        ("attempts", f"{log.attempt_events:,}", per_job),
        ("retries", f"{log.retries:,}", "retryable errors and resets, sent again"),
        ("throttled", f"{log.throttled:,}", "429s: plan or rate limit"),
        ("gave up", f"{log.requests_gave_up:,}", "retryable, but out of attempts or time"),
        ("time spent waiting", f"{log.waited:,.1f} s", "backoff and throttle delays, all jobs"),
        ("wall time", f"{result.wall_time:,.1f} s", f"{n / result.wall_time:,.1f} jobs/s"),
        ("concurrency limit", f"{result.final_limit}", f"at the end; plan {_or_none(plan)}"),
        ("emulator requests", f"{emu.requests:,}", sent_note),
        ("max in flight", f"{emu.max_in_flight}", f"at the emulator; plan {_or_none(plan)}"),
        ("duplicate executions", f"{emu.duplicates}", "must be 0"),
    ]
    for label, value, note in rows:
        totals.add_row(label, value, note)
    console.print(totals)

    if result.failures:
        failed = Table(title="Failed jobs by final answer", title_justify="left")
        failed.add_column("code (status) or error", overflow="fold")
        failed.add_column("jobs", justify="right")
        for key, count in sorted(result.failures.items(), key=lambda kv: (-kv[1], kv[0])):
            failed.add_row(Text(key), f"{count:,}")
        console.print()
        console.print(failed)

    codes = Table(title="Attempts by code", title_justify="left")
    codes.add_column("code", overflow="fold")
    for name in ("attempts", "retried", "gave up", "failed"):
        codes.add_column(name, justify="right")
    for row in log.codes:
        codes.add_row(
            Text(row.code),
            f"{row.attempts:,}",
            f"{row.retried:,}",
            f"{row.gave_up:,}",
            f"{row.failed:,}",
        )
    console.print()
    console.print(codes)
    if s.log_file is not None:
        lines = [
            f"Attempt events appended to {s.log_file}. Read them with:",
            f"  {PROG} logs {s.log_file}",
        ]
        slowest = log.slowest[0] if log.slowest else None
        if slowest is not None and slowest.request_id is not None:
            lines.append(
                f"  {PROG} logs {s.log_file} --request {slowest.request_id}  (the slowest job)"
            )
        console.print()
        console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options."""
    d, e = DemoSettings(), DEFAULT_EMULATOR
    parser.add_argument(
        "--jobs",
        metavar="N",
        type=bounded_int(1, MAX_JOBS),
        default=d.jobs,
        help=f"generation jobs to send, all at once (default {d.jobs}: about 12 s); jobs "
        "still queued after --max-elapsed fail with DeadlineExceeded",
    )
    parser.add_argument(
        "--log-file",
        metavar="PATH",
        type=Path,
        help="append the attempt events to PATH as JSON lines (read with 'logs PATH')",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=positive_float,
        default=d.timeout,
        help=f"stop the whole run after S seconds (default {d.timeout:g})",
    )

    faults = parser.add_argument_group("fault mix (the emulator)")
    # ready_after only matters to the jobs endpoint, which the demo does not use.
    emulator_arguments(faults, e, skip=("ready_after",))

    mw = parser.add_argument_group("middleware")
    mw.add_argument(
        "--max-attempts",
        metavar="N",
        type=bounded_int(1, 1000),
        default=d.max_attempts,
        help=f"attempts per job that may fail, the first included (default {d.max_attempts})",
    )
    mw.add_argument(
        "--max-elapsed",
        metavar="S",
        type=optional(positive_float),
        default=d.max_elapsed,
        help=f"seconds per job across attempts and waits, or 'none' (default {d.max_elapsed:g})",
    )
    add_backoff_arguments(parser)


def settings_from(args: argparse.Namespace) -> DemoSettings:
    """The settings of parsed options; raises ValueError/TypeError when they do not combine."""
    return DemoSettings(
        jobs=args.jobs,
        emulator=emulator_from_args(args, DEFAULT_EMULATOR),
        max_attempts=args.max_attempts,
        max_elapsed=args.max_elapsed,
        backoff=backoff_from(args),
        log_file=args.log_file,
        timeout=args.timeout,
    )


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo of parsed options; the exit status (0 when it ran, 1 if it was cut short).

    Bad option combinations end in ``parser.error`` (exit 2).
    """
    try:
        settings = settings_from(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if settings.log_file is not None:
        try:
            settings.log_file.open("a", encoding="utf-8").close()
        except OSError as exc:
            parser.error(f"cannot write --log-file {settings.log_file}: {exc.strerror or exc}")
    require_rich()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    out = Console(highlight=False)
    out.print(describe(settings), markup=False, soft_wrap=True)
    bar = Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"),
        TextColumn("limit {task.fields[limit]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=args.quiet,
    )
    done = {True: 0, False: 0}
    task = bar.add_task("jobs", total=settings.jobs, ok=0, failed=0, limit="-")

    def advance(ok: bool, limit: int) -> None:
        done[ok] += 1
        bar.update(task, advance=1, ok=done[True], failed=done[False], limit=limit)

    with bar:
        result = asyncio.run(run_demo(settings, progress=advance))
    out.print()
    render_result(result, out)
    if result.cancelled:
        out.print(
            f"{PROG} demo: stopped after --timeout {settings.timeout:g} s with "
            f"{result.cancelled} jobs unfinished",
            markup=False,
        )
        return 1
    return 0
