"""The retry budget (Finagle's): retries may add only a share of recent traffic."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

from ._pacing import Clock
from ._validate import number, show

__all__ = ["DEFAULT_RETRY_BUDGET", "RetryBudget", "RetryBudgetSettings"]


@dataclass(frozen=True, slots=True)
class RetryBudgetSettings:
    """How many retries of failures may be added to the traffic (Finagle's retry budget).

    Each logical request deposits ``ratio`` of a retry for ``ttl`` seconds; each retry of a
    failure withdraws one; ``min_per_second * ttl`` retries are always allowed. The throttles
    (both 429s, 425) never touch the budget.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = 10.0

    def __post_init__(self) -> None:
        number("RetryBudgetSettings.ratio", self.ratio, low=0, high=1000)
        number("RetryBudgetSettings.min_per_second", self.min_per_second, low=0, high=1e9)
        number("RetryBudgetSettings.ttl", self.ttl, low=1, high=60)


DEFAULT_RETRY_BUDGET: Final = RetryBudgetSettings()


class RetryBudget:
    """Retries may add at most ``ratio`` of recent requests plus a small reserve.

    Finagle's ``RetryBudget``: every request deposits ``ratio`` of a token for ``ttl`` seconds,
    every retry of a failure withdraws one, and ``min_per_second * ttl`` tokens are always
    available. Defaults are Finagle's (20 %, 10 s, 10/s).
    """

    def __init__(
        self,
        settings: RetryBudgetSettings | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        settings = settings if settings is not None else RetryBudgetSettings()
        if not isinstance(settings, RetryBudgetSettings):
            raise TypeError(f"expected RetryBudgetSettings, got {type(settings).__name__}")
        self.ratio = settings.ratio
        self.ttl = ttl = settings.ttl
        self.min_per_second = settings.min_per_second
        self._clock = clock
        self._slots: Final = max(1, math.ceil(ttl))
        self._deposits = [0.0] * self._slots
        self._withdrawals = [0.0] * self._slots
        self._second = math.floor(clock())

    @classmethod
    def from_settings(
        cls, settings: RetryBudgetSettings | None, *, clock: Clock = time.monotonic
    ) -> RetryBudget | None:
        """The budget those settings describe; ``None`` (no budget) for ``None``."""
        if settings is None:
            return None
        if not isinstance(settings, RetryBudgetSettings):
            raise TypeError(
                f"retry_budget must be a RetryBudgetSettings or None, got {show(settings)}"
            )
        return cls(settings, clock=clock)

    def _advance(self) -> int:
        now = math.floor(self._clock())
        if now == self._second:
            return now % self._slots
        if now - self._second >= self._slots:
            self._deposits = [0.0] * self._slots
            self._withdrawals = [0.0] * self._slots
        else:
            for second in range(self._second + 1, now + 1):
                self._deposits[second % self._slots] = 0.0
                self._withdrawals[second % self._slots] = 0.0
        self._second = max(self._second, now)
        return self._second % self._slots

    @property
    def balance(self) -> float:
        self._advance()
        reserve = self.min_per_second * self.ttl
        return reserve + self.ratio * sum(self._deposits) - sum(self._withdrawals)

    def deposit(self) -> None:
        """A logical request was made."""
        second = math.floor(self._clock())
        # Within the current second (nearly always): one slot to bump, nothing to expire.
        slot = second % self._slots if second == self._second else self._advance()
        self._deposits[slot] += 1.0

    def try_withdraw(self) -> bool:
        """May a failed attempt be retried? Takes one token if so."""
        if self.balance < 1.0:
            return False
        self._withdrawals[self._second % self._slots] += 1.0
        return True
