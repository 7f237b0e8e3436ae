from __future__ import annotations

import pytest

from resilience import Handling, Outcome
from resilience._classify import Verdict
from resilience._decide import MAX_RETRY_AFTER, Progress, decide


def progress(**overrides: object) -> Progress:
    base: dict[str, object] = {
        "failures": 1,
        "max_attempts": 5,
        "now": 100.0,
        "deadline": 160.0,
        "replayable": True,
        "resend_safe": True,
        "backoff_delay": 0.5,
    }
    base.update(overrides)
    return Progress(**base)  # type: ignore[arg-type]


def test_non_retryable_fails_at_once() -> None:
    d = decide(Verdict(Handling.PERMANENT, status=502), progress())
    assert (d.outcome, d.delay, d.reason) == (Outcome.FAIL, None, "not_retryable")


def test_transient_retries_after_the_backoff_delay() -> None:
    d = decide(Verdict(Handling.TRANSIENT, status=503), progress())
    assert (d.outcome, d.delay) == (Outcome.RETRY, 0.5)


def test_retry_after_lifts_the_wait() -> None:
    d = decide(Verdict(Handling.TRANSIENT, status=503, retry_after=7.0), progress())
    assert d.delay == 7.0
    d = decide(Verdict(Handling.TRANSIENT, status=503, retry_after=0.1), progress())
    assert d.delay == 0.5


def test_retry_after_past_the_deadline_gives_up_now() -> None:
    d = decide(Verdict(Handling.TRANSIENT, status=503, retry_after=61.0), progress())
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "retry_after_beyond_deadline")
    d = decide(Verdict(Handling.RATE_LIMIT, status=429, retry_after=61.0), progress())
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "retry_after_beyond_deadline")


def test_backoff_past_the_deadline_gives_up() -> None:
    d = decide(Verdict(Handling.TRANSIENT, status=503), progress(now=159.8))
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "deadline")


def test_attempts_are_bounded() -> None:
    d = decide(Verdict(Handling.TRANSIENT, status=503), progress(failures=5))
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "max_attempts")


def test_unreplayable_body_is_not_resent() -> None:
    d = decide(Verdict(Handling.TRANSIENT, status=503), progress(replayable=False))
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "body_not_replayable")


def test_transport_error_on_unsafe_request_is_not_resent() -> None:
    verdict = Verdict(Handling.TRANSIENT, error="ServerDisconnectedError")
    d = decide(verdict, progress(resend_safe=False))
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "not_idempotent")


def test_not_ready_polls_with_retry_after() -> None:
    d = decide(Verdict(Handling.NOT_READY, status=425, retry_after=2.0), progress())
    assert (d.outcome, d.delay) == (Outcome.NOT_READY, 2.0)


@pytest.mark.parametrize("handling", [Handling.CONCURRENCY_LIMIT, Handling.RATE_LIMIT])
def test_throttles_are_throttled_not_retried(handling: Handling) -> None:
    d = decide(Verdict(handling, status=429), progress())
    assert d.outcome is Outcome.THROTTLED


def test_concurrency_park_is_clipped_to_the_deadline() -> None:
    d = decide(Verdict(Handling.CONCURRENCY_LIMIT, status=429), progress(now=159.9))
    assert d.outcome is Outcome.THROTTLED
    assert d.delay == pytest.approx(0.1)
    d = decide(Verdict(Handling.CONCURRENCY_LIMIT, status=429), progress(now=160.0))
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "deadline")


def test_without_deadline_a_huge_retry_after_gives_up() -> None:
    verdict = Verdict(Handling.TRANSIENT, status=503, retry_after=MAX_RETRY_AFTER + 1)
    d = decide(verdict, progress(deadline=None))
    assert (d.outcome, d.reason) == (Outcome.GIVE_UP, "retry_after_beyond_deadline")
