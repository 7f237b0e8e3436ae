"""Every per-attempt rule: how an attempt ended, what it tells the limits, what follows.

``decide()`` is the pure core: one verdict and the request's progress in, one decision out.
:class:`RequestPolicy` is the one home of the rules around it for one logical request: which
attempts count, the two backoff schedules, resend safety, how long a ``Retry-After`` closes the
origin's gate, the retry budget, and the error raised when nothing could be sent in time. The
attempt loop (``_middleware.py``) only executes what it returns.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import aiohttp

from ._aiohttp_compat import IDEMPOTENT_METHODS, is_replayable
from ._attempt import Outcome
from ._classify import Verdict
from ._codes import Handling
from ._errors import CircuitOpen, DeadlineExceeded
from ._pacing import MAX_RETRY_AFTER
from ._quota import Quota
from ._store import Feedback, Signal

if TYPE_CHECKING:
    from ._middleware import Settings

__all__ = [
    "MAX_RETRY_AFTER",
    "Decision",
    "Ending",
    "Progress",
    "RequestPolicy",
    "Wait",
    "decide",
    "transport_ending",
]


MAX_THROTTLES: Final = 1000
"""Throttled and not-ready attempts one logical request may make (on top of the deadline)."""

MIN_THROTTLE_WAIT: Final = 0.01
"""Floor of a throttle or poll wait (unless ``max_delay`` is lower): ``Retry-After: 0`` must
not become a busy loop."""


class Wait(enum.Enum):
    """How the loop waits before the next attempt."""

    NONE = "none"  # no next attempt: return or raise
    SLEEP = "sleep"  # sleep ``delay`` (backoff, Retry-After, poll interval)
    PARK = "park"  # until one of our requests frees a permit, ``delay`` at most (plan limit)
    GATE = "gate"  # nothing here: the origin's gate, closed by the report, holds the next admit


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    delay: float | None = None  # seconds to wait before the next attempt
    reason: str | None = None  # why the loop stops (give_up / fail)
    wait: Wait = Wait.NONE


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a logical request stands when an attempt has ended."""

    failures: int  # attempts so far that count toward max_attempts (this one included)
    max_attempts: int
    now: float
    deadline: float | None
    replayable: bool  # can the body be sent again intact
    resend_safe: bool  # idempotent, keyed, or known not to have run on the server
    backoff_delay: float  # the schedule's next (jittered) wait, capped at max_delay
    throttles: int = 0  # throttled / not-ready attempts so far (this one included)
    throttle_floor: float = 0.0  # least throttle/poll wait: MIN_THROTTLE_WAIT, or max_delay if less


def decide(verdict: Verdict, progress: Progress) -> Decision:
    """Decide what follows an attempt. The budget is :class:`RequestPolicy`'s (it is stateful)."""
    handling = verdict.handling
    if handling is Handling.OK:
        return Decision(Outcome.OK)
    if handling is Handling.PERMANENT:
        return Decision(Outcome.FAIL, reason="not_retryable")
    if not progress.resend_safe:
        return Decision(Outcome.GIVE_UP, reason="not_idempotent")
    if not progress.replayable:
        return Decision(Outcome.GIVE_UP, reason="body_not_replayable")
    if progress.failures >= progress.max_attempts:
        return Decision(Outcome.GIVE_UP, reason="max_attempts")
    if progress.throttles >= MAX_THROTTLES:
        return Decision(Outcome.GIVE_UP, reason="max_throttles")

    retry_after = verdict.retry_after
    if handling is Handling.TRANSIENT:
        delay = progress.backoff_delay
        if retry_after is not None:
            delay = max(delay, retry_after)
        outcome = Outcome.RETRY
    else:
        # Throttles and polls: the server's time when it named one, else the schedule; never a
        # busy loop, whatever the server sends.
        delay = retry_after if retry_after else progress.backoff_delay
        delay = max(delay, progress.throttle_floor)
        outcome = Outcome.NOT_READY if handling is Handling.NOT_READY else Outcome.THROTTLED

    if handling is Handling.CONCURRENCY_LIMIT:
        wait = Wait.PARK  # resent when one of ours completes; the delay only bounds the park
    elif handling is Handling.RATE_LIMIT and retry_after is not None:
        wait = Wait.GATE  # the server named the time: the gate makes every sender wait it out
    else:
        wait = Wait.SLEEP
    if wait is Wait.PARK and progress.deadline is not None:
        # The park ends a little before the deadline, so the resend still starts within it.
        remaining = progress.deadline - progress.now - progress.throttle_floor
        if remaining <= progress.throttle_floor:
            return Decision(Outcome.GIVE_UP, reason="deadline")
        return Decision(outcome, delay=min(delay, remaining), wait=wait)
    if progress.deadline is None:
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            return Decision(Outcome.GIVE_UP, reason="retry_after_beyond_deadline")
    elif progress.now + delay >= progress.deadline:
        # Sleeping would end past max_elapsed: return what we have now, do not retry early.
        beyond = retry_after is not None and progress.now + retry_after >= progress.deadline
        return Decision(
            Outcome.GIVE_UP, reason="retry_after_beyond_deadline" if beyond else "deadline"
        )
    return Decision(outcome, delay=delay, wait=wait)


