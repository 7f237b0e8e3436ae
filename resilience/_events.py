"""The per-attempt log event: its schema, credential redaction, and emitting it via structlog."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote_plus

import structlog
from yarl import URL

from ._attempt import ATTEMPT_FIELDS, AttemptRecord, Outcome

__all__ = [
    "ATTEMPT_EVENT",
    "ATTEMPT_FIELDS",
    "LIMIT_EVENT",
    "Outcome",
    "Redaction",
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
    Outcome.HELD: "info",
}

_SECRET_PARAMS: Final = (
    "key",
    "token",
    "secret",
    "pass",  # password, passwd, passphrase
    "pwd",
    "auth",
    "signature",
    "sig",
    "credential",
    "session",
    "jwt",
    "code",  # OAuth authorization codes (code=, auth_code=)
)
_REDACTED: Final = "REDACTED"
_QUERY_SEPARATORS: Final = re.compile(r"([&;])")


def _normalized(name: str) -> str:
    return name.lower().replace("-", "_")


@dataclass(frozen=True, slots=True)
class Redaction:
    """What is hidden from log events and ``str(ApiError)``, on top of the built-in rules.

    The built-in rules always apply: no userinfo, no fragment, and the value of every query
    parameter whose name contains ``key``, ``token``, ``secret``, ``pass``, ``pwd``, ``auth``,
    ``sig``, ``credential``, ``session``, ``jwt`` or ``code`` (any case, ``-`` or ``_``),
    with ``&`` and ``;`` both separating parameters.

    Args:
        params: more name fragments, matched the same way (``("sid",)`` hides ``SID=`` and
            ``user_sid=``).
        paths: regular expressions searched in the URL's (encoded) path; each group's text,
            or the whole match for a pattern without groups, becomes ``REDACTED``:
            ``r"/bot([^/]+)/"`` turns ``/bot123:abc/sendMessage`` into
            ``/botREDACTED/sendMessage``.
    """

    params: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    _fragments: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("params", "paths"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, tuple | list):
                raise TypeError(f"Redaction.{name} must be a tuple of str, got {value!r}")
            if not all(isinstance(item, str) and item for item in value):
                bad = next(item for item in value if not isinstance(item, str) or not item)
                kind = ValueError if isinstance(bad, str) else TypeError
                raise kind(f"Redaction.{name} takes non-empty strings, got {bad!r}")
            object.__setattr__(self, name, tuple(value))
        patterns = []
        for pattern in self.paths:
            try:
                patterns.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"Redaction.paths: bad pattern {pattern!r}: {exc}") from None
        object.__setattr__(
            self, "_fragments", _SECRET_PARAMS + tuple(_normalized(p) for p in self.params)
        )
        object.__setattr__(self, "_patterns", tuple(patterns))

    def is_secret(self, name: str) -> bool:
        """Is a query parameter of this (decoded) name hidden?"""
        lowered = _normalized(name)
        return any(part in lowered for part in self._fragments)

    def secrets_in_path(self, path: str) -> list[str]:
        """The parts of an (encoded) path that ``redact_path`` hides."""
        found: list[str] = []
        for pattern in self._patterns:
            for match in pattern.finditer(path):
                groups = [g for g in match.groups() if g] if match.re.groups else [match.group(0)]
                found.extend(groups)
        return found

    def redact_path(self, path: str) -> str:
        for pattern in self._patterns:
            path = pattern.sub(_redact_match, path)
        return path

    def redact_query(self, raw: str) -> str:
        """An encoded query string with each secret parameter's value replaced."""
        parts = _QUERY_SEPARATORS.split(raw)
        for i in range(0, len(parts), 2):  # odd indexes are the separators themselves
            name, eq, _ = parts[i].partition("=")
            if eq and self.is_secret(unquote_plus(name)):
                parts[i] = f"{name}={_REDACTED}"
        return "".join(parts)


def _redact_match(match: re.Match[str]) -> str:
    if match.re.groups == 0:
        return _REDACTED
    text, start = match.group(0), match.start(0)
    out, pos = [], 0
    for group in range(1, match.re.groups + 1):
        begin, end = match.span(group)
        if begin < 0 or begin < pos + start:  # unmatched or nested group
            continue
        out += [text[pos : begin - start], _REDACTED]
        pos = end - start
    return "".join(out) + text[pos:]


DEFAULT_REDACTION: Final = Redaction()


def _is_secret_param(name: str) -> bool:
    """Does the built-in rule hide this (decoded) query parameter? (``_account`` keys on it.)"""
    return DEFAULT_REDACTION.is_secret(name)


def redact_url(url: URL, redaction: Redaction = DEFAULT_REDACTION) -> str:
    """The URL as it may appear in logs, by ``redaction``'s rules (see :class:`Redaction`)."""
    if url.user is not None or url.password is not None:
        url = url.with_user(None)
    raw_query = url.raw_query_string
    text = str(url.with_query(None).with_fragment(None))
    if redaction._patterns:
        path = url.raw_path
        if text.endswith(path):
            text = text[: len(text) - len(path)] + redaction.redact_path(path)
        else:  # no path at all ("http://h"): nothing to redact in it
            text = redaction.redact_path(text)
    if raw_query:
        text = f"{text}?{redaction.redact_query(raw_query)}"
    return text


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
