"""``python -m resilience backoff``: the wait schedule a backoff setting produces."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Final

from resilience.cli._args import (
    Command,
    add_backoff_arguments,
    backoff_from,
    bounded_int,
    optional,
    positive_float,
    require_rich,
)

if TYPE_CHECKING:
    from rich.console import Console

    from resilience._backoff import Schedule

__all__ = ["COMMAND", "add_arguments", "render_schedule", "run"]

_DEFAULT_RETRIES: Final = 4
_MAX_RETRIES: Final = 1000


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


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the schedule of the parsed options."""
    try:
        backoff = backoff_from(args)
        schedule = backoff.preview(args.retries)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    require_rich()
    from rich.console import Console

    render_schedule(schedule, Console(), args.max_elapsed)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``backoff`` subcommand's options."""
    add_backoff_arguments(parser)
    parser.add_argument(
        "--retries",
        metavar="N",
        type=bounded_int(0, _MAX_RETRIES),
        default=_DEFAULT_RETRIES,
        help=f"retries to show (default {_DEFAULT_RETRIES}: max_attempts=5 allows 4 retries)",
    )
    parser.add_argument(
        "--max-elapsed",
        metavar="S",
        type=optional(positive_float),
        default=60.0,
        help="the middleware's max_elapsed, to show which retries it stops, or 'none' (default 60)",
    )


COMMAND: Final = Command(
    name="backoff",
    help="print the wait schedule of a backoff setting",
    description=(
        "Print the waits a Backoff setting produces: per retry the nominal wait and the "
        "min/max that jitter can make of it, the running totals, and the worst-case total."
    ),
    add_arguments=add_arguments,
    run=run,
)
