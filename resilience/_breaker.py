"""The circuit breaker's rule: Polly v8's advanced breaker, adapted to a credit-billed API.

Pure: no I/O, no waiting, time passed in. ``_circuit`` enforces it with anyio; the fleet store
runs the same rule in Lua (``resilience/redis/scripts/breaker.lua``) against a shared table of
cases.

Per origin, over a sliding sampling window cut into buckets: once at least
``minimum_throughput`` attempts were answered (or failed in transport) and the share of *outage
failures* among them reaches ``failure_ratio``, the breaker opens for a break duration. Then it
is half-open: exactly one probe goes out. Its success closes the breaker; its failure opens it
again for a longer break (times ``break_growth``, capped at ``max_break_duration``). What is
not an outage (a throttle, a poll, a caller error) neither counts nor decides a probe.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_CIRCUIT_BREAKER",
    "Breaker",
    "BreakerState",
    "CircuitBreaker",
    "Hold",
    "Pass",
    "Ramp",
    "Refuse",
    "Tally",
    "Window",
]

BUCKETS: Final = 10
"""Buckets per sampling window (Polly's and resilience4j's aggregation): O(1) per attempt."""


def _check_positive(name: str, value: float, *, upper: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"CircuitBreaker.{name} must be a number, got {value!r}")
    if not 0 < value < upper or not math.isfinite(value):
        raise ValueError(f"CircuitBreaker.{name} must be > 0 and finite, got {value!r}")


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """When a breaker opens and how it probes. Pass ``circuit_breaker=None`` to switch it off.

    Polly v8's advanced breaker with defaults chosen for an API whose throttles and caller
    errors never count: an outage answers every request with a failure, so a ratio of 0.5
    over 10 attempts trips within the first dozen answers, while a 10 s window of healthy
    traffic keeps a few stray 503s from opening it.

    Args:
        failure_ratio: share of outage failures among counted attempts that opens it (Polly: 0.1,
            but Polly counts every exception; here only outages count).
        minimum_throughput: counted attempts the window must hold before it may open (Polly: 100,
            which an outage at concurrency 4 takes seconds to reach).
        sampling_duration: seconds the window covers (Polly: 30).
        break_duration: seconds of the first break (Polly: 5; a shorter first break with growth
            finds a quick recovery sooner and still sends one probe per break).
        break_growth: factor applied to the break after each failed probe.
        max_break_duration: the break's cap: recovery is seen within this long.
        probe_timeout: seconds one probe may hold the half-open slot before another request may
            probe instead (a worker that died mid-probe must not keep the breaker shut).
    """

    failure_ratio: float = 0.5
    minimum_throughput: int = 10
    sampling_duration: float = 10.0
    break_duration: float = 1.0
    break_growth: float = 2.0
    max_break_duration: float = 10.0
    probe_timeout: float = 30.0

    def __post_init__(self) -> None:
        _check_positive("failure_ratio", self.failure_ratio, upper=1.0 + 1e-12)
        if isinstance(self.minimum_throughput, bool) or not isinstance(
            self.minimum_throughput, int
        ):
            raise TypeError(
                f"CircuitBreaker.minimum_throughput must be an int, got {self.minimum_throughput!r}"
            )
        if self.minimum_throughput < 1:
            raise ValueError(
                f"CircuitBreaker.minimum_throughput must be >= 1, got {self.minimum_throughput!r}"
            )
        for name in ("sampling_duration", "break_duration", "max_break_duration", "probe_timeout"):
            _check_positive(name, getattr(self, name))
        _check_positive("break_growth", self.break_growth)
        if self.break_growth < 1:
            raise ValueError(f"CircuitBreaker.break_growth must be >= 1, got {self.break_growth!r}")
        if self.max_break_duration < self.break_duration:
            raise ValueError(
                "CircuitBreaker.max_break_duration must be >= break_duration, got "
                f"{self.max_break_duration!r} < {self.break_duration!r}"
            )

    def break_for(self, opens: int) -> float:
        """The break after ``opens`` consecutive openings (1 = the first)."""
        exponent = min(max(opens - 1, 0), 64)  # far past any cap
        try:
            grown = self.break_duration * self.break_growth**exponent
        except OverflowError:  # a huge break_growth: the cap it would pass anyway
            return self.max_break_duration
        return min(grown, self.max_break_duration)


DEFAULT_CIRCUIT_BREAKER: Final = CircuitBreaker()
"""The breaker every store has unless told otherwise (``circuit_breaker=None``: none)."""


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Tally(enum.Enum):
    """What one attempt's end tells the breaker."""

    SUCCESS = "success"  # the server answered as designed (2xx/3xx, or a caller error)
    FAILURE = "failure"  # an outage: transport error, transient code, bare 5xx
    NEUTRAL = "neutral"  # a throttle or poll (both 429s, 425): neither up nor down


