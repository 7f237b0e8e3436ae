"""The breaker's pure rule on a fake clock: window, trip, growing break, one probe, slow start."""

from __future__ import annotations

import pytest

from resilience._breaker import (
    Breaker,
    BreakerState,
    CircuitBreaker,
    Hold,
    Pass,
    Ramp,
    Refuse,
    Tally,
    Window,
)

SETTINGS = CircuitBreaker(
    failure_ratio=0.5,
    minimum_throughput=4,
    sampling_duration=10.0,
    break_duration=1.0,
    break_growth=2.0,
    max_break_duration=4.0,
    probe_timeout=30.0,
)


def send(breaker: Breaker, now: float, deadline: float | None = None) -> Pass:
    decision = breaker.admit(now, deadline)
    assert isinstance(decision, Pass), decision
    return decision


def fail_n(breaker: Breaker, n: int, now: float, code: str = "DISPATCH_TIMEOUT") -> None:
    for _ in range(n):
        breaker.record(send(breaker, now), Tally.FAILURE, now, code)


def opened(now: float = 0.0) -> Breaker:
    breaker = Breaker(SETTINGS)
    fail_n(breaker, SETTINGS.minimum_throughput, now)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_default_settings_are_documented_values() -> None:
    settings = CircuitBreaker()
    assert (settings.failure_ratio, settings.minimum_throughput) == (0.5, 10)
    assert (settings.sampling_duration, settings.break_duration) == (10.0, 1.0)
    assert (settings.break_growth, settings.max_break_duration) == (2.0, 10.0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"failure_ratio": 0}, ValueError),
        ({"failure_ratio": 1.5}, ValueError),
        ({"failure_ratio": "0.5"}, TypeError),
        ({"minimum_throughput": 0}, ValueError),
        ({"minimum_throughput": 2.5}, TypeError),
        ({"minimum_throughput": True}, TypeError),
        ({"sampling_duration": float("inf")}, ValueError),
        ({"break_duration": -1}, ValueError),
        ({"break_growth": 0.5}, ValueError),
        ({"max_break_duration": 0.5}, ValueError),
        ({"probe_timeout": float("nan")}, ValueError),
    ],
)
def test_bad_settings_are_rejected_with_a_clear_error(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match="CircuitBreaker"):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        CircuitBreaker().failure_ratio = 0.9  # type: ignore[misc]


def test_does_not_open_below_minimum_throughput() -> None:
    breaker = Breaker(SETTINGS)
    fail_n(breaker, SETTINGS.minimum_throughput - 1, 0.0)
    assert breaker.state is BreakerState.CLOSED


def test_opens_when_ratio_of_outage_failures_is_reached() -> None:
    breaker = Breaker(SETTINGS)
    for _ in range(2):
        breaker.record(send(breaker, 0.0), Tally.SUCCESS, 0.0)
    fail_n(breaker, 1, 0.0)
    assert breaker.window.counts(0.0) == (3, 1)  # 1 of 3: too few, too low
    assert breaker.state is BreakerState.CLOSED
    fail_n(breaker, 1, 0.0, code="GENERATION_TIMEOUT")
    assert breaker.admit(0.5, None) == Hold(1.0)  # 2 of 4 = 0.5: open for the first break
    assert breaker.last_code == "GENERATION_TIMEOUT"


def test_successes_keep_it_closed_under_the_ratio() -> None:
    breaker = Breaker(SETTINGS)
    for i in range(100):
        tally = Tally.FAILURE if i % 4 == 1 else Tally.SUCCESS
        breaker.record(send(breaker, i * 0.01), tally, i * 0.01)
    assert breaker.state is BreakerState.CLOSED


def test_throttles_and_polls_are_not_counted_at_all() -> None:
    breaker = Breaker(SETTINGS)
    for _ in range(50):
        breaker.record(send(breaker, 0.0), Tally.NEUTRAL, 0.0)
    assert breaker.window.counts(0.0) == (0, 0)
    fail_n(breaker, 3, 0.0)
    assert breaker.state is BreakerState.CLOSED  # 3 failures < minimum throughput of 4


def test_failures_slide_out_of_the_sampling_window() -> None:
    breaker = Breaker(SETTINGS)
    fail_n(breaker, 3, 0.0)
    fail_n(breaker, 1, 10.5)  # the first three are older than 10 s by now
    assert breaker.state is BreakerState.CLOSED
    assert breaker.window.counts(10.5) == (1, 1)