# ----------------------------------------------------------------------- how an attempt ended

# Transport errors raised before anything reached the server: a keyless POST may be resent.
_NOT_SENT: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_PERMANENT_TRANSPORT: Final = (aiohttp.ClientConnectorCertificateError, aiohttp.InvalidURL)
_TRANSIENT_TRANSPORT: Final = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)

# Statuses whose bare answer (no envelope from the table) says the request did not run: a
# gateway's 500/502/504 may hide a generation that did, so a keyless POST is not resent then.
_NOT_RUN_STATUSES: Final = frozenset({408, 425, 429, 503})

_SIGNALS: Final = {
    Handling.OK: Signal.SUCCESS,
    Handling.CONCURRENCY_LIMIT: Signal.CONCURRENCY,
    Handling.RATE_LIMIT: Signal.RATE,
    Handling.TRANSIENT: Signal.FAILURE,
}


@dataclass(frozen=True, slots=True)
class Ending:
    """How one sent attempt ended: an answer, or a transport error (response or not alike)."""

    verdict: Verdict
    not_run: bool = False  # the server cannot have run it (connect error, or it said so)
    stopped: str | None = None  # "timeout" / "cancelled": the caller ended it; never retried


OK_ENDING: Final = Ending(Verdict(Handling.OK))  # status and server id come off the response


def answer_ending(verdict: Verdict) -> Ending:
    """The ending of an attempt that got an answer."""
    return Ending(verdict, not_run=verdict.known_code or verdict.status in _NOT_RUN_STATUSES)


def transport_ending(exc: BaseException) -> Ending | None:
    """The ending of an attempt whose ``handler()`` raised; None when it is not ours to handle
    (a bug in another middleware, KeyboardInterrupt): that propagates unlogged."""
    error = type(exc).__name__
    # asyncio.TimeoutError: the builtin on 3.11+, its own class on 3.10 (aiohttp raises it).
    if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, aiohttp.ServerTimeoutError):
        return Ending(Verdict(Handling.PERMANENT, error=error), stopped="timeout")
    if isinstance(exc, asyncio.CancelledError):
        return Ending(Verdict(Handling.PERMANENT, error=error), stopped="cancelled")
    if not isinstance(exc, aiohttp.ClientError):
        return None
    retryable = isinstance(exc, _TRANSIENT_TRANSPORT) and not isinstance(exc, _PERMANENT_TRANSPORT)
    handling = Handling.TRANSIENT if retryable else Handling.PERMANENT
    return Ending(Verdict(handling, error=error), not_run=isinstance(exc, _NOT_SENT))


# ----------------------------------------------------------------------- the request's policy