@dataclass(frozen=True, slots=True)
class Pass:
    """Send the attempt. ``probe``: it is the half-open probe; ``epoch``: the closed period it
    was admitted in (its result counts only there); ``token``: its name in a shared store."""

    probe: bool
    epoch: int
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """Do not send yet: ask again at ``until`` (monotonic seconds), or sooner when woken."""

    until: float


@dataclass(frozen=True, slots=True)
class Refuse:
    """Open past the request's deadline: fail it now, unsent."""

    probe_at: float
    last_code: str | None


Admit = Pass | Hold | Refuse


class Window:
    """Counted attempts and outage failures over the last ``duration`` seconds, in buckets."""

    __slots__ = (
        "_bucket_end",
        "_bucket_slot",
        "_bucket_start",
        "_duration",
        "_failures",
        "_stamp",
        "_totals",
        "_width",
        "last_failure",
        "memory",
    )

    def __init__(self, duration: float) -> None:
        self._duration = duration
        self._width = duration / BUCKETS
        # How long a failure may still be counted: the window and the bucket it began in.
        self.memory = duration + self._width
        self._stamp: list[float] = []  # the bucket index (time // width) each slot holds
        self._totals: list[int] = []
        self._failures: list[int] = []
        self.clear()

    def add(self, now: float, *, failure: bool) -> None:
        index = math.floor(now / self._width)
        slot = index % BUCKETS
        if self._stamp[slot] != index:
            self._stamp[slot], self._totals[slot], self._failures[slot] = index, 0, 0
        # The bucket this is in, so the next successes in it cost one comparison.
        self._bucket_slot = slot
        self._bucket_start, self._bucket_end = index * self._width, (index + 1) * self._width
        self._totals[slot] += 1
        self._failures[slot] += failure
        if failure:
            self.last_failure = now

    def add_success(self, now: float) -> None:
        """``add(now, failure=False)``; most successes fall in the bucket of the last one."""
        if self._bucket_start <= now < self._bucket_end:
            self._totals[self._bucket_slot] += 1
        else:
            self.add(now, failure=False)

    def has_failures(self, now: float) -> bool:
        """Might the window hold a failure? False for certain when the last one is older than
        the window (the common case: no scan of the buckets)."""
        return now - self.last_failure < self.memory

    def counts(self, now: float) -> tuple[int, int]:
        """(attempts, failures) in the window ending at ``now``."""
        oldest = math.floor(now / self._width) - BUCKETS + 1
        total = failures = 0
        for slot in range(BUCKETS):
            if self._stamp[slot] >= oldest:
                total += self._totals[slot]
                failures += self._failures[slot]
        return total, failures

    def expiry(self, now: float) -> float:
        """When the oldest counted bucket leaves the window (``inf``: nothing counted)."""
        oldest = math.floor(now / self._width) - BUCKETS + 1
        stamps = [
            stamp
            for slot, stamp in enumerate(self._stamp)
            if stamp >= oldest and self._totals[slot]
        ]
        return (min(stamps) + BUCKETS) * self._width if stamps else math.inf

    def clear(self) -> None:
        self.last_failure = -math.inf
        self._bucket_slot, self._bucket_start, self._bucket_end = 0, math.inf, -math.inf
        self._stamp = [-math.inf] * BUCKETS
        self._totals = [0] * BUCKETS
        self._failures = [0] * BUCKETS


