"""Read the structured attempt log: :func:`summarize`, :func:`timeline`, :class:`LogSummary`.

The middleware writes one JSON object per line per attempt (``"event": "resilience.attempt"``,
the fields of :data:`ATTEMPT_FIELDS`).
:func:`summarize` folds such a stream into a :class:`LogSummary` in constant memory: it keeps no
per-request state, learning each logical request's final outcome and total time from its terminal
event (``ok``, ``give_up`` or ``fail``), and keeps only a bounded heap of the slowest requests and
the first few failures. Final failures are also grouped by the code table's domain (auth,
billing, common, generation, studio, upstream, voice; ``transport`` for errors without an
answer, ``other`` for answers the table does not know), each with one line of advice.
:func:`timeline` picks out the attempts of one request.

Rendering and the command line (``python -m resilience logs``) live in :mod:`resilience.cli`.

Over 400 lines because the summary, its rows and the timeline share one reader of the event
schema.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from resilience._codes import CodeTable
from resilience._events import ATTEMPT_EVENT, ATTEMPT_FIELDS

__all__ = [
    "ATTEMPT_EVENT",
    "ATTEMPT_FIELDS",
    "CodeRow",
    "DomainRow",
    "LogSummary",
    "RequestRow",
    "summarize",
    "summary_to_json",
    "timeline",
]

_OUTCOME_ORDER: Final = ("retry", "throttled", "not_ready", "ok", "give_up", "fail", "held")
_OUTCOME_INDEX: Final = {outcome: i for i, outcome in enumerate(_OUTCOME_ORDER)}
_OUTCOMES: Final = frozenset(_OUTCOME_ORDER)
_RETRIED: Final = frozenset({"retry", "throttled", "not_ready", "held"})
_STR_FIELDS: Final = ("request_id", "server_request_id", "code", "error", "reason")
_SECONDS_FIELDS: Final = ("delay", "elapsed")
_READ_FIELDS: Final = ("outcome", "attempt", "status", *_STR_FIELDS, *_SECONDS_FIELDS)
if not set(_READ_FIELDS) <= set(ATTEMPT_FIELDS):  # a field renamed in the event, not here
    raise RuntimeError(f"the log reader reads fields the event lacks: {_READ_FIELDS}")

_MAX_CODES: Final = 1000
"""Distinct per-code rows kept; further keys are counted under :data:`_OTHER_CODES`."""
_OTHER_CODES: Final = "(other)"

_JSON_VERSION: Final = 1

_TRANSPORT: Final = "transport"  # no answer at all: a reset, a refused connection, a timeout
_OTHER: Final = "other"  # an answer the code table does not know: a bare status, a foreign code
_ADVICE: Final[Mapping[str, str]] = {
    "auth": "check the API key: it is missing, invalid or expired, or lacks the role",
    "billing": "top up the account's credits, then send the requests again",
    "common": "fix the request (its body, path or state); for RATE_LIMITED, send less often",
    "generation": "lower concurrency or retry later: the generation service is busy or slow",
    "studio": "fix the studio project's clips or its storage, then export again",
    "upstream": "a service behind the API failed: retry later, and report it if it persists",
    "voice": "retry later, or change the voice sample or description",
    _TRANSPORT: "network or time: check connectivity, DNS, TLS, timeouts and max_elapsed",
    _OTHER: "not an answer of the API's table (a proxy's page?): look at the status and server id",
}
_DEFAULT_ADVICE: Final = "see the codes in this domain of your code table"


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
class DomainRow:
    """Final failures (``give_up`` or ``fail``) of one domain of the code table, with advice."""

    domain: str
    """The table's domain of the last code; ``"transport"`` when no answer came (a reset, a
    timeout), ``"other"`` for an answer the table does not know (a bare status)."""
    requests: int
    codes: tuple[tuple[str, int], ...]
    """(outcome key, requests) in this domain, most first."""
    advice: str
    """One line: what to do about failures of this domain."""


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
    domains: tuple[DomainRow, ...] = ()
    """Every final failure grouped by domain, most failures first (not bounded by ``top``)."""


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
    if ATTEMPT_EVENT not in text:  # cheap pre-filter: most other lines are never parsed
        return None
    if text[:1] != "{":
        text = text.lstrip(" \t\r\n\ufeff")
    try:
        event, end = _raw_decode(text)
    except (ValueError, RecursionError):
        return None
    if end != len(text) and not text[end:].isspace():
        return None  # trailing garbage: not a JSON line
    if type(event) is not dict or event.get("event") != ATTEMPT_EVENT:
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


def _domain(event: dict[str, Any], table: CodeTable) -> str:
    """The domain of a (valid) terminal failure event."""
    code = event.get("code")
    if code:
        spec = table.get(code)
        return spec.domain if spec is not None else _OTHER
    if event.get("status") is None and event.get("error"):
        return _TRANSPORT
    return _OTHER


def _domain_rows(domains: dict[str, Counter[str]]) -> tuple[DomainRow, ...]:
    rows = [
        DomainRow(
            domain=name,
            requests=sum(codes.values()),
            codes=tuple(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))),
            advice=_ADVICE.get(name, _DEFAULT_ADVICE),
        )
        for name, codes in domains.items()
    ]
    return tuple(sorted(rows, key=lambda r: (-r.requests, r.domain)))


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


def summarize(
    lines: Iterable[str | bytes], *, top: int = 10, table: CodeTable | None = None
) -> LogSummary:
    """Fold a stream of log lines into a :class:`LogSummary`, in memory bounded by ``top``.

    ``table`` (default: the API's published table) gives each failure's code its domain.

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
    domains: dict[str, Counter[str]] = {}  # domain -> final failures per outcome key
    codes_table = table if table is not None else CodeTable.default()
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
        if outcome != "ok":
            domains.setdefault(_domain(event, codes_table), Counter())[key] += 1
            if len(failures) < top:
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
        domains=_domain_rows(domains),
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
        "failures_by_domain": [
            {
                "domain": r.domain,
                "requests": r.requests,
                "codes": dict(r.codes),
                "advice": r.advice,
            }
            for r in summary.domains
        ],
    }
