"""The store's own settings, validated once (the connection's belong to the client)."""

from __future__ import annotations

from dataclasses import dataclass

from .._budget import RetryBudgetSettings
from .._store import check_concurrency
from .._validate import number

__all__ = ["PROBE_FIRST", "StoreSettings"]

PROBE_FIRST = 0.05
"""Seconds before the first reconnection probe; the probe's backoff starts here."""


def _seconds(name: str, value: float, low: float, high: float, *, open_low: bool = False) -> float:
    # The checks every setting of the package goes through (an int too large for a float too).
    if open_low:
        return number(name, value, above=low, high=high)
    return number(name, value, low=low, high=high)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """See :class:`~resilience.redis.RedisStore` for what each means."""

    max_concurrency: int | None
    initial_concurrency: int
    retry_budget: RetryBudgetSettings | None
    lease_ttl: float
    redis_timeout: float
    max_connections: int
    probe_max_delay: float
    state_ttl: float

    def __post_init__(self) -> None:
        check_concurrency(self.max_concurrency, self.initial_concurrency)
        if self.retry_budget is not None and not isinstance(self.retry_budget, RetryBudgetSettings):
            raise TypeError(
                f"retry_budget must be RetryBudgetSettings or None, got {self.retry_budget!r}"
            )
        _seconds("lease_ttl", self.lease_ttl, 0.1, 3600)
        _seconds("redis_timeout", self.redis_timeout, 0, 30, open_low=True)
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise TypeError(f"max_connections must be an int, got {self.max_connections!r}")
        if self.max_connections < 2:
            raise ValueError(f"max_connections must be >= 2, got {self.max_connections!r}")
        _seconds("probe_max_delay", self.probe_max_delay, PROBE_FIRST, 3600)
        _seconds("state_ttl", self.state_ttl, 0.2, 10 * 365 * 86400)
        if self.state_ttl < 2 * self.lease_ttl:
            raise ValueError("state_ttl must be at least twice lease_ttl")

    @property
    def initial(self) -> int:
        """Where a new namespace's limit starts (never above the ceiling)."""
        return min(self.initial_concurrency, self.max_concurrency or self.initial_concurrency)

    @property
    def lease_ms(self) -> int:
        return round(self.lease_ttl * 1000)

    @property
    def state_ms(self) -> int:
        return round(self.state_ttl * 1000)

    @property
    def worker_ttl_ms(self) -> int:
        """A worker counts as live this long after its last call."""
        return max(2 * self.lease_ms, 10_000)

    @property
    def limit_args(self) -> tuple[int, int, int, int]:
        """initial, ceiling (0: none), lease TTL and state TTL in ms: the limit scripts' ARGV."""
        return (self.initial, self.max_concurrency or 0, self.lease_ms, self.state_ms)
