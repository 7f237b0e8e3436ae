"""The per-attempt log event: its schema, credential redaction, and emitting it via structlog."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog
from yarl import URL

from ._attempt import ATTEMPT_FIELDS, AttemptRecord, Outcome

__all__ = [
    "ATTEMPT_EVENT",
    "ATTEMPT_FIELDS",
    "LIMIT_EVENT",
    "Outcome",
    "emit_attempt",
    "redact_url",
]

ATTEMPT_EVENT: Final = "resilience.attempt"
"""The ``event`` value of every per-attempt log line."""


LIMIT_EVENT: Final = "resilience.limit"
"""The ``event`` value of the line logged when the adaptive concurrency limit changes."""

GATE_EVENT: Final = "resilience.gate"
"""The ``event`` value of the line logged when a rate gate closes."""

STORE_EVENT: Final = "resilience.store"
"""The ``event`` value of lines about a shared store (fallback, rejoin)."""


_LEVELS: Final[Mapping[Outcome, str]] = {
    Outcome.OK: "info",
    Outcome.RETRY: "info",
    Outcome.THROTTLED: "info",
    Outcome.NOT_READY: "info",
    Outcome.GIVE_UP: "warning",
    Outcome.FAIL: "warning",
}

_SECRET_PARAMS: Final = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "auth",
    "signature",
    "sig",
    "credential",
    "session",
)
_REDACTED: Final = "REDACTED"


def _is_secret_param(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    return any(part in lowered for part in _SECRET_PARAMS)


def redact_url(url: URL) -> str:
    """The URL as it may appear in logs: no userinfo, secret-looking query values replaced.

    Any parameter whose name contains ``key``, ``token``, ``secret``, ``password``, ``auth``,
    ``signature``, ``credential`` or ``session`` is replaced, whatever its case or separator.
    """
    if url.user is not None or url.password is not None:
        url = url.with_user(None)
    if url.query_string:
        query = [(k, _REDACTED if _is_secret_param(k) else v) for k, v in url.query.items()]
        url = url.with_query(query)
    return str(url.with_fragment(None))


_app_logger: Final = structlog.get_logger("resilience")
# Until the application configures structlog, log at INFO and above only: structlog's default
# prints everything, and a debug line per successful request costs more than the request.
_quiet_logger: Final = structlog.wrap_logger(
    None,
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    cache_logger_on_first_use=True,
)
# configure_logging()'s loggers, the latest on top: each undo removes its own entry only.
_sinks: list[Any] = []
_failure_reported = False


def push_logger(logger: Any) -> Callable[[], None]:
    """Route resilience's events to ``logger`` (a structlog bound logger) until the returned
    function is called; configurations stack, and each undo removes only its own."""
    global _failure_reported
    entry = [logger]  # a fresh object: the same logger pushed twice is two entries
    _sinks.append(entry)
    _failure_reported = False  # a new route: its first failure is worth reporting

    def remove() -> None:
        for i, sink in enumerate(_sinks):
            if sink is entry:
                del _sinks[i]
                return

    return remove


def _logger() -> Any:
    if _sinks:
        return _sinks[-1][0]
    return _app_logger if structlog.is_configured() else _quiet_logger


def debug_enabled() -> bool:
    """Would a DEBUG event be logged? Free while structlog is unconfigured (it would not)."""
    try:
        if _sinks:
            return bool(_sinks[-1][0].is_enabled_for(logging.DEBUG))
        if not structlog.is_configured():
            return False
        check = getattr(_app_logger, "is_enabled_for", None)
        return True if check is None else bool(check(logging.DEBUG))
    except Exception as exc:  # a broken logger configuration: log nothing extra
        _report_failure(exc)
        return False


def _report_failure(exc: Exception) -> None:
    """Say once on stderr that logging failed, as stdlib logging's ``Handler.handleError``
    does; never raise. The request goes on: a log line is never worth a request's outcome."""
    global _failure_reported
    if _failure_reported:
        return
    _failure_reported = True
    stream = sys.stderr
    if stream is None:  # pythonw, or a daemon without stderr
        return
    with contextlib.suppress(Exception):
        stream.write(
            f"resilience: logging failed ({type(exc).__name__}: {str(exc)[:200]}); events are "
            "dropped and requests go on; not reported again until logging is reconfigured\n"
        )
        stream.flush()


def _log(level: str, event: str, fields: dict[str, Any]) -> None:
    # A closed file, a closed stdout pipe, a failing processor: any of them must not change a
    # request's outcome nor skip the release of its permit, so nothing a sink raises escapes.
    try:
        getattr(_logger(), level)(event, **fields)
    except Exception as exc:
        _report_failure(exc)


def emit_attempt(record: AttemptRecord, *, first_ok: bool) -> None:
    """Log one attempt. A first-attempt success is DEBUG, so it costs ~2 µs when filtered."""
    level = "debug" if first_ok else _LEVELS[record.outcome]
    _log(level, ATTEMPT_EVENT, record.as_fields())


def emit(event: str, level: str, **fields: Any) -> None:
    """Log a non-attempt event (limit changes, gate closures, store fallbacks)."""
    _log(level, event, fields)
