"""The emulator's outage mode: for a while (or until told), every ``/v1/*`` request is answered
by one transient code (or a connection reset), before anything else is looked at.

Set with ``EmulatorConfig(outage_for=..., outage_code=...)``, at runtime with
:meth:`Emulator.configure` / :meth:`Emulator.start_outage` / ``POST /_emulator/configure``, or
from the command line (``--outage-for 5 --outage-code DISPATCH_TIMEOUT``). The duration counts
from when it is set (the server's start, for a startup setting).
"""

from __future__ import annotations

import argparse
import math
from typing import Final

from resilience._codes import CodeTable, Handling
from resilience.cli._args import positive_float

__all__ = [
    "OUTAGE_CODES",
    "OUTAGE_RESET",
    "Outage",
    "check_outage",
    "outage_code",
    "outage_seconds",
]

OUTAGE_RESET: Final = "reset"
"""The ``outage_code`` that resets every connection instead of answering."""

OUTAGE_CODES: Final[frozenset[str]] = frozenset(
    spec.code for spec in CodeTable.default().values() if spec.how is Handling.TRANSIENT
) | {OUTAGE_RESET}
"""What an outage may answer: the table's transient codes, or ``"reset"``."""

FOREVER: Final = ("forever", "inf")


def check_outage(outage_for: object, code: object) -> None:
    """Validate the two outage settings (ValueError with the reason)."""
    if outage_for is not None and not (
        isinstance(outage_for, int | float)
        and not isinstance(outage_for, bool)
        and outage_for > 0
        and not math.isnan(outage_for)
    ):
        raise ValueError(
            f"outage_for must be None, a number of seconds > 0, or math.inf, got {outage_for!r}"
        )
    if code not in OUTAGE_CODES:
        raise ValueError(
            f"outage_code must be a transient code of the table or 'reset', got {code!r}"
        )


def outage_seconds(text: str) -> float | None:
    """Command-line type of ``--outage-for``: seconds, ``forever`` (until reset) or ``none``."""
    word = text.strip().lower()
    if word == "none":
        return None
    if word in FOREVER:
        return math.inf
    return positive_float(text)


def outage_code(text: str) -> str:
    """Command-line type of ``--outage-code``."""
    if text not in OUTAGE_CODES:
        raise argparse.ArgumentTypeError(f"not a transient code of the table nor 'reset': {text!r}")
    return text


class Outage:
    """When the outage set last ends; asked once per request."""

    __slots__ = ("code", "until")

    def __init__(self) -> None:
        self.until: float | None = None  # monotonic end; None: no outage
        self.code = "DISPATCH_TIMEOUT"

    def set(self, outage_for: float | None, code: str, now: float) -> None:
        self.code = code
        self.until = None if outage_for is None else now + outage_for

    def answer(self, now: float) -> str | None:
        """The code (or ``"reset"``) to answer now, or None outside an outage."""
        until = self.until
        if until is None:
            return None
        if now >= until:
            self.until = None
            return None
        return self.code

    def remaining(self, now: float) -> float | None:
        """Seconds the outage still lasts (``inf``: until told), None when there is none."""
        until = self.until
        return None if until is None or now >= until else until - now
