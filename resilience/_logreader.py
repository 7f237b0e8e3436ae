"""Read the structured retry log: ``python -m resilience logs PATH``.

The middleware writes one JSON object per line per attempt (``"event": "resilience.attempt"``).
:func:`summarize` folds such a stream into a :class:`LogSummary` in constant memory: it keeps no
per-request state, learning each logical request's final outcome and total time from its terminal
event (``ok``, ``give_up`` or ``fail``), and keeps only a bounded heap of the slowest requests and
the first few failures. :func:`timeline` picks out the attempts of one request.

Rendering needs ``rich`` (the ``cli`` extra); it is imported only when text output is asked for,
so ``--json`` works without it.
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import json
import math
import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "CodeRow",
    "LogSummary",
    "RequestRow",
    "main",
    "render_text",
    "render_timeline",
    "summarize",
    "summary_to_json",
    "timeline",
]

PROG: Final = "python -m resilience logs"

_ATTEMPT_EVENT: Final = "resilience.attempt"
_OUTCOME_ORDER: Final = ("retry", "throttled", "not_ready", "ok", "give_up", "fail")
_OUTCOME_INDEX: Final = {outcome: i for i, outcome in enumerate(_OUTCOME_ORDER)}
_OUTCOMES: Final = frozenset(_OUTCOME_ORDER)
_RETRIED: Final = frozenset({"retry", "throttled", "not_ready"})
_STR_FIELDS: Final = ("request_id", "server_request_id", "code", "error", "reason")
_SECONDS_FIELDS: Final = ("delay", "elapsed")

_MAX_CODES: Final = 1000
"""Distinct per-code rows kept; further keys are counted under :data:`_OTHER_CODES`."""
_OTHER_CODES: Final = "(other)"
_MAX_LINE: Final = 1 << 20
"""Longest line read whole (bytes); longer lines are skipped without being held in memory."""

_JSON_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class CodeRow:
    """Attempts per outcome key: the ``code``, ``"HTTP <status>"``, an error class, or ``ok``."""

    code: str
    attempts: int
    retried: int
    """Attempts followed by another send (outcome ``retry``, ``throttled`` or ``not_ready``)."""
    gave_up: int
    failed: int


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One logical request, as told by its terminal attempt event."""

    request_id: str | None
    server_request_id: str | None
    """The server's id for the last attempt."""
    attempts: int | None
    elapsed: float | None
    """Seconds from the start of the logical request to the end of its last attempt."""
    outcome: str
    """``ok``, ``give_up`` or ``fail``."""
    code: str
    """The outcome key of the last attempt (see :class:`CodeRow`)."""
    reason: str | None


@dataclass(frozen=True, slots=True)
class LogSummary:
    """What :func:`summarize` learned; ``lines_read == attempt_events + skipped_lines``."""

    lines_read: int
    attempt_events: int
    """Well-formed ``resilience.attempt`` events: the number of attempts (sends)."""
    skipped_lines: int
    """Lines that were not JSON, not an attempt event, or a malformed attempt event."""
    malformed_events: int
    """The attempt events among the skipped lines (missing outcome, wrong field types...)."""
    requests: int
    """Logical requests: terminal events (outcome ``ok``, ``give_up`` or ``fail``)."""
    requests_ok: int
    requests_gave_up: int
    requests_failed: int
    retries: int
    throttled: int
    not_ready: int
    waited: float
    """Seconds of announced backoff: the sum of every numeric ``delay``."""
    codes: tuple[CodeRow, ...]
    """One row per outcome key, most attempts first."""
    slowest: tuple[RequestRow, ...]
    """The ``top`` slowest logical requests (by ``elapsed``), slowest first."""
    failures: tuple[RequestRow, ...]
    """The first ``top`` logical requests that gave up or failed, in log order."""
    failures_total: int
    """All logical requests that gave up or failed (``requests_gave_up + requests_failed``)."""
    top: int


def _is_seconds(value: object) -> bool:
    return (type(value) is float or type(value) is int) and 0 <= value < math.inf


def _valid_attempt(event: dict[str, Any]) -> bool:
    """Whether the fields the reader uses have the right types (others are not looked at)."""
    outcome = event.get("outcome")
    if type(outcome) is not str or outcome not in _OUTCOMES:
        return False
    attempt = event.get("attempt")
    if attempt is not None and (type(attempt) is not int or attempt < 1):
        return False
    status = event.get("status")
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        return False
    for key in _STR_FIELDS:
        value = event.get(key)
        if value is not None and type(value) is not str:
            return False
    for key in _SECONDS_FIELDS:
        value = event.get(key)
        if value is not None and not _is_seconds(value):
            return False
    return True


