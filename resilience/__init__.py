"""Resilience middleware for aiohttp clients of credit-billed generation APIs.

The common case::

    import aiohttp
    from resilience import ResilienceMiddleware

    async with aiohttp.ClientSession(middlewares=(ResilienceMiddleware(),)) as session:
        async with session.post(url, json=job) as resp:
            ...
"""

from __future__ import annotations

from ._backoff import Backoff, Schedule, ScheduleStep
from ._codes import CodeTable, ErrorSpec, Handling
from ._errors import ApiError, DeadlineExceeded
from ._events import ATTEMPT_EVENT, Outcome
from ._logreader import LogSummary
from ._logreader import summarize as summarize_log
from ._logreader import timeline as log_timeline
from ._logsetup import configure_logging
from ._middleware import ResilienceMiddleware, Settings
from ._session import wrap
from ._store import Admission, LocalStore, RetryBudgetSettings, Signal, Store

__all__ = [
    "ATTEMPT_EVENT",
    "Admission",
    "ApiError",
    "Backoff",
    "CodeTable",
    "DeadlineExceeded",
    "ErrorSpec",
    "Handling",
    "LocalStore",
    "LogSummary",
    "Outcome",
    "ResilienceMiddleware",
    "RetryBudgetSettings",
    "Schedule",
    "ScheduleStep",
    "Settings",
    "Signal",
    "Store",
    "configure_logging",
    "log_timeline",
    "summarize_log",
    "wrap",
]

__version__ = "0.1.0"
