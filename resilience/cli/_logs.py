"""``python -m resilience logs``: render a log summary or one request's timeline.

Reading and summarising is :mod:`resilience.logs`; this module turns its values into rich tables
or the ``--json`` document. ``rich`` (the ``cli`` extra) is imported only for text output, so
``--json`` works without it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from resilience.cli._args import Command, CommandError, bounded_int, require_rich
from resilience.logs import (
    DomainRow,
    LogSummary,
    RequestRow,
    summarize,
    summary_to_json,
    timeline,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

__all__ = ["COMMAND", "add_arguments", "render_text", "render_timeline", "run"]

_MAX_LINE: Final = 1 << 20
"""Longest line read whole (bytes); longer lines are skipped without being held in memory."""


# -- rendering -----------------------------------------------------------------------------------


def _clean(value: object) -> str:
    """A log value made safe to print: no markup, escapes or control characters get through."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cell(value: object) -> Text:
    from rich.text import Text

    return Text(_clean(value))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f} s"


def _count(n: int) -> str:
    return f"{n:,}"


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else ""


def _request_table(title: str, rows: Sequence[RequestRow], *, reason: bool) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("request_id", overflow="fold")
    table.add_column("server id", overflow="fold")
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("code", overflow="fold")
    if reason:
        table.add_column("reason", overflow="fold")
    for r in rows:
        cells = [
            _cell(r.request_id),
            _cell(r.server_request_id),
            _cell(r.attempts),
            _cell(_seconds(r.elapsed)),
            _cell(r.outcome),
            _cell(r.code),
        ]
        if reason:
            cells.append(_cell(r.reason))
        table.add_row(*cells)
    return table


def render_text(summary: LogSummary, console: Console, *, title: str | None = None) -> None:
    """Print a summary as rich tables: totals, per-code rows, slowest and failed requests."""
    from rich.table import Table

    heading = "Retry log summary" if title is None else f"Retry log summary: {title}"
    console.print(_cell(heading), style="bold", soft_wrap=True)
    totals = Table(show_header=False, box=None)
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    totals.add_column(style="dim")
    malformed = summary.malformed_events
    n = summary.requests
    for label, value, note in (
        ("lines read", _count(summary.lines_read), ""),
        ("attempt events", _count(summary.attempt_events), ""),
        ("skipped lines", _count(summary.skipped_lines), f"{malformed:,} malformed attempt events"),
        ("logical requests", _count(n), "terminal events"),
        ("  ok", _count(summary.requests_ok), _share(summary.requests_ok, n)),
        ("  gave up", _count(summary.requests_gave_up), _share(summary.requests_gave_up, n)),
        ("  failed", _count(summary.requests_failed), _share(summary.requests_failed, n)),
        ("retries", _count(summary.retries), ""),
        ("throttled", _count(summary.throttled), ""),
        ("not-ready polls", _count(summary.not_ready), ""),
        ("time spent waiting", _seconds(summary.waited), "sum of delays"),
    ):
        totals.add_row(label, value, note if malformed or label != "skipped lines" else "")
    console.print(totals)

    if summary.attempt_events == 0:
        console.print(
            "No resilience.attempt events found. Retries are logged at INFO level and "
            "first-attempt successes at DEBUG: check the level of the 'resilience' logger.",
            markup=False,
        )
        return

    codes = Table(title="Attempts by code", title_justify="left")
    codes.add_column("code", overflow="fold")
    for name in ("attempts", "retried", "gave up", "failed"):
        codes.add_column(name, justify="right", no_wrap=True)
    for row in summary.codes:
        codes.add_row(
            _cell(row.code),
            _count(row.attempts),
            _count(row.retried),
            _count(row.gave_up),
            _count(row.failed),
        )
    console.print()
    console.print(codes)

    if summary.slowest:
        console.print()
        heading = f"Slowest {len(summary.slowest)} requests"
        console.print(_request_table(heading, summary.slowest, reason=False))
    if summary.failures:
        console.print()
        shown, total = len(summary.failures), summary.failures_total
        heading = f"Failed requests (first {shown} of {total:,})"
        console.print(_request_table(heading, summary.failures, reason=True))
    elif summary.failures_total:
        console.print(f"{summary.failures_total:,} failed requests (none listed with --top 0)")
    if summary.domains:
        console.print()
        console.print(_domain_table(summary.domains))


_CODES_SHOWN: Final = 3