class Breaker:
    """One origin's breaker state machine (closed -> open -> half-open -> closed or open)."""

    __slots__ = (
        "_epoch",
        "_opened_at",
        "_opens",
        "_pass",
        "_pending",
        "_probe_since",
        "_suspect_hold",
        "last_code",
        "settings",
        "state",
        "window",
    )

    def __init__(self, settings: CircuitBreaker) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.window = Window(settings.sampling_duration)
        self.last_code: str | None = None
        self._opens = 0  # consecutive openings without a successful probe between them
        self._opened_at = 0.0
        self._probe_since: float | None = None  # the half-open probe in flight since
        self._epoch = 0  # closed periods so far
        self._pass = Pass(probe=False, epoch=0)  # what admit() answers while closed: made once
        self._pending = 0  # attempts of this closed period in flight (probe apart)
        self._suspect_hold = False  # a request is held by the no-success rule (see admit)

    @property
    def probe_at(self) -> float:
        """When the open breaker lets its probe through."""
        return self._opened_at + self.settings.break_for(self._opens)

    @property
    def epoch(self) -> int:
        return self._epoch

    def pass_now(self, now: float) -> Pass | None:
        """``admit(now, None)`` in the common case, closed with no failure the window could
        still count (nothing to decide: the happy path's one call); None: ask :meth:`admit`."""
        if self.state is not BreakerState.CLOSED or now - self.window.last_failure < (
            self.window.memory
        ):
            return None
        self._pending += 1
        return self._pass

    def admit(self, now: float, deadline: float | None, *, commit: bool = True) -> Admit:
        """May an attempt go now? ``commit=False`` only looks (a request checks before it
        waits for a permit, and commits once it holds one, just before it is sent): it takes
        no probe slot and counts nothing in flight."""
        if self.state is BreakerState.OPEN:
            if now < self.probe_at:
                if deadline is not None and deadline <= self.probe_at:
                    return Refuse(self.probe_at, self.last_code)
                return Hold(self.probe_at)
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            probe_since = self._probe_since
            if probe_since is None or now >= probe_since + self.settings.probe_timeout:
                if commit:
                    self._probe_since = now
                return Pass(probe=True, epoch=self._epoch)
            # One probe at a time: the others wait for its answer (or its lease to lapse).
            return Hold(probe_since + self.settings.probe_timeout)
        total, failures = self.window.counts(now) if self.window.has_failures(now) else (0, 0)
        if (
            failures
            and failures == total
            and failures + self._pending >= self.settings.minimum_throughput
        ):
            # Nothing but outage failures so far: send no more than the breaker needs to
            # decide, so an outage from the start costs minimum_throughput attempts, not
            # minimum_throughput plus whatever was in flight when it opened.
            self._suspect_hold = True
            # Until the oldest of those failures leaves the window (or an answer wakes us).
            return Hold(self.window.expiry(now))
        if commit:
            self._pending += 1
        return self._pass

    def record(self, ticket: Pass, tally: Tally, now: float, code: str | None = None) -> bool:
        """Feed one attempt's end in; True when the state changed (waiters should look again)."""
        if ticket is self._pass and tally is Tally.SUCCESS and self.state is BreakerState.CLOSED:
            # The common case first: a success of this closed period (what the rest does).
            self.window.add_success(now)
            return self._ended()
        if ticket.probe:
            return self._probe_ended(tally, now, code)
        if ticket.epoch != self._epoch:
            return False  # sent before the last outage ended: that outage was counted
        held = self._ended()
        if self.state is not BreakerState.CLOSED or tally is Tally.NEUTRAL:
            return held  # sent before the breaker opened: the outage was already counted
        failure = tally is Tally.FAILURE
        if failure:
            self.last_code = code
        self.window.add(now, failure=failure)
        if not failure:
            return held
        total, failures = self.window.counts(now)
        if total >= self.settings.minimum_throughput and failures >= (
            self.settings.failure_ratio * total - 1e-9
        ):
            self._open(now)
            return True
        return held

    def abandon(self, ticket: Pass) -> bool:
        """The attempt ended without an answer worth counting (cancelled, caller timeout)."""
        if ticket.probe:
            if self.state is not BreakerState.HALF_OPEN:
                return False
            self._probe_since = None
            return True
        return ticket.epoch == self._epoch and self._ended()

    def _ended(self) -> bool:
        """One attempt of this closed period ended; True if a request is held for room."""
        if self._pending > 0:
            self._pending -= 1
        held, self._suspect_hold = self._suspect_hold, False
        return held

    def _probe_ended(self, tally: Tally, now: float, code: str | None) -> bool:
        if self.state is not BreakerState.HALF_OPEN:
            return False
        if tally is Tally.NEUTRAL:
            self._probe_since = None  # no verdict: the next request probes
            return True
        if tally is Tally.FAILURE:
            self.last_code = code
            self._open(now)
            return True
        self.state = BreakerState.CLOSED
        self._opens = 0
        self._probe_since = None
        self._epoch += 1
        self._pass = Pass(probe=False, epoch=self._epoch)
        self._pending = 0
        self.window.clear()
        return True

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opens += 1
        self._opened_at = now
        self._probe_since = None


class Ramp:
    """Slow start after a breaker closes: the requests it held go out gradually.

    In-flight attempts are capped at 2 once the probe has succeeded; each answer that is not
    an outage failure raises the cap by one (doubling it per round trip, as TCP's slow start),
    until it passes the concurrency seen before the outage, when the ramp ends.
    """

    __slots__ = ("cap", "in_flight", "peak", "target")

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0  # most attempts in flight at once while closed (what to ramp back to)
        self.cap: int | None = None  # None: not ramping
        self.target = 0

    def may_send(self) -> bool:
        return self.cap is None or self.in_flight < self.cap

    def sent(self) -> None:
        self.in_flight += 1
        if self.cap is None and self.in_flight > self.peak:
            self.peak = self.in_flight

    def ended(self, tally: Tally | None) -> bool:
        """One attempt ended (``None``: abandoned); True when the cap grew (wake waiters)."""
        if self.in_flight > 0:
            self.in_flight -= 1
        if self.cap is None:
            return False
        if tally is not None and tally is not Tally.FAILURE:
            self.cap += 1
            if self.cap > self.target:
                self.cap = None
                self.peak = self.in_flight
        return True

    def start(self) -> None:
        """The breaker closed after an outage: ramp back up to the pre-outage peak."""
        self.target = max(self.peak, 2)
        self.cap = 2