def test_window_counts_only_recent_buckets() -> None:
    window = Window(10.0)
    window.add(0.0, failure=True)
    window.add(5.0, failure=False)
    assert window.counts(5.0) == (2, 1)
    assert window.counts(10.5) == (1, 0)
    assert window.counts(100.0) == (0, 0)
    window.add(100.0, failure=True)
    assert window.counts(100.0) == (1, 1)


def test_open_breaker_holds_requests_that_can_outlast_the_break() -> None:
    breaker = opened(now=0.0)
    assert breaker.admit(0.5, deadline=30.0) == Hold(1.0)
    assert breaker.admit(0.5, deadline=None) == Hold(1.0)


def test_open_breaker_refuses_requests_that_cannot_outlast_the_break() -> None:
    breaker = opened(now=0.0)
    assert breaker.admit(0.5, deadline=0.9) == Refuse(probe_at=1.0, last_code="DISPATCH_TIMEOUT")


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = opened(now=0.0)
    probe = send(breaker, 1.0, deadline=30.0)
    assert probe.probe
    assert breaker.state is BreakerState.HALF_OPEN
    for _ in range(100):
        assert isinstance(breaker.admit(1.1, deadline=30.0), Hold)


def test_probe_success_closes_and_resets_window_and_growth() -> None:
    breaker = opened(now=0.0)
    probe = send(breaker, 1.0)
    assert breaker.record(probe, Tally.SUCCESS, 1.2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.window.counts(1.2) == (0, 0)
    fail_n(breaker, 4, 2.0)
    assert breaker.probe_at == pytest.approx(3.0)  # the first break again, not a grown one


def test_probe_failure_reopens_with_a_growing_capped_break() -> None:
    breaker = opened(now=0.0)
    breaks = []
    now = 0.0
    for _ in range(5):
        now = breaker.probe_at
        probe = send(breaker, now)
        breaker.record(probe, Tally.FAILURE, now, "DISPATCH_TIMEOUT")
        assert breaker.state is BreakerState.OPEN
        breaks.append(breaker.probe_at - now)
    assert breaks == pytest.approx([2.0, 4.0, 4.0, 4.0, 4.0])


def test_neutral_probe_answer_lets_the_next_request_probe() -> None:
    breaker = opened(now=0.0)
    probe = send(breaker, 1.0)
    breaker.record(probe, Tally.NEUTRAL, 1.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert send(breaker, 1.1).probe


def test_abandoned_probe_frees_the_slot() -> None:
    breaker = opened(now=0.0)
    probe = send(breaker, 1.0)
    assert breaker.abandon(probe)
    assert send(breaker, 1.0).probe


def test_probe_that_never_answers_lapses_after_probe_timeout() -> None:
    breaker = opened(now=0.0)
    send(breaker, 1.0)
    assert breaker.admit(5.0, None) == Hold(31.0)
    assert send(breaker, 31.0).probe


def test_results_sent_before_the_breaker_opened_do_not_count_after() -> None:
    breaker = Breaker(SETTINGS)
    breaker.record(send(breaker, 0.0), Tally.SUCCESS, 0.0)
    stale = send(breaker, 0.0)
    fail_n(breaker, 3, 0.0)
    probe = send(breaker, 1.0)
    breaker.record(probe, Tally.SUCCESS, 1.0)
    breaker.record(stale, Tally.FAILURE, 1.1)  # came back late, from before the outage ended
    assert breaker.window.counts(1.1) == (0, 0)


def test_a_huge_break_growth_cannot_overflow() -> None:
    settings = CircuitBreaker(break_growth=1e200, max_break_duration=10.0)
    assert settings.break_for(3) == 10.0
    assert settings.break_for(1000) == 10.0


def test_huge_number_of_failed_probes_does_not_overflow() -> None:
    settings = CircuitBreaker(max_break_duration=60.0)
    assert settings.break_for(10_000) == 60.0
    assert settings.break_for(1) == settings.break_duration


def test_ramp_doubles_per_round_trip_and_ends_at_the_pre_outage_peak() -> None:
    ramp = Ramp()
    for _ in range(16):
        ramp.sent()
    for _ in range(16):
        ramp.ended(Tally.FAILURE)
    ramp.start()
    sent_per_round = []
    while ramp.cap is not None:
        batch = 0
        while ramp.may_send():
            ramp.sent()
            batch += 1
        sent_per_round.append(batch)
        for _ in range(batch):
            ramp.ended(Tally.SUCCESS)
    assert sent_per_round == [2, 4, 8, 16]
    assert ramp.may_send()


def test_ramp_does_not_grow_on_outage_failures() -> None:
    ramp = Ramp()
    ramp.start()
    ramp.sent()
    ramp.sent()
    assert not ramp.may_send()
    ramp.ended(Tally.FAILURE)
    ramp.sent()
    assert not ramp.may_send()
    assert ramp.cap == 2


def test_with_only_failures_so_far_no_more_are_sent_than_the_breaker_needs() -> None:
    breaker = Breaker(SETTINGS)
    first = send(breaker, 0.0)
    in_flight = [send(breaker, 0.0) for _ in range(5)]
    assert breaker.record(first, Tally.FAILURE, 0.0, "DISPATCH_TIMEOUT") is False
    # One failure and five in flight: if they all fail, the breaker opens (4 needed). Held
    # until that failure leaves the window (10 s in 10 buckets), or an answer wakes it.
    assert breaker.admit(0.0, None) == Hold(10.0)
    assert breaker.record(in_flight[0], Tally.SUCCESS, 0.0) is True  # wake the held one
    assert isinstance(breaker.admit(0.0, None), Pass)


def test_a_hold_for_failures_only_ends_when_they_leave_the_window() -> None:
    # The failures age out while the slow attempt is still in flight (nothing wakes the held
    # request then): the hold names that moment, and the request goes at it.
    breaker = Breaker(SETTINGS)
    slow = send(breaker, 0.0)
    for ticket in [send(breaker, 0.2) for _ in range(3)]:
        breaker.record(ticket, Tally.FAILURE, 0.2, "DISPATCH_TIMEOUT")
    hold = breaker.admit(0.3, None)
    assert hold == Hold(10.0)
    assert isinstance(breaker.admit(10.0, None), Pass)
    assert slow.probe is False


def test_no_success_rule_does_not_hold_healthy_traffic() -> None:
    breaker = Breaker(SETTINGS)
    ok = send(breaker, 0.0)
    breaker.record(ok, Tally.SUCCESS, 0.0)
    tickets = [send(breaker, 0.0) for _ in range(100)]
    breaker.record(tickets[0], Tally.FAILURE, 0.0)
    assert isinstance(breaker.admit(0.0, None), Pass)


def test_outage_from_the_start_sends_exactly_minimum_throughput() -> None:
    breaker = Breaker(SETTINGS)
    in_flight: list[Pass] = []
    sent = 0
    while breaker.state is BreakerState.CLOSED:
        # Three callers at a time (the concurrency limit); answers come back oldest first.
        while len(in_flight) < 3 and isinstance(decision := breaker.admit(0.0, None), Pass):
            in_flight.append(decision)
            sent += 1
        breaker.record(in_flight.pop(0), Tally.FAILURE, 0.0)
    assert sent == SETTINGS.minimum_throughput


def test_pass_now_answers_as_admit_while_healthy_and_defers_to_it_otherwise() -> None:
    """The happy path's shortcut: the same Pass (and count in flight) as ``admit`` while no
    failure can be counted; None, so admit decides, once one might be."""
    fast, slow = Breaker(SETTINGS), Breaker(SETTINGS)
    for now in (0.0, 0.3, 4.0):
        assert fast.pass_now(now) == send(slow, now)
    for breaker in (fast, slow):
        for _ in range(3):
            breaker.record(breaker._pass, Tally.SUCCESS, 4.0)
    fail_n(fast, 1, 5.0)
    assert fast.pass_now(5.1) is None  # a failure in the window: admit decides
    assert fast.pass_now(5.0 + fast.window.memory - 0.01) is None
    assert fast.pass_now(5.0 + fast.window.memory) == Pass(probe=False, epoch=0)
    opened_breaker = opened()
    assert opened_breaker.pass_now(0.1) is None


def test_successes_in_one_bucket_count_as_adding_them_one_by_one() -> None:
    quick, plain = Window(10.0), Window(10.0)
    for now in (0.0, 0.2, 0.99, 1.0, 1.5, 12.0, 11.0, 30.0):
        quick.add_success(now)
        plain.add(now, failure=False)
        assert quick.counts(now) == plain.counts(now), now
