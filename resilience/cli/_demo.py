"""``python -m resilience demo``: its options, a progress bar while it runs, the summary tables.

The run itself is :func:`resilience.cli._demo_run.run_demo`.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Final

from resilience.cli._args import (
    PROG,
    Command,
    add_backoff_arguments,
    backoff_from,
    bounded_int,
    optional,
    positive_float,
    require_rich,
)
from resilience.cli._demo_run import (
    DEFAULT_EMULATOR,
    MAX_JOBS,
    DemoResult,
    DemoSettings,
    run_demo,
)
from resilience.testing._settings import add_arguments as emulator_arguments
from resilience.testing._settings import config_from_args as emulator_from_args

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["COMMAND", "add_arguments", "describe", "render_result", "run", "settings_from"]


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


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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


COMMAND: Final = Command(
    name="demo",
    help="send a batch of jobs through the middleware to the embedded emulator",
    description=(
        "Start the fault-injecting emulator on 127.0.0.1, send a batch of generation jobs "
        "through the middleware with a progress bar, then print a summary: jobs ok and "
        "failed by code, attempts, retries, throttles, time spent waiting, wall time. "
        "Exits 0 when the demo ran (non-retryable failures are part of the mix)."
    ),
    add_arguments=add_arguments,
    run=run,
)
