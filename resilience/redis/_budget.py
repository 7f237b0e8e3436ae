"""The fleet's retry budget: deposits ride on the next acquire, withdrawals ask Redis.

A local ``RetryBudget`` mirrors every deposit and withdrawal, so a fallback starts from a
budget that knows this process's recent traffic.
"""

from __future__ import annotations

from collections.abc import Callable

from .._budget import DEFAULT_RETRY_BUDGET, RetryBudget
from ._connection import Unavailable
from ._keys import Keys
from ._leases import Runner
from ._settings import StoreSettings

__all__ = ["SharedBudget"]


class SharedBudget:
    def __init__(self, settings: StoreSettings, keys: Keys, run: Runner) -> None:
        self._settings = settings
        self._key = keys.budget
        self._run = run
        self._mirror = RetryBudget.from_settings(settings.retry_budget)
        self._pending = 0

    def deposit(self, *, shared: bool) -> None:
        """Count a logical request (sent to Redis with the next call)."""
        if self._mirror is not None:
            self._mirror.deposit()
            if shared:
                self._pending += 1

    def take_deposits(self) -> int:
        pending, self._pending = self._pending, 0
        return pending

    def acquire_args(self) -> list[float]:
        """The acquire script's budget ARGV: deposits ratio min_per_second ttl."""
        rule = self._settings.retry_budget or DEFAULT_RETRY_BUDGET
        return [self.take_deposits(), rule.ratio, rule.min_per_second, rule.ttl]

    async def try_retry(self, shared: Callable[[], bool]) -> bool:
        """Withdraw one retry from the fleet's budget (the local one during a fallback)."""
        mirror, rule = self._mirror, self._settings.retry_budget
        if mirror is None or rule is None:
            return True
        if shared():
            try:
                ok = await self._run(
                    "budget",
                    "budget",
                    [self._key],
                    [self.take_deposits(), rule.ratio, rule.min_per_second, rule.ttl,
                     self._settings.state_ms],
                    idempotent=False,
                )  # fmt: skip
            except Unavailable:
                pass
            else:
                mirror.try_withdraw()  # keep the local mirror close, for a fallback
                return bool(int(ok))
        return mirror.try_withdraw()
