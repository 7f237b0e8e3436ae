"""One call to get resilience's attempt events as JSON lines, without touching the app's setup."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import IO, TextIO, cast

import structlog

from . import _events

__all__ = ["configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure_logging(
    target: str | os.PathLike[str] | IO[str] | None = None, *, level: str = "info"
) -> Callable[[], None]:
    """Write resilience's events as JSON lines to ``target`` (a path, a text stream, or stdout).

    Only resilience's own logger is routed; ``structlog.configure()`` and the application's
    loggers are left alone. ``level="debug"`` also logs first-attempt successes. Returns a
    function that undoes this configuration only (and closes the file it opened): calls stack,
    the latest one still in place receives the events. A sink that fails (a closed file, a
    closed stdout pipe) never changes a request's outcome: the failure is reported once on
    stderr and the events are dropped.
    """
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {sorted(_LEVELS)}, got {level!r}")
    opened: IO[str] | None = None
    if target is None:
        stream: IO[str] = sys.stdout
    elif isinstance(target, str | os.PathLike):
        stream = opened = open(target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    else:
        stream = target
    logger = structlog.wrap_logger(
        structlog.WriteLogger(cast(TextIO, stream)),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
    )
    remove = _events.push_logger(logger)

    def undo() -> None:
        remove()
        if opened is not None:
            opened.close()

    return undo
