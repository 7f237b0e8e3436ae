"""The command line: ``python -m resilience {demo,backoff,logs}`` (or the ``resilience`` script).

* ``demo``: a batch of jobs through the middleware against the embedded emulator, with a fault
  mix, a progress bar, a JSON-lines attempt log and a summary table.
* ``backoff``: the wait schedule a backoff setting produces, before using it.
* ``logs``: summarize a structured retry log (see :mod:`resilience._logreader`).

Terminal output needs ``rich`` (the ``cli`` extra); without it these commands print a one-line
hint and exit 2 (``logs --json`` works without it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from ._cli import (
    PROG,
    RichMissing,
    add_backoff_arguments,
    backoff_from,
    bounded_int,
    optional,
    positive_float,
    require_rich,
)

if TYPE_CHECKING:
    from rich.console import Console

    from ._backoff import Schedule

__all__ = ["main", "render_schedule"]

_DEFAULT_RETRIES = 4
_MAX_RETRIES = 1000


def render_schedule(schedule: Schedule, console: Console, max_elapsed: float | None) -> None:
    """Print a schedule as a table: each retry's nominal, min and max wait, and running totals.

    With ``max_elapsed``, a column tells which retries the deadline would stop: the middleware
    gives up instead of waiting when the wait would end past it (request time comes on top of
    the waits shown, so real requests reach the deadline a little sooner).
    """
    from rich.table import Table

    table = Table(
        title=f"{schedule.backoff!r}",
        title_justify="left",
        caption="waits in seconds",
        caption_justify="left",
    )
    table.add_column("retry", justify="right")
    table.add_column("nominal", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    table.add_column("total min", justify="right")
    table.add_column("total max", justify="right", style="bold")
    if max_elapsed is not None:
        table.add_column(f"max_elapsed {max_elapsed:g} s")
    total_low = total_high = 0.0
    first_cut: int | None = None
    for step in schedule.steps:
        total_low += step.low
        total_high += step.high
        cells = [
            str(step.retry),
            f"{step.nominal:.3f}",
            f"{step.low:.3f}",
            f"{step.high:.3f}",
            f"{total_low:.3f}",
            f"{total_high:.3f}",
        ]
        if max_elapsed is not None:
            if total_low >= max_elapsed:
                verdict = "[red]gives up[/red]"
            elif total_high >= max_elapsed:
                verdict = "[yellow]may give up[/yellow]"
            else:
                verdict = "fits"
            if first_cut is None and total_high >= max_elapsed:
                first_cut = step.retry
            cells.append(verdict)
        table.add_row(*cells)
    console.print(table)
    n = len(schedule.steps)
    console.print(
        f"Worst case [bold]{schedule.worst_case_total:.3f} s[/bold] of waiting over {n} "
        f"retr{'y' if n == 1 else 'ies'} (best case {schedule.best_case_total:.3f} s).",
        highlight=False,
    )
    if max_elapsed is None:
        return
    if first_cut is None:
        console.print(
            f"max_elapsed {max_elapsed:g} s: every retry fits, even in the worst case.",
            highlight=False,
        )
    else:
        console.print(
            f"max_elapsed {max_elapsed:g} s stops retries from {first_cut} on in the worst case.",
            highlight=False,
        )


def _cmd_backoff(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        backoff = backoff_from(args)
        schedule = backoff.preview(args.retries)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    require_rich()
    from rich.console import Console

    render_schedule(schedule, Console(), args.max_elapsed)
    return 0


def _cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import _demo

    try:
        return _demo.main(args, parser)
    except _demo.DemoError as exc:
        print(f"{PROG} demo: error: {exc}", file=sys.stderr)
        return 2


def _cmd_logs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import _logreader

    rest: list[str] = args.rest
    return _logreader.main(rest)


def _parser() -> argparse.ArgumentParser:
    from . import _demo

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Resilience middleware for aiohttp: run the demo, preview a backoff schedule, "
            "read a structured retry log."
        ),
    )
    parser.add_argument("--version", action="version", version=f"resilience {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="send a batch of jobs through the middleware to the embedded emulator",
        description=(
            "Start the fault-injecting emulator on 127.0.0.1, send a batch of generation jobs "
            "through the middleware with a progress bar, then print a summary: jobs ok and "
            "failed by code, attempts, retries, throttles, time spent waiting, wall time. "
            "Exits 0 when the demo ran (non-retryable failures are part of the mix)."
        ),
    )
    _demo.add_arguments(demo)
    demo.set_defaults(handler=_cmd_demo, parser=demo)

    backoff = commands.add_parser(
        "backoff",
        help="print the wait schedule of a backoff setting",
        description=(
            "Print the waits a Backoff setting produces: per retry the nominal wait and the "
            "min/max that jitter can make of it, the running totals, and the worst-case total."
        ),
    )
    add_backoff_arguments(backoff)
    backoff.add_argument(
        "--retries",
        metavar="N",
        type=bounded_int(0, _MAX_RETRIES),
        default=_DEFAULT_RETRIES,
        help=f"retries to show (default {_DEFAULT_RETRIES}: max_attempts=5 allows 4 retries)",
    )
    backoff.add_argument(
        "--max-elapsed",
        metavar="S",
        type=optional(positive_float),
        default=60.0,
        help="the middleware's max_elapsed, to show which retries it stops, or 'none' (default 60)",
    )
    backoff.set_defaults(handler=_cmd_backoff, parser=backoff)

    logs = commands.add_parser(
        "logs",
        help="summarize a structured retry log (logs --help for its options)",
        add_help=False,
    )
    logs.add_argument("rest", nargs=argparse.REMAINDER)
    logs.set_defaults(handler=_cmd_logs, parser=logs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success; 2 on a usage error (bad option, bad value, ``rich`` missing); ``logs`` has its
    own codes (see ``python -m resilience logs --help``).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["logs"]:  # the log reader parses its own options
        return _cmd_logs(argparse.Namespace(rest=args_list[1:]), argparse.ArgumentParser())
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
        return int(args.handler(args, args.parser))
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2
    except RichMissing as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
