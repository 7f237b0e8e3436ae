"""Backoff settings and the wait schedule, built on the ``backoff`` package's generators."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

import backoff

from ._validate import integer, number, show

__all__ = ["Backoff", "Jitter", "Schedule", "ScheduleStep"]

Jitter = Literal["full", "equal", "none"]
_JITTERS: Final = ("full", "equal", "none")


def _equal_jitter(value: float) -> float:
    # AWS's "equal jitter": half fixed, half random; never below value / 2.
    return value / 2 + random.uniform(0, value / 2)


def _no_jitter(value: float) -> float:
    return value


_JITTER_FUNCS: Final[dict[str, Callable[[float], float]]] = {
    "full": backoff.full_jitter,
    "equal": _equal_jitter,
    "none": _no_jitter,
}
_LOWER_FRACTION: Final = {"full": 0.0, "equal": 0.5, "none": 1.0}
MAX_PREVIEW: Final = 10_000  # retries a preview shows at most; more is a typo, not a plan


@dataclass(frozen=True, slots=True)
class ScheduleStep:
    """One wait of a schedule: before retry number ``retry`` (1 = the first retry)."""

    retry: int
    nominal: float  # the un-jittered exponential value, capped at max_delay
    low: float  # smallest wait jitter can produce
    high: float  # largest wait jitter can produce


@dataclass(frozen=True, slots=True)
class Schedule:
    """What a :class:`Backoff` does over ``len(steps)`` retries, without running it."""

    backoff: Backoff
    steps: tuple[ScheduleStep, ...]

    @property
    def worst_case_total(self) -> float:
        """Longest total waiting across all retries (every jitter at its maximum)."""
        return sum(step.high for step in self.steps)

    @property
    def best_case_total(self) -> float:
        return sum(step.low for step in self.steps)

    def __str__(self) -> str:
        lines = [f"{self.backoff!r}", "retry  nominal      min      max"]
        lines += [
            f"{s.retry:>5}  {s.nominal:>7.3f}  {s.low:>7.3f}  {s.high:>7.3f}" for s in self.steps
        ]
        lines.append(
            f"total waiting: {self.best_case_total:.3f}s best case, "
            f"{self.worst_case_total:.3f}s worst case"
        )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff: ``initial * multiplier ** n``, capped at ``max_delay``.

    ``jitter="full"`` waits ``U(0, d)`` (the AWS recommendation and ``backoff``'s default),
    ``"equal"`` waits ``d/2 + U(0, d/2)``, ``"none"`` waits exactly ``d``. No wait from the
    schedule exceeds ``max_delay``; only a server's ``Retry-After`` can ask for more.
    """

    initial: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: Jitter = "full"
    _jitter_func: Callable[[float], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        number("Backoff.initial", self.initial, low=0)
        number("Backoff.multiplier", self.multiplier, low=1)
        number("Backoff.max_delay", self.max_delay, low=0)
        if self.max_delay < self.initial:
            raise ValueError(
                f"Backoff.max_delay ({self.max_delay!r}) must be >= initial ({self.initial!r})"
            )
        if not isinstance(self.jitter, str):
            raise TypeError(f"Backoff.jitter must be a str, got {show(self.jitter)}")
        if self.jitter not in _JITTERS:
            raise ValueError(f"Backoff.jitter must be one of {_JITTERS}, got {self.jitter!r}")
        object.__setattr__(self, "_jitter_func", _JITTER_FUNCS[self.jitter])

    def nominal_delays(self) -> Iterator[float]:
        """The un-jittered waits, one per retry, forever (``backoff.expo``, primed)."""
        if self.initial == 0:
            while True:
                yield 0.0
        gen = backoff.expo(base=self.multiplier, factor=self.initial, max_value=self.max_delay)
        gen.send(None)  # backoff's generators yield a bare None first
        for value in gen:
            value = min(float(value), self.max_delay)
            yield value
            # expo computes multiplier**n before comparing with max_value, which overflows a
            # float long before n stops growing: once the next step would reach the cap, stay.
            if value * self.multiplier >= self.max_delay:
                break
        while True:
            yield float(self.max_delay)

    def delays(self) -> Iterator[float]:
        """The jittered waits, one per retry, forever."""
        jitter = self._jitter_func
        for value in self.nominal_delays():
            yield min(jitter(value), self.max_delay)

    def preview(self, retries: int = 5) -> Schedule:
        """The schedule over ``retries`` retries: nominal, min and max wait, worst-case total.

        ``print(Backoff(initial=0.5).preview(4))`` shows it as a table.
        """
        integer("retries", retries, low=0, high=MAX_PREVIEW)
        lower = _LOWER_FRACTION[self.jitter]
        steps = []
        for n, nominal in zip(range(1, retries + 1), self.nominal_delays(), strict=False):
            steps.append(ScheduleStep(n, nominal, nominal * lower, nominal))
        return Schedule(self, tuple(steps))