_MALFORMED: Final[dict[str, Any]] = {}
"""Returned by :func:`_parse` for an attempt event whose fields have the wrong types."""
_raw_decode: Final = json.JSONDecoder().raw_decode


def _parse(line: str | bytes) -> dict[str, Any] | None:
    """The attempt event of a line; None if it is not one, :data:`_MALFORMED` if it is broken.

    Called once per line of a possibly huge log, so it avoids needless work and allocations.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if _ATTEMPT_EVENT not in text:  # cheap pre-filter: most other lines are never parsed
        return None
    if text[:1] != "{":
        text = text.lstrip(" \t\r\n\ufeff")
    try:
        event, end = _raw_decode(text)
    except (ValueError, RecursionError):
        return None
    if end != len(text) and not text[end:].isspace():
        return None  # trailing garbage: not a JSON line
    if type(event) is not dict or event.get("event") != _ATTEMPT_EVENT:
        return None
    return event if _valid_attempt(event) else _MALFORMED


def _code_key(event: dict[str, Any]) -> str:
    """The per-code table key of a (valid) attempt event."""
    if event["outcome"] == "ok":
        return "ok"
    code = event.get("code")
    if code:
        return str(code)
    status = event.get("status")
    if status is not None:
        return f"HTTP {status}"
    error = event.get("error")
    if error:
        return str(error)
    return "unknown"


def _request_row(event: dict[str, Any], code: str) -> RequestRow:
    elapsed = event.get("elapsed")
    return RequestRow(
        request_id=event.get("request_id"),
        server_request_id=event.get("server_request_id"),
        attempts=event.get("attempt"),
        elapsed=None if elapsed is None else float(elapsed),
        outcome=event["outcome"],
        code=code,
        reason=event.get("reason"),
    )


def summarize(lines: Iterable[str | bytes], *, top: int = 10) -> LogSummary:
    """Fold a stream of log lines into a :class:`LogSummary`, in memory bounded by ``top``.

    Bytes lines are decoded as UTF-8 with replacement. Lines that are not JSON, not an attempt
    event, or an attempt event with a field of the wrong type are counted and skipped. A request
    whose terminal event is missing (log cut short, request still running) counts towards the
    attempt totals but not towards ``requests``.
    """
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    # The loop body runs once per line: it keeps one counter per (key, outcome) and derives
    # every total at the end, so that a line costs as few operations and objects as possible.
    skipped = malformed = pushed = 0
    waited = 0.0
    codes: dict[str, list[int]] = {}  # key -> attempts per outcome, in _OUTCOME_ORDER
    slowest: list[tuple[float, int, RequestRow]] = []  # min-heap of (elapsed, -pushed, row)
    failures: list[RequestRow] = []
    index = _OUTCOME_INDEX

    for line in lines:
        event = _parse(line)
        if event is None or event is _MALFORMED:
            skipped += 1
            if event is _MALFORMED:
                malformed += 1
            continue
        outcome: str = event["outcome"]
        delay = event.get("delay")
        if delay is not None:
            waited += delay
        key = _code_key(event)
        counts = codes.get(key)
        if counts is None:
            if len(codes) >= _MAX_CODES:
                key = _OTHER_CODES
            counts = codes.setdefault(key, [0] * len(_OUTCOME_ORDER))
        counts[index[outcome]] += 1
        if outcome in _RETRIED:
            continue

        # A terminal event: one logical request ends here.
        row: RequestRow | None = None
        if outcome != "ok" and len(failures) < top:
            row = _request_row(event, key)
            failures.append(row)
        elapsed = event.get("elapsed")
        if elapsed is None or not top:
            continue
        if len(slowest) < top or elapsed > slowest[0][0]:  # on a tie the earlier request stays
            pushed += 1
            item = (float(elapsed), -pushed, row or _request_row(event, key))
            if len(slowest) < top:
                heapq.heappush(slowest, item)
            else:
                heapq.heapreplace(slowest, item)

    per_outcome = dict.fromkeys(_OUTCOME_ORDER, 0)
    for counts in codes.values():
        for outcome, n in zip(_OUTCOME_ORDER, counts, strict=True):
            per_outcome[outcome] += n
    code_rows = sorted(
        (
            CodeRow(
                code=key,
                attempts=sum(counts),
                retried=sum(counts[index[o]] for o in _RETRIED),
                gave_up=counts[index["give_up"]],
                failed=counts[index["fail"]],
            )
            for key, counts in codes.items()
        ),
        key=lambda r: (-r.attempts, r.code),
    )
    attempt_events = sum(per_outcome.values())
    ok, gave_up, failed = per_outcome["ok"], per_outcome["give_up"], per_outcome["fail"]
    return LogSummary(
        lines_read=attempt_events + skipped,
        attempt_events=attempt_events,
        skipped_lines=skipped,
        malformed_events=malformed,
        requests=ok + gave_up + failed,
        requests_ok=ok,
        requests_gave_up=gave_up,
        requests_failed=failed,
        retries=per_outcome["retry"],
        throttled=per_outcome["throttled"],
        not_ready=per_outcome["not_ready"],
        waited=waited,
        codes=tuple(code_rows),
        slowest=tuple(item[2] for item in sorted(slowest, reverse=True)),
        failures=tuple(failures),
        failures_total=gave_up + failed,
        top=top,
    )


def timeline(lines: Iterable[str | bytes], request_id: str) -> list[dict[str, Any]]:
    """The well-formed attempt events of one logical request, in log order (as parsed)."""
    # A plain id reads the same in any JSON encoding, so lines without it need no parsing.
    needle = request_id if request_id.isascii() and request_id.isprintable() else None
    if needle is not None and ('"' in needle or "\\" in needle):
        needle = None
    needle_bytes = None if needle is None else needle.encode()
    events: list[dict[str, Any]] = []
    for line in lines:
        if isinstance(line, bytes):
            if needle_bytes is not None and needle_bytes not in line:
                continue
        elif needle is not None and needle not in line:
            continue
        event = _parse(line)
        if event is not None and event.get("request_id") == request_id:
            events.append(event)
    return events


def _row_json(row: RequestRow) -> dict[str, Any]:
    return {
        "request_id": row.request_id,
        "server_request_id": row.server_request_id,
        "attempts": row.attempts,
        "elapsed": row.elapsed,
        "outcome": row.outcome,
        "code": row.code,
        "reason": row.reason,
    }


def summary_to_json(summary: LogSummary) -> dict[str, Any]:
    """A JSON-serializable document of a summary (the ``--json`` output)."""
    return {
        "version": _JSON_VERSION,
        "lines_read": summary.lines_read,
        "attempt_events": summary.attempt_events,
        "skipped_lines": summary.skipped_lines,
        "malformed_events": summary.malformed_events,
        "requests": {
            "total": summary.requests,
            "ok": summary.requests_ok,
            "gave_up": summary.requests_gave_up,
            "failed": summary.requests_failed,
        },
        "attempts": summary.attempt_events,
        "retries": summary.retries,
        "throttled": summary.throttled,
        "not_ready": summary.not_ready,
        "waited": round(summary.waited, 6),
        "codes": [
            {
                "code": r.code,
                "attempts": r.attempts,
                "retried": r.retried,
                "gave_up": r.gave_up,
                "failed": r.failed,
            }
            for r in summary.codes
        ],
        "top": summary.top,
        "slowest": [_row_json(r) for r in summary.slowest],
        "failures": [_row_json(r) for r in summary.failures],
        "failures_total": summary.failures_total,
    }


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


class _ReadError(Exception):
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
            yield from _iter_lines(sys.stdin.buffer)
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


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Summarize a resilience structured retry log (JSON lines): outcomes, retries, "
            "per-code counts, the slowest and the failed requests. Other lines are skipped."
        ),
    )
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
        type=_non_negative,
        default=10,
        help="how many slowest and failed requests to list (default: 10)",
    )
    return parser


def _console() -> Console:
    from rich.console import Console

    return Console()


def _run(args: argparse.Namespace) -> int:
    path: str = args.path
    if args.request is not None:
        events = timeline(_read(path), args.request)
        if not events:
            name = "stdin" if path == "-" else path
            print(
                f"{PROG}: no attempt events for request_id {args.request!r} in {name}",
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
        render_text(summary, _console(), title="stdin" if path == "-" else path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m resilience logs PATH [--request ID] [--json] [--top N]``; the exit status.

    0 on success, 1 when ``--request`` names no request in the log, 2 on a usage error or when
    PATH cannot be read.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except _ReadError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "rich":
            raise
        print(
            f"{PROG}: error: text output needs rich: install 'resilience[cli]', or use --json",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
