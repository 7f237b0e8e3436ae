"""Shared pieces of the command line: the :class:`Command` shape every subcommand has, its
errors, argument types, the rich check and the Backoff options."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from resilience._backoff import Backoff

__all__ = [
    "PROG",
    "Command",
    "CommandError",
    "RICH_HINT",
    "RichMissing",
    "add_backoff_arguments",
    "backoff_from",
    "bounded_int",
    "non_negative_float",
    "optional",
    "positive_float",
    "probability",
    "require_rich",
]

PROG: Final = "python -m resilience"
RICH_HINT: Final = "pip install 'resilience[cli]'"

_T = TypeVar("_T")


Run = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
"""A subcommand's body: parsed options and its own parser (for ``parser.error``) to exit code."""


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand of ``python -m resilience``; :func:`resilience.cli.main` wires it up."""

    name: str
    help: str
    """One line in the top-level ``--help``."""
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Run


class CommandError(Exception):
    """The command cannot go on: printed as one ``PROG COMMAND: error: ...`` line, exit 2."""


class RichMissing(CommandError):
    """``rich`` (the ``cli`` extra) is not installed."""


def require_rich(why: str = "this command needs rich", *, otherwise: str = "") -> None:
    """Raise :class:`RichMissing` unless rich imports: ``why``, the install hint, ``otherwise``
    (what works without rich, e.g. ``"use --json"``)."""
    try:
        import rich  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "rich":
            raise
        alternative = f", or {otherwise}" if otherwise else ""
        raise RichMissing(f"{why}: {RICH_HINT}{alternative}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text!r}")
    return value


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argument type for an integer in ``[low, high]`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def optional(kind: Callable[[str], _T]) -> Callable[[str], _T | None]:
    """``kind``, or None for the word ``none``."""

    def parse(text: str) -> _T | None:
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def add_backoff_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--initial --multiplier --max-delay --jitter`` options, with Backoff's defaults."""
    d = Backoff()
    group = parser.add_argument_group("backoff (the wait before each retry)")
    group.add_argument(
        "--initial",
        metavar="S",
        type=non_negative_float,
        default=d.initial,
        help=f"first wait in seconds, before jitter (default {d.initial:g})",
    )
    group.add_argument(
        "--multiplier",
        metavar="X",
        type=non_negative_float,
        default=d.multiplier,
        help=f"growth factor per retry, >= 1 (default {d.multiplier:g})",
    )
    group.add_argument(
        "--max-delay",
        metavar="S",
        type=non_negative_float,
        default=d.max_delay,
        help=f"cap on any one wait (default {d.max_delay:g})",
    )
    group.add_argument(
        "--jitter",
        choices=("full", "equal", "none"),
        default=d.jitter,
        help=f"full: U(0, d); equal: d/2 + U(0, d/2); none: exactly d (default {d.jitter})",
    )


def backoff_from(args: argparse.Namespace) -> Backoff:
    """The :class:`Backoff` of the parsed options; raises ValueError/TypeError when invalid."""
    return Backoff(
        initial=args.initial,
        multiplier=args.multiplier,
        max_delay=args.max_delay,
        jitter=args.jitter,
    )
