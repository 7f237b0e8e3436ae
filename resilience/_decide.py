"""The retry decision: a pure function of one verdict and the request's history so far."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._classify import Verdict
from ._codes import Handling
from ._events import Outcome

__all__ = ["MAX_RETRY_AFTER", "Decision", "Progress", "decide"]

MAX_RETRY_AFTER: Final = 3600.0
"""With no ``max_elapsed``, a Retry-After longer than this gives up instead of sleeping."""

MAX_THROTTLES: Final = 1000
"""Throttled and not-ready attempts one logical request may make (on top of the deadline)."""

MIN_THROTTLE_WAIT: Final = 0.01
"""Floor of a throttle or poll wait (unless ``max_delay`` is lower): ``Retry-After: 0`` must
not become a busy loop."""


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    delay: float | None = None  # seconds to wait before the next attempt
    reason: str | None = None  # why the loop stops (give_up / fail)


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
    """Decide what follows an attempt. Budget withdrawal is left to the caller (it is stateful)."""
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

    if handling is Handling.CONCURRENCY_LIMIT and progress.deadline is not None:
        # Resent when one of our requests completes; the delay only bounds the park.
        # The park ends a little before the deadline, so the resend still starts within it.
        remaining = progress.deadline - progress.now - progress.throttle_floor
        if remaining <= progress.throttle_floor:
            return Decision(Outcome.GIVE_UP, reason="deadline")
        return Decision(outcome, delay=min(delay, remaining))
    if progress.deadline is None:
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            return Decision(Outcome.GIVE_UP, reason="retry_after_beyond_deadline")
    elif progress.now + delay >= progress.deadline:
        # Sleeping would end past max_elapsed: return what we have now, do not retry early.
        beyond = retry_after is not None and progress.now + retry_after >= progress.deadline
        return Decision(
            Outcome.GIVE_UP, reason="retry_after_beyond_deadline" if beyond else "deadline"
        )
    return Decision(outcome, delay=delay)
