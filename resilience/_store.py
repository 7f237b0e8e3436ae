"""Where throttling state lives: the ``Store`` interface and the in-process ``LocalStore``."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio

from ._budget import RetryBudget
from ._concurrency import AdaptiveLimiter, ConcurrencyPermit
from ._decide import MAX_RETRY_AFTER
from ._errors import DeadlineExceeded
from ._events import GATE_EVENT, emit
from ._pacing import RatePacer

__all__ = ["Admission", "LocalStore", "RetryBudgetSettings", "Signal", "Store"]


class Signal(enum.Enum):
    """What a response tells the store."""

    SUCCESS = "success"  # accepted by the server (2xx/3xx)
    CONCURRENCY = "concurrency"  # 429 GENERATION_CONCURRENCY_EXCEEDED
    RATE = "rate"  # 429 RATE_LIMITED
    OTHER = "other"  # any other answer: the server took it, no limit was hit


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
        if not 0 <= self.ratio <= 1000:
            raise ValueError(f"RetryBudgetSettings.ratio must be in [0, 1000], got {self.ratio!r}")
        if self.min_per_second < 0:
            raise ValueError("RetryBudgetSettings.min_per_second must be >= 0")
        if not 1 <= self.ttl <= 60:
            raise ValueError("RetryBudgetSettings.ttl must be in [1, 60] seconds")


@dataclass(slots=True, eq=False)
class Admission:
    """The right to send one attempt: a concurrency permit plus the pacing epoch it was sent in.

    Stores put whatever they need in ``permit`` and ``extra``; the middleware only passes the
    admission back to the store.
    """

    origin: str
    permit: object
    limit: int
    rate_epoch: int
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """The state behind adaptive concurrency, rate gates and pacing, and the retry budget.

    ``LocalStore`` keeps it in this process; ``resilience.redis.RedisStore`` shares it between
    every process using the same Redis namespace. Deadlines are ``time.monotonic()`` values.
    """

    @property
    def concurrency_limit(self) -> int:
        """The current adaptive concurrency limit."""
        ...

    async def admit(self, origin: str, deadline: float | None) -> Admission:
        """Wait at ``origin``'s rate gate and pacer, then for a concurrency permit.

        Raises :class:`DeadlineExceeded` without waiting when the gate stays closed past the
        deadline, or when no permit comes before it.
        """
        ...

    def release(self, admission: Admission) -> None:
        """Return the permit. Synchronous and idempotent: it runs from connection callbacks."""
        ...

    async def report(self, admission: Admission, signal: Signal, retry_after: float | None) -> None:
        """Feed one response into the limits (AIMD step, gate, pacing rate)."""
        ...

    async def wait_for_release(self, admission: Admission, timeout: float) -> None:
        """Park after ``admission``'s plan-limit 429 until one of our requests completes (also
        counting completions while it was in flight), or ``timeout``."""
        ...

    async def deposit_request(self) -> None:
        """Count a new logical request in the retry budget."""
        ...

    async def try_retry(self) -> bool:
        """Withdraw one retry from the budget; False when it is spent."""
        ...


def check_concurrency(max_concurrency: int | None, initial_concurrency: int) -> None:
    """Validate a store's concurrency settings (shared by every store)."""
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
    ):
        raise TypeError(f"max_concurrency must be an int or None, got {max_concurrency!r}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
    if isinstance(initial_concurrency, bool) or not isinstance(initial_concurrency, int):
        raise TypeError(f"initial_concurrency must be an int, got {initial_concurrency!r}")
    if initial_concurrency < 1:
        raise ValueError(f"initial_concurrency must be >= 1, got {initial_concurrency!r}")


class LocalStore:
    """In-process limits, shared by every middleware (and session) that is given this object.

    One store per API key: the plan's concurrency limit and the retry budget are the key's, the
    rate gate and pacer are per origin.
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        initial_concurrency: int = 4,
        retry_budget: RetryBudgetSettings | None = RetryBudgetSettings(),
    ) -> None:
        check_concurrency(max_concurrency, initial_concurrency)
        self._clock = time.monotonic
        self.limiter = AdaptiveLimiter(ceiling=max_concurrency, initial=initial_concurrency)
        self._pacers: dict[str, RatePacer] = {}
        self.budget = (
            RetryBudget(
                ratio=retry_budget.ratio,
                ttl=retry_budget.ttl,
                min_per_second=retry_budget.min_per_second,
            )
            if retry_budget is not None
            else None
        )

    @property
    def concurrency_limit(self) -> int:
        return self.limiter.limit

    def pacer(self, origin: str) -> RatePacer:
        pacer = self._pacers.get(origin)
        if pacer is None:
            pacer = self._pacers[origin] = RatePacer()
        return pacer

    async def admit(self, origin: str, deadline: float | None) -> Admission:
        pacer = self.pacer(origin)
        while True:
            if pacer.active:
                await self._wait_turn(pacer, deadline)
            permit = await self._acquire(deadline)
            if pacer.gate_wait() <= 0:
                return Admission(origin, permit, permit.limit, pacer.epoch)
            # The gate closed while we waited for the permit: do not send into it.
            self.limiter.release(permit)

    async def _wait_turn(self, pacer: RatePacer, deadline: float | None) -> None:
        """Queue at the gate and pacer; each turn's wait uses the rate as it is then."""
        # Without a deadline, a gate closed for longer than MAX_RETRY_AFTER fails fast, as the
        # answer that closed it did (_decide): a server cannot park every later request.
        horizon = deadline if deadline is not None else self._clock() + MAX_RETRY_AFTER
        with anyio.move_on_after(
            deadline - self._clock() if deadline is not None else math.inf
        ) as scope:
            async with pacer.turn:
                while (wait := pacer.delay()) > 0:
                    if self._clock() + wait > horizon:
                        raise DeadlineExceeded(
                            "the rate gate stays closed past the deadline"
                            if deadline is not None
                            else f"the rate gate stays closed for {wait:.0f} s"
                        )
                    await anyio.sleep(wait)
                pacer.take()
        if scope.cancelled_caught:
            raise DeadlineExceeded("no turn at the rate gate before max_elapsed")

    async def _acquire(self, deadline: float | None) -> ConcurrencyPermit:
        permit = self.limiter.try_acquire()
        if permit is not None:
            return permit
        if deadline is None:
            return await self.limiter.acquire()
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise DeadlineExceeded("no concurrency permit before max_elapsed")
        with anyio.move_on_after(remaining):
            return await self.limiter.acquire()
        raise DeadlineExceeded("no concurrency permit before max_elapsed")

    def release(self, admission: Admission) -> None:
        assert isinstance(admission.permit, ConcurrencyPermit)
        self.limiter.release(admission.permit)

    async def report(self, admission: Admission, signal: Signal, retry_after: float | None) -> None:
        permit = admission.permit
        assert isinstance(permit, ConcurrencyPermit)
        if signal is Signal.SUCCESS:
            self.limiter.on_success(permit)
        elif signal is Signal.CONCURRENCY:
            self.limiter.on_concurrency_exceeded(permit)
        pacer = self.pacer(admission.origin)
        closed = pacer.on_response(
            rate_limited=signal is Signal.RATE,
            retry_after=retry_after,
            epoch=admission.rate_epoch,
        )
        if closed:
            rate = pacer.rate
            emit(
                GATE_EVENT,
                "info",
                origin=admission.origin,
                closed_for=round(retry_after or 0.0, 3),
                pace=round(rate, 2) if rate is not None and math.isfinite(rate) else None,
            )

    async def wait_for_release(self, admission: Admission, timeout: float) -> None:
        permit = admission.permit
        assert isinstance(permit, ConcurrencyPermit)
        await self.limiter.wait_for_release(timeout, since=permit)

    async def deposit_request(self) -> None:
        if self.budget is not None:
            self.budget.deposit()

    async def try_retry(self) -> bool:
        return self.budget is None or self.budget.try_withdraw()
