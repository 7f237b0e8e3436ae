"""Test mode for users' suites (``resilience.testing.set_testing``): no real waits, fewer attempts.

The middleware reads :data:`state` once per logical request; with test mode off that is one
attribute read.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from types import TracebackType

from ._decide import Decision
from ._store import Feedback, Signal

__all__ = ["TestMode", "set_testing", "state", "testing_mode"]


@dataclass(frozen=True, slots=True)
class TestMode:
    """What test mode changes in every middleware of the process."""

    __test__ = False  # not a pytest test class, whatever its name

    attempts: int | None = None
    """Replaces every middleware's ``max_attempts``; ``None``: keep each one's own."""
    waits: bool = False
    """``False``: no wait between attempts is slept (backoff, Retry-After, the park after a
    plan-limit 429), and no answer closes a rate gate or starts pacing."""

    def __post_init__(self) -> None:
        if self.attempts is not None and (
            isinstance(self.attempts, bool) or not isinstance(self.attempts, int)
        ):
            raise TypeError(f"attempts must be an int or None, got {self.attempts!r}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts!r}")
        if not isinstance(self.waits, bool):
            raise TypeError(f"waits must be a bool, got {self.waits!r}")


class _State:
    __slots__ = ("mode",)

    def __init__(self) -> None:
        self.mode: TestMode | None = None


state = _State()
"""The process's test mode; ``state.mode is None`` when it is off."""


class _Restore(AbstractContextManager["TestMode | None"]):
    """What ``set_testing`` returns: entering does nothing more, leaving restores the mode that
    was in force before the call."""

    __slots__ = ("_previous",)

    def __init__(self, previous: TestMode | None) -> None:
        self._previous = previous

    def __enter__(self) -> TestMode | None:
        return state.mode

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state.mode = self._previous


def set_testing(
    testing: bool = True, /, *, attempts: int | None = None, waits: bool = False
) -> AbstractContextManager[TestMode | None]:
    """Turn test mode on (or off with ``set_testing(False)``) for every middleware at once.

    In test mode no wait between attempts is slept unless ``waits=True``, and ``attempts``
    (if given) replaces every middleware's ``max_attempts``, so a test of code that uses the
    middleware runs its retries at once. ``max_elapsed`` still bounds each request.

    Call it once (e.g. in a session fixture), or use it as a context manager: leaving the
    ``with`` block restores the mode that was in force before::

        with set_testing(attempts=2):
            ...
    """
    if not isinstance(testing, bool):
        raise TypeError(f"testing must be a bool, got {testing!r}")
    mode = TestMode(attempts=attempts, waits=waits) if testing else None
    previous, state.mode = state.mode, mode
    return _Restore(previous)


def limits_feedback(mode: TestMode, feedback: Feedback) -> Feedback:
    """What the limits are told in test mode: without waits no answer closes a gate or starts
    pacing (the concurrency limit still learns: it bounds, it does not sleep)."""
    if mode.waits:
        return feedback
    if feedback.signal is Signal.RATE:
        return Feedback(Signal.OTHER)
    # An announced quota would hold sends until its reset: dropped like a gate.
    plain = feedback.gate is None and feedback.quota is None
    return feedback if plain else Feedback(feedback.signal)


def next_decision(mode: TestMode, decision: Decision) -> Decision:
    """What follows an attempt in test mode: the same, but without waits every wait is 0 s."""
    if mode.waits or not decision.delay:
        return decision
    return replace(decision, delay=0.0)


def testing_mode() -> TestMode | None:
    """The test mode in force, or ``None`` when it is off."""
    return state.mode
