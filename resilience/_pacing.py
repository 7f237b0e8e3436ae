"""Per-origin rate gate and pacer: Retry-After gate, CUBIC rate, token bucket, response rate.

Pure bookkeeping plus, where it must wait, an anyio primitive. Time comes from an injectable
monotonic clock so tests can drive the arithmetic without sleeping. Over 400 lines because the
pacing rule (``PacingRule``, also rendered into the fleet's Lua), the quota count and the pacer
that applies both share one state and are checked by one set of fake-clock tests.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio

from ._aligned import ALIGNED
from ._quota import Quota

__all__ = [
    "MAX_RETRY_AFTER", "PACING", "Clock", "Cubic", "PacingRule", "QuotaCount", "RatePacer",
    "TokenBucket", "WindowRate",
]  # fmt: skip

Clock = Callable[[], float]

MAX_PREDICTED_WINDOW: Final = 60.0
"""Longest announced quota window whose next reset the pacer predicts by itself (seconds)."""

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
        elif int(now / self._slot_len) != self._slot:
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
    as a closed gate, is not followed by a burst; ``most`` caps that count further (the
    server's own burst, once known).
    """

    __slots__ = ("_burst", "_capacity", "_last", "_min_rate", "_rate", "_tokens", "most")

    def __init__(
        self, rate: float, now: float, *, min_rate: float = 0.5, burst: float = 1.0
    ) -> None:
        self._min_rate = min_rate
        self._burst = burst
        self.most = math.inf
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
        self._capacity = max(min(self._rate * self._burst, self.most), 1.0)
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

    What a 429 costs decides the rule. A **cheap** gate (shorter than ``costly_gate``, e.g.
    ``Retry-After-Ms``) is botocore's adaptive mode: cut to ``beta`` of the measured rate, grow
    back along CUBIC within ``recovery`` seconds and probe above. A **costly** gate (a
    whole-second ``Retry-After``) closes the origin for a second per probe, so the limit is
    estimated and held instead of probed for: see :class:`RatePacer` (one process) and
    :meth:`stretch_cut` (the fleet's Lua, which cannot measure the server's burst).
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
    costly_gate: float = 0.25
    """A gate at least this long (seconds) makes a probe past the limit costly."""
    hold: float = 0.9
    """After a costly gate the rate is held at this share of the estimated limit (fits of a
    real server's rate spread by about 6 %: a hold above the rate costs a gate)."""
    probe_gates: float = 2.0
    """After a costly gate of ``g`` s, CUBIC is back at the estimate ``probe_gates * g`` s later
    and probes above it slower still: a probe costs a gate, so probes are rare."""
    ramp_steps: float = 10.0
    """With no estimate after a costly gate of ``g`` s, the rate doubles every
    ``g / ramp_steps`` seconds."""
    burst_share: float = 0.5
    """Once the server's burst is measured, at most this share of it is sent at once."""
    fit_window: float = 2.0
    """Seconds of sends a fit reads back from the 429 (older ones are forgotten)."""
    fit_max_rate: float = 1e6
    """Requests/s a fit searches up to."""
    fit_rounds: int = 8
    """Rounds of :meth:`fit_burst`'s substitution at most."""
    fit_steps: int = 24
    """Bisection steps of a fit (the ratio between its bounds shrinks to 1 + 1e-6)."""

    def cut(self, measured: float, rate: float | None) -> tuple[float, float]:
        """A 429 while ``measured`` responses/s went through at pacing ``rate`` (None: not
        pacing): the rate that was cut (CUBIC's w_max) and the new pacing rate."""
        current = measured if rate is None else min(measured, rate)
        current = max(current, self.min_rate)
        return current, max(current * self.beta, self.min_rate)

    def stretch_cut(
        self, ok: int, span: float, rate: float | None, gate: float
    ) -> tuple[float, float, float, float]:
        """The fleet's cut for a costly gate of ``gate`` s, after ``ok`` answers got through
        the ``span`` s stretch since the gate last opened, at pacing ``rate``: (the rate cut
        from, the new rate, the beta and the recovery its CUBIC grows back with).

        A fleet's first stretch is no burst (its workers start over 0.1-1 s), so the server's
        burst, and with it a fit, cannot be told from it; the cut is botocore's, from what got
        through the stretch, and the rate is back there only ``probe_gates`` gate lengths
        later (see :meth:`grow`), probing above only after that.
        """
        w_max, new = self.cut(ok / max(span, self.minimum_span), rate)
        return w_max, new, self.beta, self.probe_gates * gate

    def grow(
        self,
        w_max: float,
        since_cut: float,
        measured: float,
        rate: float,
        beta: float | None = None,
        recovery: float | None = None,
    ) -> float:
        """A success ``since_cut`` seconds after the cut from ``w_max`` (to ``beta * w_max``,
        back there after ``recovery`` s): CUBIC, at most to twice what is measured; a success
        never lowers the rate (after an idle spell the measured rate is low, not the server's
        limit)."""
        beta = self.beta if beta is None else beta
        recovery = self.recovery if recovery is None else recovery
        scale = max(w_max * (1 - beta) / recovery**3, 1e-9)
        k = (w_max * (1 - beta) / scale) ** (1 / 3)
        # A costly cut's curve starts when its gate opens: answers before that get the cut rate.
        cubic = float(scale * (max(since_cut, 0.0) - k) ** 3 + w_max)
        return max(min(cubic, max(2.0 * measured, rate)), self.min_rate)

    def fit_burst(
        self, sends: Sequence[float], start: float, counted: float, span: float
    ) -> float | None:
        """:meth:`fit` with the server's burst read from the first stretch: ``counted``
        successes over ``span`` s, which include what the rate let through meanwhile (``burst
        = counted - rate * span``, solved with the fit by a few rounds of substitution)."""
        rate = self.fit(sends, start, counted)
        for _ in range(self.fit_rounds):
            if rate is None:
                return None
            again = self.fit(sends, start, counted - rate * span)
            if again is None or abs(again - rate) <= 0.01 * rate:
                return again or rate
            rate = again
        return rate

    def costly(self, gate: float | None) -> bool:
        return gate is not None and gate >= self.costly_gate

    def ramp_start(self, ok: int, span: float, gate: float) -> float:
        """Where a slow start begins after the first costly gate: what the server surely gave
        per gate length (``ok`` successes in the ``span`` s stretch before it), at most ``beta``
        of the stretch's rate."""
        upper = ok / max(span, self.minimum_span)
        return max(self.min_rate, min(ok / gate, self.beta * upper))

    def ramp_rate(self, start: float, since_open: float, gate: float) -> float:
        """The slow start ``since_open`` s after the gate opened: doubling every gate/steps."""
        steps = min(max(0.0, since_open) * self.ramp_steps / gate, 20.0)
        return float(start * 2.0**steps)

    def fit(self, sends: Sequence[float], start: float, burst: float) -> float | None:
        """The server's rate, read from the sends it admitted before its 429.

        The server is taken for a token bucket (GCRA, the shape of most rate limiters) of
        ``burst`` tokens, full when the gate opened at ``start``. It admitted every one of
        ``sends`` (their times, in order), so its rate is at least the least rate at which
        such a bucket admits them all; that rate is returned (found by bisection: a bucket
        with more rate admits more). It reads what was actually sent, so senders that lag
        behind the pacing rate (a loaded loop, a fleet's shared schedule) give the rate they
        really drew the 429 at, never the rate they were allowed. None when the burst alone
        admits every send (nothing to tell) or no rate does (the burst was misjudged).
        """
        burst = max(burst, 1.0)
        if len(sends) <= burst:
            return None

        def admits(rate: float) -> bool:
            tokens, last = burst, start
            for t in sends:
                tokens = min(burst, tokens + (t - last) * rate)
                last = t
                if tokens < 1.0 - 1e-9:
                    return False
                tokens -= 1.0
            return True

        lo, hi = self.min_rate, self.fit_max_rate
        if admits(lo):
            return lo
        if not admits(hi):
            return None
        for _ in range(self.fit_steps):
            mid = (lo * hi) ** 0.5
            if admits(mid):
                hi = mid
            else:
                lo = mid
        return hi


