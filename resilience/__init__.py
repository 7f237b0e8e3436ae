"""Resilience middleware for aiohttp clients of credit-billed generation APIs.

The common case::

    import aiohttp
    from resilience import ResilienceMiddleware

    async with aiohttp.ClientSession(middlewares=(ResilienceMiddleware(),)) as session:
        async with session.post(url, json=job) as resp:
            ...
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ._account import AccountStop
from ._attempt import ATTEMPT_FIELDS, AttemptRecord, Outcome
from ._backoff import Backoff, Schedule, ScheduleStep
from ._breaker import CircuitBreaker
from ._budget import RetryBudgetSettings
from ._codes import CodeTable, ErrorSpec, Handling
from ._errors import AccountStopped, ApiError, CircuitOpen, DeadlineExceeded
from ._events import ATTEMPT_EVENT, Redaction
from ._logsetup import configure_logging
from ._middleware import ResilienceMiddleware, Settings
from ._session import wrap
from ._store import Admission, Feedback, LocalStore, Signal, Store

__all__ = [
    "ATTEMPT_EVENT",
    "ATTEMPT_FIELDS",
    "AccountStop",
    "AccountStopped",
    "Admission",
    "AttemptRecord",
    "ApiError",
    "Backoff",
    "CircuitBreaker",
    "CircuitOpen",
    "CodeTable",
    "DeadlineExceeded",
    "ErrorSpec",
    "Feedback",
    "Handling",
    "LocalStore",
    "Outcome",
    "Redaction",
    "ResilienceMiddleware",
    "RetryBudgetSettings",
    "Schedule",
    "ScheduleStep",
    "Settings",
    "Signal",
    "Store",
    "configure_logging",
    "wrap",
]

__version__ = "0.1.0"

if TYPE_CHECKING:  # the deprecated names, typed for checkers; at run time __getattr__ below
    from .logs import LogSummary  # noqa: F401
    from .logs import summarize as summarize_log  # noqa: F401
    from .logs import timeline as log_timeline  # noqa: F401

_MOVED_TO_LOGS: dict[str, str] = {
    "LogSummary": "LogSummary",
    "summarize_log": "summarize",
    "log_timeline": "timeline",
}
"""Deprecated in 0.2 (the log reader is its own public module), removed in 0.3."""


def __getattr__(name: str) -> Any:
    new = _MOVED_TO_LOGS.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"resilience.{name} is deprecated: use resilience.logs.{new}",
        DeprecationWarning,
        stacklevel=2,
    )
    from . import logs

    return getattr(logs, new)
