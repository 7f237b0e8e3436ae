"""Per-origin rate gate and pacer: Retry-After gate, CUBIC rate, token bucket, response rate.

Pure bookkeeping plus, where it must wait, an anyio primitive. Time comes from an injectable
monotonic clock so tests can drive the arithmetic without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio

__all__ = [
    "MAX_RETRY_AFTER", "PACING", "Clock", "Cubic", "PacingRule", "RatePacer", "TokenBucket",
    "WindowRate",
]  # fmt: skip

Clock = Callable[[], float]

MAX_RETRY_AFTER: Final = 3600.0
"""With no ``max_elapsed``, a Retry-After or a closed gate longer than this gives up instead of
sleeping: a server cannot park every later request."""


class Cubic:
    """CUBIC rate calculator as in botocore's adaptive retry mode (``throttling.py``).

    ``scale`` is CUBIC's C and ``beta`` the multiplicative decrease; botocore uses 0.4 / 0.7.
    """

    __slots__ = ("_beta", "_k", "_last_fail", "_scale", "_w_max")

    def __init__(
        self, starting_max_rate: float, start_time: float, scale: float = 0.4, beta: float = 0.7
    ) -> None:
        self._w_max = starting_max_rate
        self._scale = scale
        self._beta = beta
        self._k = self._calculate_k()
        self._last_fail = start_time

    def _calculate_k(self) -> float:
        return float((self._w_max * (1 - self._beta) / self._scale) ** (1 / 3))

    @property
    def k(self) -> float:
        return self._k

    def success_received(self, timestamp: float) -> float:
        dt = timestamp - self._last_fail - self._k
        return self._scale * dt**3 + self._w_max

    def error_received(self, current_rate: float, timestamp: float) -> float:
        self._w_max = current_rate
        self._k = self._calculate_k()
        self._last_fail = timestamp
        return current_rate * self._beta


class WindowRate:
    """Responses per second over the last ``window`` seconds, counted in small slots.

    Until a whole window has passed it averages over the time since the first response (at
    least ``minimum`` seconds), so the first 429 of a run is cut from a real rate, not from 0
    as botocore's smoothed clocker would. A short minimum errs high on purpose: an estimate
    that is too high costs a few 429s (each cuts the rate by ``beta``), one too low costs
    seconds of slow CUBIC growth.
    """

    __slots__ = ("_counts", "_first", "_minimum", "_slot", "_slot_len", "_window")

    def __init__(self, window: float = 1.0, slots: int = 20, minimum: float = 0.01) -> None:
        self._window = window
        self._slot_len = window / slots
        self._counts = [0] * slots
        self._slot = 0
        self._first: float | None = None
        self._minimum = minimum

    def _advance(self, now: float) -> None:
        slot = int(now / self._slot_len)
        gap = slot - self._slot
        if gap > 0:
            size = len(self._counts)
            for i in range(1, min(gap, size) + 1):
                self._counts[(self._slot + i) % size] = 0
            self._slot = slot

    def record(self, now: float) -> None:
        if self._first is None:
            self._first = now
            self._slot = int(now / self._slot_len)
        self._advance(now)
        self._counts[self._slot % len(self._counts)] += 1

    def rate(self, now: float) -> float:
        if self._first is None:
            return 0.0
        self._advance(now)
        span = min(self._window, max(now - self._first, self._minimum))
        return sum(self._counts) / span


class TokenBucket:
    """A token bucket whose fill rate can change; ``reserve()`` says how long to wait.

    It holds at most ``burst`` seconds' worth of tokens (and at least one), so a pause, such
    as a closed gate, is not followed by a burst.
    """

    __slots__ = ("_burst", "_capacity", "_last", "_min_rate", "_rate", "_tokens")

    def __init__(
        self, rate: float, now: float, *, min_rate: float = 0.5, burst: float = 1.0
    ) -> None:
        self._min_rate = min_rate
        self._burst = burst
        self._rate = max(rate, min_rate)
        self._capacity = max(self._rate * burst, 1.0)
        self._tokens = 0.0
        self._last = now

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float, now: float) -> None:
        self._refill(now)
        self._rate = max(rate, self._min_rate)
        self._capacity = max(self._rate * self._burst, 1.0)
        self._tokens = min(self._tokens, self._capacity)

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def reserve(self, now: float) -> float:
        """Take one token, borrowing from the future if needed; return the wait in seconds."""
        self._refill(now)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def time_to_token(self, now: float) -> float:
        """Seconds until a whole token is there (0: one is there now); takes nothing."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self._rate

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0