class RequestPolicy:
    """The rules of one logical request, fed one ending at a time."""

    __slots__ = (
        "_body",
        "_delays",
        "_resend_safe",
        "_throttle_delays",
        "_throttle_floor",
        "deadline",
        "failures",
        "last",
        "settings",
        "throttles",
    )

    def __init__(
        self,
        settings: Settings,
        *,
        method: str,
        keyed: bool,
        body: object,
        start: float | None = None,
    ) -> None:
        self.settings = settings
        max_elapsed = settings.max_elapsed
        began = time.monotonic() if start is None else start  # when the logical request began
        self.deadline = began + max_elapsed if max_elapsed is not None else None
        self.failures = 0  # attempts that count toward max_attempts
        self.throttles = 0  # throttled and not-ready attempts
        self.last: Verdict | None = None  # the last answer's verdict, for errors and logs
        self._body = body
        self._resend_safe = method in IDEMPOTENT_METHODS or keyed
        self._throttle_floor = min(MIN_THROTTLE_WAIT, settings.backoff.max_delay)
        # Made on first need: most requests never wait.
        self._delays: Iterator[float] | None = None
        self._throttle_delays: Iterator[float] | None = None

    def feedback(self, ending: Ending, quota: Quota | None = None) -> Feedback | None:
        """What the attempt tells the limits; None when the caller stopped it (nothing to say,
        and no await may run in a cancelled task). ``quota``: what the answer announced."""
        if ending.stopped is not None:
            return None
        if quota is not None and quota.reset is not None:
            quota = replace(quota, reset=self._gate_for(quota.reset))
        verdict = ending.verdict
        if verdict is OK_ENDING.verdict:
            return _SUCCESS if quota is None else Feedback(Signal.SUCCESS, quota=quota)
        signal = _SIGNALS.get(verdict.handling, Signal.OTHER)
        code = None
        if signal is Signal.FAILURE:  # what CircuitOpen will name as the last failure
            code = verdict.code or verdict.error or f"HTTP {verdict.status}"
        return Feedback(signal, self._gate_for(verdict.retry_after), quota, code)

    def _gate_for(self, seconds: float | None) -> float | None:
        """How long a Retry-After or a spent quota may close the shared gate: one deadline
        (plus a second, so requests that cannot outlast it fail fast instead of sending at its
        very end). One absurd answer cannot block the origin for longer; then a request probes
        again."""
        if seconds is None:
            return None
        return min(seconds, (self.settings.max_elapsed or MAX_RETRY_AFTER) + 1.0)

    async def decide(self, ending: Ending, try_retry: Callable[[], Awaitable[bool]]) -> Decision:
        """What follows ``ending``; ``try_retry`` withdraws a retry from the store's budget."""
        verdict = ending.verdict
        if ending.stopped is not None:
            return Decision(Outcome.FAIL, reason=ending.stopped)
        self.last = verdict
        handling = verdict.handling
        if handling is Handling.OK:
            return _OK
        # Throttles and polls are the server pacing us: bounded by the deadline, not by
        # max_attempts; with no deadline they count, so nothing can loop forever.
        counts = handling in (Handling.TRANSIENT, Handling.PERMANENT)
        if counts or self.deadline is None:
            self.failures += 1
        if not counts:
            self.throttles += 1
        progress = Progress(
            failures=self.failures,
            max_attempts=self.settings.max_attempts,
            now=time.monotonic(),
            deadline=self.deadline,
            replayable=is_replayable(self._body),
            resend_safe=self._resend_safe or ending.not_run,
            throttles=self.throttles,
            throttle_floor=self._throttle_floor,
            # Failures and throttles/polls each walk their own schedule: a run of 429s does
            # not make the next failure's wait long.
            backoff_delay=self._next_delay(throttle=not counts),
        )
        decision = decide(verdict, progress)
        # Only retries of failures spend the budget; the server's own pacing never does.
        if decision.outcome is Outcome.RETRY and not await try_retry():
            return _BUDGET_SPENT
        return decision

    def _next_delay(self, *, throttle: bool) -> float:
        if throttle:
            if self._throttle_delays is None:
                self._throttle_delays = self.settings.backoff.delays()
            return next(self._throttle_delays)
        if self._delays is None:
            self._delays = self.settings.backoff.delays()
        return next(self._delays)

    def circuit_error(self, cause: CircuitOpen, *, request_id: str, attempts: int) -> CircuitOpen:
        """The error raised when the origin's breaker stays open past ``max_elapsed``."""
        return CircuitOpen(
            origin=cause.origin,
            retry_in=cause.retry_in,
            last_code=cause.last_code,
            request_id=request_id,
            attempts=attempts,
        )

    def deadline_error(
        self, cause: DeadlineExceeded, *, request_id: str, attempts: int
    ) -> DeadlineExceeded:
        """The error raised when no attempt could be admitted before ``max_elapsed``."""
        last = self.last
        return DeadlineExceeded(
            str(cause),
            request_id=request_id,
            attempts=attempts,
            last_status=last.status if last is not None else None,
            last_code=(last.code or last.error) if last is not None else None,
        )


_OK: Final = Decision(Outcome.OK)
OK_DECISION: Final = _OK
"""What follows a plain success (no quota announced): return it. The loop takes it, and reports
the success with ``Admission.succeeded()``, without asking the policy."""
_BUDGET_SPENT: Final = Decision(Outcome.GIVE_UP, reason="retry_budget")
_SUCCESS: Final = Feedback(Signal.SUCCESS)
SUCCESS_FEEDBACK: Final = _SUCCESS
DEADLINE_DECISION: Final = Decision(Outcome.GIVE_UP, reason="deadline")
CIRCUIT_OPEN_DECISION: Final = Decision(Outcome.GIVE_UP, reason="circuit_open")
"""The decision logged for an attempt refused by an open circuit breaker (unsent)."""
HELD_DECISION: Final = Decision(Outcome.HELD, reason="circuit_open")
"""The decision logged when an attempt waited unsent at the circuit breaker, before it is sent."""
CIRCUIT_ENDING: Final = Ending(Verdict(Handling.TRANSIENT, error="CircuitOpen"))
"""How an attempt held or refused at the circuit breaker is logged (it was not sent)."""
ACCOUNT_STOPPED_DECISION: Final = Decision(Outcome.FAIL, reason="account_stopped")
"""The decision logged for an attempt not sent because its credentials are stopped."""
"""The decision logged for an attempt that could not be admitted in time."""