PACING: Final = PacingRule()


class QuotaCount:
    """The announced quota, counted down by our own sends between answers.

    Within one window the server's count only goes up, so the least ``remaining`` any answer
    named is the latest count we know; every send we counted and have no answer to yet may
    still be counted after it: ``least remaining - sends in flight`` are left, reckoned again
    at each answer. Sends race to the server (between processes above all), so no answer is
    read as counting only the sends before it: one counted after later sends would subtract
    those twice, and a count pinned to its least would lose them for the window. The rule
    never over-sends (an answered send was counted; an unanswered one is assumed not yet)
    and what it holds back comes back as the answers do, so a spent count with sends in
    flight looks again every ``probe_poll``. The reset is the earliest any answer named
    (resets in whole seconds are rounded up: the earliest is the tightest). When the reset
    passes the whole quota is there again, and answers to sends before that moment are
    ignored.

    A whole-second reset is up to a second late, so a spent count is held only until the
    boundary the wall-clock alignment places (``Quota.aligned``, the rule in ``_aligned.py``)
    while the origin has not contradicted it: then one probe goes, and the rest wait for its
    answer (at most until the reset named). A refill confirms the boundary; a 429 or a count
    that did not refill drops the alignment for this origin for good.
    """

    __slots__ = (
        "_coarse", "_early", "_ended", "_flying", "_fresh", "_last_take", "_least", "_probing",
        "_rolled", "_waiting_since", "aligned", "aligned_at", "left", "limit", "reset_at",
        "window",
    )  # fmt: skip

    def __init__(self) -> None:
        self.limit: int | None = None
        self.window: float | None = None
        self.left: int | None = None  # None: nothing to count (no remaining announced yet)
        self.reset_at: float | None = None
        self._least = 0  # the least remaining an answer in this window named
        self._flying: set[int] = set()  # counted sends not answered yet (by number)
        self._waiting_since: float | None = None  # spent, waiting for answers since
        self._rolled = -1  # answers to sends up to this one belong to an older window
        self._fresh = True  # no answer yet in this window
        self.aligned = True  # the wall-clock alignment is not contradicted at this origin
        self.aligned_at: float | None = None  # where it places this window's end
        self._probing = False  # rolled: its probe is not answered yet
        self._early = False  # ... and the roll was at the aligned boundary
        self._coarse = False  # a reset in this window was named in whole delta seconds
        self._last_take = -math.inf  # when our latest send was taken
        self._ended: int | None = None  # sends taken before the aligned end passed, unspent

    def roll(self, now: float, sends: int) -> None:
        """The window reset: its whole quota is there again.

        The next reset is predicted only for windows up to ``MAX_PREDICTED_WINDOW``: for a
        longer one (a daily quota, or an absurd ``w``) or one not announced, the sends are
        still counted from the announced limit (every send keeps its number, so the first
        answers of the new window correct the count for the sends in flight), but with no
        reset our own count never holds the origin: only an answer's reset can. At the aligned
        boundary of a spent count only the probe is let go.
        """
        reset_at = self.reset_at
        if reset_at is None:
            return
        roll_at = self._roll_at()
        assert roll_at is not None
        if now < roll_at:
            return
        if now < reset_at:  # the aligned end, before the reset named
            if not self.spent():
                # Not used up by its aligned end: sends from here on are the next window's
                # (the first answer to one of them starts its count, in answer()).
                if self._ended is None:
                    self._ended = sends
                return
            self._rolled, self._fresh, self._probing, self._early = sends, True, True, True
            self.left, self.aligned_at, self._coarse, self._ended = 1, None, False, None
            return
        window = self.window
        # A whole-second reset names the end only to within a second: sends taken in that
        # second may count in the server's new window already (a window we did not use up
        # before it ended). Then the whole quota is not ours to assume: one probe first, and
        # its answer says what is left.
        unsure = self._coarse and self._last_take > reset_at - 1.0
        self._rolled, self._fresh, self.aligned_at, self._coarse = sends, True, None, False
        self._probing, self._early, self._ended = unsure, False, None
        self.left = 1 if unsure else self.limit
        if not window or window > MAX_PREDICTED_WINDOW:
            self.reset_at = None  # no hold until an answer names the next reset
            return
        self.reset_at = reset_at + window * (1 + (now - reset_at) // window)

    def _roll_at(self) -> float | None:
        """When the count rolls: at the aligned end while the alignment holds, else at the
        reset named. The aligned end may lie up to two skews past the reset named (a candidate
        is the latest in the skew-widened second): answers just before a boundary name a reset
        a few milliseconds before the end of the *next* window if our sends crossed into it,
        and a roll there would send the probe into a window still spent."""
        at = self.aligned_at
        if at is not None and self.aligned and self.reset_at is not None:
            return at + ALIGNED.skew
        return self.reset_at

    def ended(self, seq: int) -> None:
        """Send ``seq`` left flight with no count read from it (an answer without rate-limit
        headers, a transport error, a cancellation): the server may have counted it, so it
        stays spent. Idempotent (a send already answered is not in flight)."""
        flying = self._flying
        if seq in flying:
            flying.remove(seq)
            self._spend_unread(seq)

    def answer(
        self, quota: Quota, seq: int, now: float, *, limited: bool = False, counted: bool = True
    ) -> None:
        """An answer (``limited``: a 429) to send ``seq`` announced ``quota``; ``counted``:
        ``seq`` is one of our counted sends (False: a send not numbered, read as the latest)."""
        flying = self._flying
        counted = counted and seq in flying
        if counted:
            flying.remove(seq)
        if quota.window is not None and quota.limit is not None:
            self.window = quota.window
        if quota.limit is not None:
            self.limit = quota.limit
        if quota.unaligned:
            self.aligned = False
        if seq <= self._rolled:
            return  # the older window's: says nothing of this one (nor was it counted in it)
        ended = self._ended
        if ended is not None and seq > ended and self.aligned:
            # Sent after the aligned end of a window not used up: the answer is the next
            # window's and says what is left of it (by its send, not by when we read it: a
            # late read is no evidence); the old count and its reset are the old window's.
            self._rolled, self._fresh, self.reset_at = ended, True, None
            self.aligned_at, self._ended = None, None
        if self._probing and (limited or quota.remaining is not None):
            self._probed(refilled=not limited)
        if quota.remaining is None:  # nothing to count
            if counted:
                self._spend_unread(seq)
            return
        least = quota.remaining if self._fresh else min(self._least, quota.remaining)
        self._least = least
        self.left = max(0, least - len(flying))
        if quota.reset is not None:
            reset_at = now + quota.reset
            coarse = quota.aligned is not None or quota.unaligned  # whole delta seconds
            self._coarse = coarse or (self._coarse and not self._fresh)
            if self._fresh or self.reset_at is None:
                predicted = (
                    self.reset_at if self.reset_at is not None and self.reset_at > now else None
                )
                self.reset_at = reset_at if predicted is None else min(predicted, reset_at)
            else:
                self.reset_at = min(self.reset_at, reset_at)
            if quota.aligned is not None and self.aligned:
                # Each candidate is at or after the true end (less the skew): the earliest.
                at = now + quota.aligned
                fresh = self._fresh or self.aligned_at is None
                self.aligned_at = at if fresh else min(self.aligned_at or at, at)
        self._fresh = False

    def _spend_unread(self, seq: int) -> None:
        """Send ``seq`` left flight, its count not read: the server may have counted it in
        this window (one sent before the roll counted in the old one)."""
        if not self._fresh and seq > self._rolled:
            self._least = max(0, self._least - 1)

    def _probed(self, *, refilled: bool) -> None:
        """The first answer after a roll with a probe. At the aligned boundary the count was
        spent: had the window not ended, the server would have refused the probe; a success
        (with its remaining, the server's own count of the new window) shows the quota
        refilled."""
        self._probing = False
        if refilled:
            if self._early:
                self.reset_at = None  # the window ended: the reset named for it is past
            return
        if self._early:  # still the old window: the alignment is wrong for this origin
            self.aligned, self.aligned_at = False, None
        self._fresh, self.left, self._least = False, 0, 0

    def throttled(self, seq: int) -> None:
        """A 429 while counting: the quota is spent sooner than counted."""
        if seq > self._rolled:
            if self._probing:
                self._probed(refilled=False)
            # this window's: later answers cannot give back what the 429 refused
            self._least, self._fresh = 0, False
        self.left = 0

    def take(self, now: float, seq: int) -> None:
        """Send ``seq`` taken at ``now`` (nothing to do while no quota is counted)."""
        if self.left is not None:
            self.left -= 1
            self._last_take = now
            self._flying.add(seq)

    def untake(self, seq: int) -> None:
        """Send ``seq`` did not go after all: its unit of quota is back."""
        if seq in self._flying:
            self._flying.discard(seq)
            assert self.left is not None
            self.left += 1

    def spent(self) -> bool:
        """True when no send is left before a known reset, or before the answers in flight
        (with no reset known, they name the next one: sending on would spend blind)."""
        return (
            self.left is not None
            and self.left <= 0
            and (self.reset_at is not None or bool(self._flying))
        )

    def holding(self) -> bool:
        """Spent with no counted send in flight: held until the reset or the aligned end (a
        gate closed). While sends are in flight their answers may give back what they held."""
        return not self._flying and self.spent()

    def wait(self, now: float) -> float:
        """Seconds a spent quota holds the origin's sends: until the aligned boundary, or the
        reset; while the probe or another counted send is out, a look again (``probe_poll`` at
        first, less often the longer the wait: ``Alignment.poll``; at most until the roll)."""
        if not self.spent():
            self._waiting_since = None
            return 0.0
        roll_at = self._roll_at()
        if self._probing or self._flying:
            since = self._waiting_since
            if since is None:
                since = self._waiting_since = now
            poll = ALIGNED.poll(now - since)
            return poll if roll_at is None else max(0.0, min(roll_at - now, poll))
        self._waiting_since = None
        assert roll_at is not None
        return max(0.0, roll_at - now)


class RatePacer:
    """The rate gate and pacer for one origin.

    ``429 RATE_LIMITED`` closes the gate until the time the server named, for every request to
    that origin; so does an announced quota that is spent (remaining 0, until its reset). From
    the first 429 on, sends are paced by a token bucket whose rate follows one of two rules,
    chosen by the gate the 429 imposed (what a probe past the limit costs):

    - **Cheap gates** (``Retry-After-Ms``-style, shorter than ``PacingRule.costly_gate``):
      CUBIC on the measured response rate, as the AWS SDKs' adaptive mode (botocore
      ``throttling.py``), with two changes for fast recovery: the measured rate is a 1 s
      sliding window (botocore's smoothed clocker reads 0 at the start, so its first cut drops
      to the 0.5 req/s floor), and CUBIC's C is scaled so the rate is back at the cut level
      ``recovery`` s after a cut.
    - **Costly gates** (whole-second ``Retry-After``): a probe past the limit closes the origin
      for a whole gate, so the pacer estimates the limit and holds below it. After the first
      429 it restarts from what the server surely gave per gate and doubles every
      gate / ``ramp_steps`` (TCP slow start; a waiter looks again one doubling later at most),
      sending at once at most ``burst_share`` of the server's burst, which the first stretch,
      sent at full speed, measured. When the slow start draws its 429, the gate it closes is
      waited out (every answer comes in meanwhile), then the server's rate is fitted from the
      send times of what it admitted (:meth:`PacingRule.fit`: the least rate at which a token
      bucket of that burst admits them all; it reads what was sent, so senders that lag
      behind the pacing rate give the right rate too). The rate is held at ``hold`` of that
      and grows back along CUBIC over ``probe_gates`` gate lengths before probing above
      (CUBIC's plateau around W_max; BBR and Netflix's concurrency-limits likewise probe
      rarely above the estimate), so a whole-second gate is paid about once more, not once a
      second. A 429 while held is fitted the same way from the held stretch.
      An announced quota (``q`` per ``w``) is the estimate from the start: held there flat.
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
        self._blocked_until = now
        self._measure = WindowRate(PACING.window, PACING.window_slots, PACING.minimum_span)
        self._w_max = 0.0  # the rate of the last cut
        self._last_cut = now
        self._cut_beta: float | None = None  # None: the rule's own (a cheap cut)
        self._cut_recovery: float | None = None
        self._bucket: TokenBucket | None = None
        self._last_throttle = now
        self.epoch = 0  # the cut counter: one cut per round trip (read on every admission)
        # The open stretch: since when the gate is open (None: from the next answer) and what
        # got through since; the server's burst, measured by the first stretch.
        self._open_at: float | None = None
        self._open_ok = 0
        self._burst_est: float | None = None
        self._burst_since = 0.0
        self._burst_span = 0.0
        self._ramp: tuple[float, float, float] | None = None  # start rate, since, gate
        # What a fit reads: the recent paced sends (sequence number -> time) and the times of
        # those the server admitted; a fit waits for the gate to open (answers come late).
        self._sent: OrderedDict[int, float] = OrderedDict()  # O(1) at both ends
        self._admitted: deque[float] = deque()
        # A fit due when the gate opens: the stretch (opened, cut), its gate, the rate then.
        self._pending: tuple[float, float, float, float] | None = None
        # The announced quota: the rate it names, and the sends it leaves before its reset.
        self._announced: float | None = None
        self._quota = QuotaCount()
        self.sends = 0  # sends taken while active (their sequence numbers)
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
    def quota_left(self) -> int | None:
        """Sends the announced quota still allows before its reset (None: none announced)."""
        self._quota.roll(self._clock(), self.sends)
        return self._quota.left

    @property
    def active(self) -> bool:
        """True while sends must queue: the gate is closed, pacing is on or a quota is counted.

        Pacing switches itself off ``idle_reset`` seconds after the last 429: the next burst is
        sent at full speed and, if the limit is still there, learns it again from one 429.
        """
        now = self._clock()
        if self._bucket is not None and now - self._last_throttle > self._rule.idle_reset:
            self._bucket, self._ramp, self._burst_est, self._open_at = None, None, None, None
            self._pending = None
        counting = self._quota.left is not None
        return self._bucket is not None or counting or self._blocked_until > now

    def delay(self) -> float:
        """Seconds until the next send may go (gate open and a pacing token there)."""
        now = self._clock()
        self._settle(now)
        self._quota.roll(now, self.sends)
        gate = max(0.0, self._blocked_until - now, self._quota.wait(now))
        if self._bucket is None:
            return gate
        wait = self._bucket.time_to_token(now)
        if self._ramp is not None:
            # The slow start grows with time, not only with answers: a wait reckoned at
            # today's rate is too long, so a waiter looks again one doubling later at most.
            self._ramp_to(now)
            wait = min(self._bucket.time_to_token(now), self._ramp[2] / self._rule.ramp_steps)
        return max(gate, wait)

    def take(self) -> int:
        """Spend the pacing token (and a unit of quota) of a send that goes now; returns the
        send's sequence number, to pass back with its answer."""
        now = self._clock()
        if self._bucket is not None:
            self._bucket.take(now)
        self.sends += 1
        self._quota.take(now, self.sends)
        sent = self._sent
        sent[self.sends] = now
        horizon = now - self._rule.fit_window
        while next(iter(sent.values())) < horizon:
            sent.popitem(last=False)  # sends in order: the oldest first
        return self.sends

    def untake(self) -> None:
        """Give back what :meth:`take` spent for a send that did not go after all (the gate
        closed while it waited for its permit)."""
        self._sent.pop(self.sends, None)
        self._quota.untake(self.sends)
        self.sends -= 1

    def forget(self, seq: int) -> None:
        """Send ``seq`` ended without an answer read (a transport error, a cancellation):
        no longer in flight. Idempotent, so a release may always call it."""
        self._quota.ended(seq)

    def gate_wait(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    def _close(self, until: float) -> bool:
        """Close the gate until ``until``; True when it was open (report openings only)."""
        if until <= self._blocked_until:
            return False
        closed = self._blocked_until <= self._clock()
        self._blocked_until = until
        # The next stretch starts when the gate opens; what gets through before is not its.
        self._open_at, self._open_ok = until, 0
        return closed

    # ------------------------------------------------------------------ responses

    def on_response(
        self,
        *,
        rate_limited: bool,
        retry_after: float | None,
        epoch: int,
        quota: Quota | None = None,
        seq: int | None = None,
    ) -> bool:
        """Feed one response; True when it closed a gate that was open.

        ``quota`` is what the answer announced, ``seq`` the number :meth:`take` gave its send
        (None: sent unpaced, read as the latest).
        """
        now = self._clock()
        self._settle(now)
        self._measure.record(now)
        sent_at = None if seq is None else self._sent.pop(seq, None)
        if sent_at is not None and not rate_limited:
            self._admit(sent_at, now)
        if self._open_at is None:
            self._open_at = now  # the first answer (after an idle spell) opens a stretch
        if not rate_limited:
            if now >= self._open_at:
                self._open_ok += 1
            elif self._ramp is not None and self._burst_est is not None and self._cut_beta is None:
                # Sent in the first stretch, answered after its 429: still the server's burst.
                self._burst_est += 1
                self._burst_span = now - self._burst_since
        closed = False
        count = self._quota
        if quota is not None or seq is not None:
            count.roll(now, self.sends)
        if quota is not None:
            if quota.rate is not None:
                self._announced = quota.rate
            held = count.holding()
            count.answer(
                quota,
                self.sends if seq is None else seq,
                now,
                limited=rate_limited,
                counted=seq is not None,
            )
            closed = not held and count.holding() and self._blocked_until <= now
        elif seq is not None:
            count.ended(seq)
        if rate_limited and count.reset_at is not None and count.left is not None:
            # Counting an announced quota, a 429 means it is spent sooner than counted (other
            # clients, a race): hold until the reset and the 429's own gate. The quota paces;
            # there is nothing to discover.
            count.throttled(self.sends if seq is None else seq)
            if retry_after is not None:
                closed = self._close(now + retry_after) or closed
            return closed
        if rate_limited:
            self._last_throttle = now
            if epoch != self.epoch:
                # This round trip was already cut; its gate may still be longer.
                if retry_after is not None:
                    closed = self._close(now + retry_after) or closed
                return closed
            self.epoch += 1
            opened, stretch = self._open_at, (now - self._open_at, self._open_ok)
            if retry_after is not None:
                closed = self._close(now + retry_after) or closed
            if self._rule.costly(retry_after):
                assert retry_after is not None
                self._costly_cut(now, retry_after, stretch, opened)
            else:
                self._ramp = None
                self._cut_beta = self._cut_recovery = None
                measured = self._measure.rate(now)
                if self._announced is not None:
                    measured = min(measured, self._announced)
                self._set_cut(*self._rule.cut(measured, self.rate), now)
        elif self._bucket is not None:
            self._grow(now)
        return closed

    def _set_cut(self, w_max: float, new_rate: float, since: float) -> None:
        self._w_max, self._last_cut = w_max, since
        self._set_rate(new_rate, self._clock())

    def _set_rate(self, rate: float, now: float) -> None:
        rule = self._rule
        if self._bucket is None:
            self._bucket = TokenBucket(rate, now, min_rate=rule.min_rate, burst=rule.burst)
        if self._burst_est is not None:
            # After a gate the server's bucket is full, ours must not send more than it holds.
            self._bucket.most = rule.burst_share * self._burst_est
        self._bucket.set_rate(rate, now)

    def _hold(self, estimate: float, since: float, beta: float, gate: float) -> None:
        """Hold at ``beta`` of ``estimate``, back at it ``probe_gates`` gate lengths later."""
        rule = self._rule
        self._ramp = None
        self._cut_beta, self._cut_recovery = beta, rule.probe_gates * gate
        estimate = max(estimate, rule.min_rate)
        self._set_cut(estimate, max(estimate * beta, rule.min_rate), since)

    def _admit(self, sent_at: float, now: float) -> None:
        """Note the send time of an admitted send (answers come about in order of sends)."""
        admitted = self._admitted
        admitted.append(sent_at)
        i = len(admitted) - 1
        while i > 0 and admitted[i - 1] > sent_at:
            admitted[i], admitted[i - 1] = admitted[i - 1], sent_at
            i -= 1
        while admitted[0] < now - self._rule.fit_window:
            admitted.popleft()

    def _settle(self, now: float) -> None:
        """At the opening of a gate that a costly 429 closed after the first: every answer of
        the stretch before it is in, so hold below the rate fitted from what was admitted;
        with nothing to fit, cut as CUBIC does."""
        pending = self._pending
        if pending is None or now < self._blocked_until:
            return
        self._pending = None
        opened, cut_at, gate, current = pending
        rule = self._rule
        sends = [t for t in self._admitted if opened <= t <= cut_at]
        burst = self._burst_est
        assert burst is not None
        fit = rule.fit_burst(sends, opened, burst, self._burst_span)
        if fit is not None:
            self._hold(min(fit, current), self._blocked_until, rule.hold, gate)
        else:
            self._hold(current, self._blocked_until, rule.beta, gate)

    def _costly_cut(
        self, now: float, gate: float, stretch: tuple[float, int], opened: float
    ) -> None:
        rule = self._rule
        reopen = max(now, self._blocked_until)
        span, ok = stretch
        current = self.rate
        if self._announced is not None:
            # The server said what it allows: hold there, no discovery, no probing.
            self._hold(self._announced, reopen, 1.0, gate)
        elif current is not None and self._burst_est is not None:
            # After the first gate (the slow start, or a hold): the fit waits for the gate to
            # open (_settle); until then nothing is sent.
            if self._pending is None:
                self._pending = (opened, now, gate, current)
            self._ramp = None
            self._set_rate(current * rule.beta, now)
        else:
            # No estimate: slow start. The first stretch went at full speed, so what got
            # through it is the server's burst.
            if self._burst_est is None:
                self._burst_est = float(max(ok, 1))
                self._burst_since, self._burst_span = now - span, span
            start = rule.ramp_start(ok, span, gate)
            self._cut_beta = self._cut_recovery = None
            self._ramp = (start, reopen, gate)
            self._set_rate(start, now)

    def _ramp_to(self, now: float) -> None:
        assert self._bucket is not None
        assert self._ramp is not None
        start, since, gate = self._ramp
        self._bucket.set_rate(self._rule.ramp_rate(start, now - since, gate), now)

    def _grow(self, now: float) -> None:
        assert self._bucket is not None
        if self._ramp is not None:
            self._ramp_to(now)
            return
        measured = self._measure.rate(now)
        new_rate = self._rule.grow(
            self._w_max,
            now - self._last_cut,
            measured,
            self._bucket.rate,
            self._cut_beta,
            self._cut_recovery,
        )
        self._bucket.set_rate(new_rate, now)