@dataclass(frozen=True, slots=True)
class PacingRule:
    """The pacing rule's constants and arithmetic, apart from its enforcement.

    The one source of these numbers: ``RatePacer`` uses them in this process and the fleet's
    Lua scripts (``resilience/redis/scripts``) get them rendered in when they are loaded.
    """

    beta: float = 0.7
    """A 429 cuts the rate to this share of what went through."""
    recovery: float = 1.0
    """Seconds after a cut at which CUBIC is back at the rate that was cut."""
    min_rate: float = 0.5
    """Requests/s pacing never goes below."""
    burst: float = 0.02
    """Seconds' worth of sends that may go at once (at least one)."""
    idle_reset: float = 30.0
    """Pacing switches off this many seconds after the last 429."""
    window: float = 1.0
    """Seconds over which the response rate is measured."""
    window_slots: int = 20
    """The window slides in this many steps."""
    minimum_span: float = 0.01
    """The shortest span a first rate estimate averages over (errs high on purpose)."""

    def cut(self, measured: float, rate: float | None) -> tuple[float, float]:
        """A 429 while ``measured`` responses/s went through at pacing ``rate`` (None: not
        pacing): the rate that was cut (CUBIC's w_max) and the new pacing rate."""
        current = measured if rate is None else min(measured, rate)
        current = max(current, self.min_rate)
        return current, max(current * self.beta, self.min_rate)

    def grow(self, w_max: float, since_cut: float, measured: float, rate: float) -> float:
        """A success ``since_cut`` seconds after the cut from ``w_max``: CUBIC, at most to
        twice what is measured; a success never lowers the rate (after an idle spell the
        measured rate is low, not the server's limit)."""
        scale = max(w_max * (1 - self.beta) / self.recovery**3, 1e-9)
        cubic = Cubic(w_max, 0.0, scale=scale, beta=self.beta)
        return max(min(cubic.success_received(since_cut), max(2.0 * measured, rate)), self.min_rate)


PACING: Final = PacingRule()


class RatePacer:
    """The rate gate and pacer for one origin.

    ``429 RATE_LIMITED`` closes the gate until the time the server named, for every request to
    that origin. From the first such 429 on, sends are paced by a token bucket whose rate
    follows CUBIC on the measured response rate (the AWS SDKs' adaptive mode), so the reopened
    gate does not release a burst of new 429s. Two changes from botocore, for fast recovery: the
    measured rate is a 1 s sliding window (botocore's smoothed clocker reads 0 at the start, so
    its first cut drops to the 0.5 req/s floor), and CUBIC's C is scaled so the rate is back at
    the cut level ``recovery`` seconds after a cut.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        beta: float = PACING.beta,
        recovery: float = PACING.recovery,
        min_rate: float = PACING.min_rate,
        burst: float = PACING.burst,
        idle_reset: float = PACING.idle_reset,
    ) -> None:
        self._clock = clock
        self._rule = PacingRule(
            beta=beta, recovery=recovery, min_rate=min_rate, burst=burst, idle_reset=idle_reset
        )
        now = clock()
        self._started = now
        self._blocked_until = now
        self._measure = WindowRate(PACING.window, PACING.window_slots, PACING.minimum_span)
        self._w_max = 0.0  # the rate of the last cut
        self._last_cut = now
        self._bucket: TokenBucket | None = None
        self._min_rate = min_rate
        self._burst = burst
        self._idle_reset = idle_reset
        self._last_throttle = now
        self._epoch = 0
        # One sender at a time computes its wait from the *current* rate; the rest queue FIFO.
        self.turn = anyio.Lock()

    @property
    def blocked_until(self) -> float:
        return self._blocked_until

    @property
    def rate(self) -> float | None:
        """The pacing rate in requests/s, or None while pacing is off."""
        return self._bucket.rate if self._bucket is not None else None

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def active(self) -> bool:
        """True while sends must queue: the gate is closed or pacing is on.

        Pacing switches itself off ``idle_reset`` seconds after the last 429: the next burst is
        sent at full speed and, if the limit is still there, learns it again from one 429.
        """
        if self._bucket is None:
            return self._blocked_until > self._clock()
        now = self._clock()
        if now - self._last_throttle > self._idle_reset:
            self._bucket = None
            return self._blocked_until > now
        return True

    def delay(self) -> float:
        """Seconds until the next send may go (gate open and a pacing token there)."""
        now = self._clock()
        gate = max(0.0, self._blocked_until - now)
        if self._bucket is None:
            return gate
        return max(gate, self._bucket.time_to_token(now))

    def take(self) -> None:
        """Spend the pacing token of a send that goes now."""
        if self._bucket is not None:
            self._bucket.take(self._clock())

    def gate_wait(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    def on_response(self, *, rate_limited: bool, retry_after: float | None, epoch: int) -> bool:
        """Feed one response; True when it closed a gate that was open."""
        now = self._clock()
        self._measure.record(now)
        closed = False
        if rate_limited:
            self._last_throttle = now
            if retry_after is not None and now + retry_after > self._blocked_until:
                closed = self._blocked_until <= now  # report openings, not every extension
                self._blocked_until = now + retry_after
            if epoch != self._epoch:
                return closed  # this round trip was already cut
            self._epoch += 1
            measured = self._measure.rate(now)
            rate = self._bucket.rate if self._bucket is not None else None
            self._w_max, new_rate = self._rule.cut(measured, rate)
            self._last_cut = now
            if self._bucket is None:
                self._bucket = TokenBucket(
                    new_rate, now, min_rate=self._min_rate, burst=self._burst
                )
            else:
                self._bucket.set_rate(new_rate, now)
        elif self._bucket is not None:
            measured = self._measure.rate(now)
            new_rate = self._rule.grow(
                self._w_max, now - self._last_cut, measured, self._bucket.rate
            )
            self._bucket.set_rate(new_rate, now)
        return closed
