"""The emulator's settings: :class:`EmulatorConfig`, validated once, and its command-line
options, defined once for ``python -m resilience.testing``, :class:`EmulatorProcess` and the demo.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields, replace
from typing import Any, Final

from resilience.cli._args import (
    bounded_int,
    non_negative_float,
    optional,
    positive_float,
    probability,
)
from resilience.testing._outage import check_outage, outage_code, outage_seconds
from resilience.testing._ratelimit import QUOTA_HEADER_STYLES, RETRY_AFTER_STYLES

__all__ = [
    "FATAL_CODES",
    "MAX_DELAY",
    "TRANSIENT_CODES",
    "EmulatorConfig",
    "add_arguments",
    "config_argv",
    "config_from_args",
    "is_int",
    "is_number",
]

TRANSIENT_CODES: Final[tuple[str, ...]] = (
    "UPSTREAM_GENERATION_ERROR",
    "DISPATCH_TIMEOUT",
    "INTERNAL_ERROR",
    "GENERATION_TIMEOUT",
    "GENERATION_INTERRUPTED",
)
"""Retryable codes drawn by ``transient_rate`` (always answered before any execution)."""

FATAL_CODES: Final[tuple[str, ...]] = (
    "BILLING_INSUFFICIENT_CREDITS",
    "VALIDATION_ERROR",
    "UPSTREAM_GENERATION_SERVICE_ERROR",
    "GENERATION_CAPACITY_EXCEEDED",
)
"""Non-retryable codes drawn by ``fatal_rate`` (answered before any execution)."""

MAX_DELAY: Final = 3600.0
"""The longest delay any setting or fault may ask for, in seconds."""


def is_number(value: object) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """The emulator's behaviour. Every field can be changed at runtime with
    :meth:`Emulator.configure`.

    Random faults draw one number per ``/v1/*`` request from ``random.Random(seed)``: with
    probability ``reset_rate`` the connection is reset, with ``transient_rate`` a random code of
    :data:`TRANSIENT_CODES` is answered, with ``fatal_rate`` one of :data:`FATAL_CODES`. All are
    answered before anything executes; the three rates must sum to at most 1.
    """

    plan_concurrency: int | None = None
    """Max generations in flight across all clients; over it ``/v1/generate`` answers 429
    ``GENERATION_CONCURRENCY_EXCEEDED`` at once (no Retry-After). ``None``: unlimited."""
    rate_limit: float | None = None
    """Token-bucket refill rate (requests per second) over all ``/v1/*`` requests; over it
    429 ``RATE_LIMITED`` with ``Retry-After`` and ``Retry-After-Ms``. ``None``: unlimited."""
    rate_burst: int = 10
    """Token-bucket capacity."""
    retry_after_style: str = "ms"
    """How a 429 ``RATE_LIMITED`` says when to come back: ``"ms"`` (``Retry-After`` in whole
    seconds plus ``Retry-After-Ms``), ``"seconds"`` (whole seconds only, rounded up, at least
    1: what most servers send) or ``"date"`` (an HTTP-date)."""
    window_limit: int | None = None
    """A fixed window over all ``/v1/*`` requests: this many per ``window_seconds``, windows
    aligned to the wall clock; over it 429 ``RATE_LIMITED`` until the window ends. ``None``:
    no window."""
    window_seconds: float = 1.0
    """The fixed window's length."""
    quota_headers: str = "ietf"
    """How the fixed window announces itself on every answer: ``"ietf"`` (``RateLimit`` /
    ``RateLimit-Policy``), ``"ietf-old"`` (``RateLimit-Limit/-Remaining/-Reset``), ``"x"``
    (``X-RateLimit-*``, Reset in delta seconds), ``"x-unix"`` (Reset a Unix time) or
    ``"none"``."""
    generation_time: float = 0.05
    """Seconds a generation takes; its plan slot is held that long."""
    transient_rate: float = 0.0
    """Probability of a random retryable failure."""
    fatal_rate: float = 0.0
    """Probability of a random non-retryable failure."""
    reset_rate: float = 0.0
    """Probability that the connection is reset before any response."""
    ready_after: float = 0.2
    """Seconds after ``POST /v1/jobs`` before ``GET /v1/jobs/{id}`` stops answering 425."""
    seed: int | None = 0
    """Seed of the random faults (``None``: unpredictable)."""
    outage_for: float | None = None
    """Seconds of full outage from when this is set (``math.inf``: until set to ``None``): every
    ``/v1/*`` request is answered ``outage_code``, before any other fault. ``None``: no outage."""
    outage_code: str = "DISPATCH_TIMEOUT"
    """What the outage answers: a transient code of the table, or ``"reset"`` (connection
    resets)."""

    def __post_init__(self) -> None:
        pc = self.plan_concurrency
        if pc is not None and not (is_int(pc) and pc >= 1):
            raise ValueError(f"plan_concurrency must be None or an int >= 1, got {pc!r}")
        rl = self.rate_limit
        if rl is not None:
            if not (is_number(rl) and math.isfinite(rl) and rl > 0):
                raise ValueError(f"rate_limit must be None or a finite number > 0, got {rl!r}")
            object.__setattr__(self, "rate_limit", float(rl))
        if not (is_int(self.rate_burst) and self.rate_burst >= 1):
            raise ValueError(f"rate_burst must be an int >= 1, got {self.rate_burst!r}")
        if self.retry_after_style not in RETRY_AFTER_STYLES:
            raise ValueError(
                f"retry_after_style must be one of {', '.join(RETRY_AFTER_STYLES)}, "
                f"got {self.retry_after_style!r}"
            )
        if self.quota_headers not in QUOTA_HEADER_STYLES:
            raise ValueError(
                f"quota_headers must be one of {', '.join(QUOTA_HEADER_STYLES)}, "
                f"got {self.quota_headers!r}"
            )
        wl = self.window_limit
        if wl is not None and not (is_int(wl) and wl >= 1):
            raise ValueError(f"window_limit must be None or an int >= 1, got {wl!r}")
        ws = self.window_seconds
        if not (is_number(ws) and math.isfinite(ws) and 0 < ws <= MAX_DELAY):
            raise ValueError(f"window_seconds must be a number in (0, {MAX_DELAY:g}], got {ws!r}")
        object.__setattr__(self, "window_seconds", float(ws))
        for name in ("generation_time", "ready_after"):
            value = getattr(self, name)
            if not (is_number(value) and math.isfinite(value) and 0 <= value <= MAX_DELAY):
                raise ValueError(f"{name} must be a number in [0, {MAX_DELAY:g}], got {value!r}")
            object.__setattr__(self, name, float(value))
        total = 0.0
        for name in ("transient_rate", "fatal_rate", "reset_rate"):
            value = getattr(self, name)
            if not (is_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
            total += value
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"transient_rate + fatal_rate + reset_rate must be at most 1, got {total:g}"
            )
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed must be None or an int, got {self.seed!r}")
        check_outage(self.outage_for, self.outage_code)
        if self.outage_for is not None:
            object.__setattr__(self, "outage_for", float(self.outage_for))


# --------------------------------------------------------------------------- command line


class _Option:
    __slots__ = ("help", "metavar", "type")

    def __init__(self, metavar: str, kind: Callable[[str], Any], help: str) -> None:
        self.metavar = metavar
        self.type = kind
        self.help = help  # "{default}" is filled in with the parser's default


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}")
        return text

    return parse


_OPTIONS: Final[dict[str, _Option]] = {
    "plan_concurrency": _Option(
        "N",
        optional(bounded_int(1)),
        "generations in flight before 429 GENERATION_CONCURRENCY_EXCEEDED, or 'none' "
        "(default {default})",
    ),
    "rate_limit": _Option(
        "R",
        optional(positive_float),
        "requests per second before 429 RATE_LIMITED, or 'none' (default {default})",
    ),
    "rate_burst": _Option(
        "N", bounded_int(1), "token bucket size of the rate limit (default {default})"
    ),
    "retry_after_style": _Option(
        "STYLE",
        _choice(RETRY_AFTER_STYLES),
        "how a rate-limit 429 says when to retry: ms (Retry-After plus Retry-After-Ms), "
        "seconds (whole seconds only), date (HTTP-date) (default {default})",
    ),
    "window_limit": _Option(
        "N",
        optional(bounded_int(1)),
        "a fixed window of N requests per --window-seconds, aligned to the wall clock, or "
        "'none' (default {default})",
    ),
    "window_seconds": _Option(
        "S", positive_float, "the fixed window's length in seconds (default {default})"
    ),
    "quota_headers": _Option(
        "STYLE",
        _choice(QUOTA_HEADER_STYLES),
        "how the fixed window announces itself on every answer: ietf, ietf-old, x, x-unix, "
        "none (default {default})",
    ),
    "generation_time": _Option(
        "S", non_negative_float, "seconds per generation (default {default})"
    ),
    "transient_rate": _Option(
        "P",
        probability,
        "probability of a retryable error (5xx codes) per request (default {default})",
    ),
    "fatal_rate": _Option(
        "P",
        probability,
        "probability of a non-retryable error (402, 422...) per request (default {default})",
    ),
    "reset_rate": _Option(
        "P", probability, "probability of a connection reset per request (default {default})"
    ),
    "ready_after": _Option(
        "S",
        non_negative_float,
        "seconds after POST /v1/jobs until the job stops answering 425 (default {default})",
    ),
    "seed": _Option("N", optional(int), "seed of the random faults, or 'none' (default {default})"),
    "outage_for": _Option(
        "S",
        outage_seconds,
        "start in a full outage lasting S seconds, or 'forever' (until configured off), or "
        "'none' (default {default})",
    ),
    "outage_code": _Option(
        "CODE",
        outage_code,
        "what the outage answers: a transient code of the table, or 'reset' (default {default})",
    ),
}
"""One command-line option per :class:`EmulatorConfig` field, named ``--field-name``."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _text(value: object) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    defaults: EmulatorConfig,
    *,
    skip: Collection[str] = (),
) -> None:
    """Add an option per field of :class:`EmulatorConfig` (but ``skip``), defaulting to
    ``defaults``; read them back with :func:`config_from_args`."""
    for f in fields(EmulatorConfig):
        if f.name in skip:
            continue
        option = _OPTIONS[f.name]  # a new field needs its option here (EmulatorProcess uses it)
        default = getattr(defaults, f.name)
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            metavar=option.metavar,
            type=option.type,
            default=default,
            help=option.help.format(default=_text(default)),
        )


def config_from_args(args: argparse.Namespace, base: EmulatorConfig) -> EmulatorConfig:
    """``base`` with the fields :func:`add_arguments` parsed into ``args``; raises ValueError
    when they do not combine (e.g. fault rates summing over 1)."""
    names = {f.name for f in fields(EmulatorConfig)}
    return replace(base, **{k: v for k, v in vars(args).items() if k in names})


def config_argv(config: EmulatorConfig) -> list[str]:
    """The options that make :func:`config_from_args` rebuild ``config``."""
    argv: list[str] = []
    for f in fields(config):
        value = getattr(config, f.name)
        text = "none" if value is None else value if isinstance(value, str) else repr(value)
        argv += [_flag(f.name), text]
    return argv
