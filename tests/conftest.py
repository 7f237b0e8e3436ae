"""Shared fixtures: anyio on asyncio, structlog configured so tests can capture events."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.JSONRenderer(),
    ],
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    logger_factory=structlog.PrintLoggerFactory(),
    cache_logger_on_first_use=False,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event logged during the test, contextvars merged in."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
        yield captured


def attempts(events: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """Only the per-attempt events."""
    return [e for e in events if e.get("event") == "resilience.attempt"]