def _domain_table(rows: Sequence[DomainRow]) -> Table:
    """Final failures by the code table's domain, each with what to do about it."""
    from rich.table import Table

    table = Table(title="Troubleshooting: failed requests by domain", title_justify="left")
    table.add_column("domain", no_wrap=True)
    table.add_column("requests", justify="right", no_wrap=True)
    table.add_column("codes", overflow="fold")
    table.add_column("what to do", overflow="fold")
    for row in rows:
        shown = [f"{code} {n:,}" for code, n in row.codes[:_CODES_SHOWN]]
        if len(row.codes) > _CODES_SHOWN:
            shown.append(f"+{len(row.codes) - _CODES_SHOWN} more")
        table.add_row(
            _cell(row.domain), _count(row.requests), _cell(", ".join(shown)), _cell(row.advice)
        )
    return table


def render_timeline(events: Iterable[dict[str, Any]], console: Console) -> None:
    """Print one row per attempt of a request (events as returned by :func:`timeline`)."""
    from rich.table import Table

    events = list(events)
    first = events[0] if events else {}
    heading = " ".join(
        _clean(v)
        for v in (first.get("request_id"), first.get("method"), first.get("url"))
        if v is not None
    )
    table = Table(title=_cell(f"Request {heading}"), title_justify="left")
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("status", justify="right", no_wrap=True)
    table.add_column("code / error", overflow="fold")
    table.add_column("outcome", overflow="fold")
    table.add_column("delay", justify="right", no_wrap=True)
    table.add_column("server id", overflow="fold")
    for event in events:
        outcome = _clean(event.get("outcome"))
        if event.get("reason"):
            outcome = f"{outcome} ({_clean(event['reason'])})"
        table.add_row(
            _cell(event.get("attempt")),
            _cell(_seconds(event.get("elapsed"))),
            _cell(event.get("status")),
            _cell(event.get("code") or event.get("error")),
            _cell(outcome),
            _cell(_seconds(event.get("delay"))),
            _cell(event.get("server_request_id")),
        )
    console.print(table)


# -- command line --------------------------------------------------------------------------------


class _ReadError(CommandError):
    """The input could not be read (open failure, corrupt gzip...)."""


class _LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def _iter_lines(stream: _LineReader, max_line: int = _MAX_LINE) -> Iterator[bytes]:
    """The lines of a binary stream; a line longer than ``max_line`` is yielded as ``b""``."""
    readline = stream.readline
    while True:
        line = readline(max_line)
        if not line:
            return
        if len(line) >= max_line and not line.endswith(b"\n"):
            while True:  # drop the rest of the overlong line without holding it
                rest = readline(max_line)
                if not rest or rest.endswith(b"\n"):
                    break
            yield b""
            continue
        yield line


def _read(path: str) -> Iterator[bytes]:
    """The lines of PATH (``-``: stdin; ``*.gz``: gunzipped); read errors raise _ReadError."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            # No stdin at all (`<&-`, a daemon): Python sets sys.stdin to None.
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:
                raise _ReadError(f"cannot read {name}: stdin is closed")
            yield from _iter_lines(stdin)
            return
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as compressed:
                yield from _iter_lines(compressed)
        else:
            with open(path, "rb") as plain:
                yield from _iter_lines(plain)
    except (OSError, EOFError, zlib.error) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _ReadError(f"cannot read {name}: {detail or type(exc).__name__}") from None


def _console() -> Console:
    from rich.console import Console

    return Console()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Summarize PATH, or show one request's timeline; 1 when ``--request`` names no request.

    An unreadable PATH raises :class:`CommandError` (exit 2).
    """
    path: str = args.path
    name = "stdin" if path == "-" else path
    if not args.json:
        require_rich("text output needs rich", otherwise="use --json")
    if args.request is not None:
        events = timeline(_read(path), args.request)
        if not events:
            print(
                f"{parser.prog}: no attempt events for request_id {args.request!r} in {name}",
                file=sys.stderr,
            )
            return 1
        if args.json:
            doc: dict[str, Any] = {"request_id": args.request, "attempts": events}
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            render_timeline(events, _console())
        return 0

    summary = summarize(_read(path), top=args.top)
    if args.json:
        sys.stdout.write(json.dumps(summary_to_json(summary), indent=2) + "\n")
    else:
        render_text(summary, _console(), title=name)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``logs`` subcommand's options."""
    parser.add_argument(
        "path", metavar="PATH", help="the log file; '-' for stdin; *.gz is gunzipped"
    )
    parser.add_argument(
        "--request", metavar="ID", help="show the attempt timeline of one request_id instead"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--top",
        metavar="N",
        type=bounded_int(0),
        default=10,
        help="how many slowest and failed requests to list (default: 10)",
    )


COMMAND: Final = Command(
    name="logs",
    help="summarize a structured retry log",
    description=(
        "Summarize a resilience structured retry log (JSON lines): outcomes, retries, "
        "per-code counts, the slowest and the failed requests. Other lines are skipped. "
        "Exit status: 0, 1 when --request names no request in the log, 2 on a usage error "
        "or when PATH cannot be read."
    ),
    add_arguments=add_arguments,
    run=run,
)
