"""The cost-aware pacing rule and the announced quota, on a fake clock.

The batch tests run the real ``RatePacer`` against a simulated server (a token bucket or a
fixed window) in virtual time: a client with unlimited concurrency sends every job the pacer
lets go, the server decides each request half a round trip later and answers the other half
later. Nothing sleeps; the numbers are exact, not noisy.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from resilience._pacing import PACING, QuotaCount, RatePacer
from resilience._quota import Quota, parse_quota

RTT = 0.002
WALL = 1_700_000_000.0
"""The wall-clock time at virtual time 0 (a whole second: windows start at multiples)."""


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# A server: (time it decides) -> (admitted, Retry-After or None, quota announced or None);
# the quota as headers is read when the answer arrives, on the client's wall clock (WALL + t).
Announced = Quota | Mapping[str, str] | None
Server = Callable[[float], tuple[bool, float | None, Announced]]


def token_bucket(rate: float, burst: int, style: str) -> Server:
    state = {"tokens": float(burst), "stamp": 0.0}

    def decide(t: float) -> tuple[bool, float | None, Announced]:
        tokens = min(float(burst), state["tokens"] + (t - state["stamp"]) * rate)
        state["stamp"] = t
        if tokens >= 1:
            state["tokens"] = tokens - 1
            return True, None, None
        state["tokens"] = tokens
        wait = (1 - tokens) / rate
        return False, (max(1, math.ceil(wait)) if style == "seconds" else wait), None

    return decide


def fixed_window(limit: int, window: float, phase: float) -> Server:
    """Windows start at multiples of ``window`` on a clock ``phase`` s ahead of ours; the reset
    is announced exactly (a Unix-time reset)."""
    state = {"index": -1, "used": 0}

    def decide(t: float) -> tuple[bool, float | None, Announced]:
        index = math.floor((t + phase) / window)
        if index != state["index"]:
            state["index"], state["used"] = index, 0
        reset = (index + 1) * window - (t + phase)
        admitted = state["used"] < limit
        state["used"] += admitted
        quota = Quota(limit, None, limit - state["used"], reset)
        return admitted, (None if admitted else max(1, math.ceil(reset))), quota

    return decide


def run_batch(
    server: Server, jobs: int, *, horizon: float = 60.0, start: float = 0.0
) -> tuple[float, int, int]:
    """Send ``jobs`` jobs through a pacer from virtual time ``start``; returns (time the last
    job succeeded, attempts, gates closed). In flight starts at 4 and grows by one per
    success, as the adaptive concurrency limit's slow start does (a rate 429 does not cut
    it)."""
    clock = FakeClock(start)
    pacer = RatePacer(clock=clock)
    events: list[tuple[float, int, str, tuple[Any, ...]]] = []  # (time, tie, kind, payload)
    tie = 0
    waiting, done, attempts, gates, last, in_flight = jobs, 0, 0, 0, 0.0, 0

    def push(t: float, kind: str, payload: tuple[Any, ...]) -> None:
        nonlocal tie
        tie += 1
        heapq.heappush(events, (t, tie, kind, payload))

    push(start, "send", ())
    while events and done < jobs:
        t, _, kind, payload = heapq.heappop(events)
        assert t < horizon, "the batch did not finish"
        clock.now = t
        if kind == "send":
            while waiting and in_flight < 4 + done and (not pacer.active or pacer.delay() <= 0):
                seq = pacer.take() if pacer.active else None
                waiting -= 1
                attempts += 1
                in_flight += 1
                push(t + RTT / 2, "decide", (seq, pacer.epoch))
            if waiting and in_flight < 4 + done:
                push(t + max(pacer.delay(), 1e-4), "send", ())
        elif kind == "decide":
            seq, epoch = payload
            push(t + RTT / 2, "answer", (seq, epoch, *server(t)))
        else:
            seq, epoch, admitted, retry_after, quota = payload
            if isinstance(quota, Mapping):
                quota = parse_quota(quota, now=WALL + t)
            in_flight -= 1
            if pacer.on_response(
                rate_limited=not admitted,
                retry_after=retry_after,
                epoch=epoch,
                quota=quota,
                seq=seq,
            ):
                gates += 1
            if admitted:
                done += 1
                last = t
            else:
                waiting += 1
            push(t, "send", ())
    return last, attempts, gates


# ---------------------------------------------------------------- the rule's pieces


@pytest.mark.parametrize(("rate", "x"), [(100.0, 2.66), (100.0, 1.3), (7.0, 5.0), (1000.0, 1.05)])
def test_ramp_limit_recovers_the_rate_the_slow_start_crossed(rate: float, x: float) -> None:
    gate = 1.0
    period = gate / PACING.ramp_steps
    burst = rate * period * ((x - 1) / math.log(2) - math.log2(x))
    assert PACING.ramp_limit(x * rate, gate, burst) == pytest.approx(rate, rel=1e-6)


def test_ramp_limit_of_a_burst_the_ramp_cannot_have_drained_is_the_ramp() -> None:
    assert PACING.ramp_limit(50.0, 1.0, 1e6) == 50.0
    assert PACING.ramp_limit(50.0, 1.0, 0.0) == 50.0


def test_the_ramp_doubles_every_gate_over_ramp_steps() -> None:
    assert PACING.ramp_rate(10.0, 0.0, 1.0) == 10.0
    assert PACING.ramp_rate(10.0, 1.0 / PACING.ramp_steps, 1.0) == pytest.approx(20.0)
    assert PACING.ramp_rate(10.0, 1e9, 1.0) == 10.0 * 2.0**20  # bounded


def test_a_held_fit_needs_a_long_enough_stretch() -> None:
    assert PACING.held_fit(110, 1.0, 1.0, 10.0, 120.0) == pytest.approx(100.0)
    assert PACING.held_fit(20, 0.1, 1.0, 10.0, 120.0) is None  # shorter than fit_min_span gates
    assert PACING.held_fit(5, 1.0, 1.0, 10.0, 120.0) is None  # fewer than the burst


def test_only_gates_of_a_quarter_second_or_more_are_costly() -> None:
    assert not PACING.costly(None)
    assert not PACING.costly(0.01)
    assert PACING.costly(PACING.costly_gate)
    assert PACING.costly(1.0)


# ---------------------------------------------------------------- whole batches, virtual time


def test_whole_second_retry_after_is_paid_about_twice_not_once_a_second() -> None:
    # 300 jobs at 100/s, burst 10: floor 2.9 s. The first Retry-After: 1 costs a second; the
    # slow start that finds the rate costs about one more.
    last, attempts, gates = run_batch(token_bucket(100.0, 10, "seconds"), 300)
    assert gates <= 3
    assert last <= 2.0 * 2.9
    assert attempts <= 1.15 * 300


def test_millisecond_retry_after_keeps_botocores_cheap_probing() -> None:
    last, attempts, _ = run_batch(token_bucket(100.0, 10, "ms"), 300)
    assert last <= 1.1 * 2.9
    assert attempts <= 1.15 * 300


@pytest.mark.parametrize("phase", [0.05, 0.4, 0.7])
def test_an_announced_fixed_window_is_used_whole_without_429s(phase: float) -> None:
    # 100 per second: the last of 300 jobs is admitted at the start of the third window.
    floor = 2.0 - phase
    last, attempts, gates = run_batch(fixed_window(100, 1.0, phase), 300)
    assert last <= floor + 0.3
    assert attempts <= 1.03 * 300
    assert gates <= 3


# ---------------------------------------------------------------- the pacer, step by step


def test_a_spent_quota_holds_sends_until_its_reset() -> None:
    clock = FakeClock(5.0)
    pacer = RatePacer(clock=clock)
    assert not pacer.on_response(
        rate_limited=False, retry_after=None, epoch=0, quota=Quota(10, 1.0, 2, 0.5)
    )
    assert pacer.active
    assert pacer.quota_left == 2
    assert pacer.delay() == 0
    pacer.take()
    pacer.take()
    assert pacer.quota_left == 0
    assert pacer.delay() == pytest.approx(0.5)
    clock.now = 5.5  # the reset: the whole quota again
    assert pacer.delay() == 0
    assert pacer.quota_left == 10
    assert pacer.rate is None  # a quota is no reason to pace


def test_an_answer_saying_nothing_remains_holds_and_reports_the_gate() -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock)
    closed = pacer.on_response(
        rate_limited=False, retry_after=None, epoch=0, quota=Quota(5, None, 0, 2.0)
    )
    assert closed
    assert pacer.delay() == pytest.approx(2.0)


def test_sends_after_the_answer_are_taken_from_what_it_says_remains() -> None:
    pacer = RatePacer(clock=FakeClock())
    pacer.on_response(rate_limited=False, retry_after=None, epoch=0, quota=Quota(9, None, 9, 1))
    first = pacer.take()
    for _ in range(3):
        pacer.take()
    # The answer to the first send: the server counted it, not the three after it.
    pacer.on_response(
        rate_limited=False, retry_after=None, epoch=0, quota=Quota(9, None, 7, 1), seq=first
    )
    assert pacer.quota_left == 4


def test_within_a_window_the_count_only_goes_down() -> None:
    count = QuotaCount()
    count.answer(Quota(10, None, 5, 1.0), seq=5, sends=5, now=0.0)
    count.answer(Quota(10, None, 8, 1.0), seq=6, sends=6, now=0.1)  # overtaken by later ones
    assert count.left == 5


def test_the_earliest_reset_named_in_a_window_wins() -> None:
    # Whole-second resets are rounded up: the earliest is the tightest.
    count = QuotaCount()
    count.answer(Quota(10, None, 5, 1.0), seq=1, sends=1, now=0.0)
    count.answer(Quota(10, None, 4, 1.0), seq=2, sends=2, now=0.3)
    assert count.reset_at == pytest.approx(1.0)


def test_answers_to_sends_before_a_reset_do_not_count_in_the_next_window() -> None:
    count = QuotaCount()
    count.answer(Quota(10, 1.0, 0, 0.5), seq=3, sends=3, now=0.0)
    count.roll(0.6, sends=3)
    assert count.left == 10
    count.answer(Quota(10, 1.0, 0, 0.0), seq=3, sends=3, now=0.6)  # late, from the old window
    assert count.left == 10
    assert count.reset_at == pytest.approx(1.5)  # the next window, from the announced length


def test_a_long_window_is_not_predicted_so_our_own_count_cannot_hold_the_origin() -> None:
    # One answer announcing a year-long window, then answers with no rate-limit header: after
    # the announced reset, our own sends must not count down to a hold of a year.
    clock = FakeClock()
    pacer = RatePacer(clock=clock)
    pacer.on_response(
        rate_limited=False, retry_after=None, epoch=0, quota=Quota(1, 31_536_000.0, 0, 1.0)
    )
    assert pacer.delay() == pytest.approx(1.0)  # spent until the reset the answer named
    clock.now = 2.0
    for _ in range(5):
        assert pacer.delay() == 0.0
        pacer.take()
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0)
    assert pacer.delay() == 0.0  # counted from the limit, but no reset named: never held


def test_with_no_window_announced_the_next_window_is_counted_from_the_limit() -> None:
    # No reset is predicted, but sends keep their numbers: the first answers of the new window
    # are corrected for the sends in flight (uncounted, they were read as the latest).
    count = QuotaCount()
    count.answer(Quota(10, None, 0, 0.5), seq=3, sends=3, now=0.0)
    count.roll(0.6, sends=3)
    assert (count.left, count.reset_at) == (10, None)
    assert not count.spent()  # no reset named: our own count holds nothing
    count.answer(Quota(10, None, 9, 1.0), seq=4, sends=9, now=0.61)  # 5 more in flight
    assert count.left == 4


def test_a_minute_window_is_still_predicted() -> None:
    count = QuotaCount()
    count.answer(Quota(10, 60.0, 0, 0.5), seq=1, sends=1, now=0.0)
    count.roll(0.6, sends=1)
    assert count.left == 10
    assert count.reset_at == pytest.approx(60.5)


def test_a_send_that_did_not_go_gives_its_quota_back() -> None:
    pacer = RatePacer(clock=FakeClock())
    pacer.on_response(rate_limited=False, retry_after=None, epoch=0, quota=Quota(3, None, 1, 1))
    pacer.take()
    assert pacer.delay() > 0
    pacer.untake()
    assert pacer.delay() == 0
    assert pacer.quota_left == 1


def test_a_429_while_counting_a_quota_holds_without_discovering_a_rate() -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock)
    pacer.on_response(rate_limited=False, retry_after=None, epoch=0, quota=Quota(10, 1.0, 4, 0.4))
    assert pacer.on_response(rate_limited=True, retry_after=1.0, epoch=0)
    assert pacer.rate is None
    assert pacer.quota_left == 0
    assert pacer.delay() == pytest.approx(1.0)  # the 429's own gate is honoured


def test_an_announced_rate_is_held_flat_after_a_costly_429() -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock)
    pacer.on_response(rate_limited=False, retry_after=None, epoch=0, quota=Quota(50, 1.0))
    assert pacer.on_response(rate_limited=True, retry_after=1.0, epoch=0)
    assert pacer.rate == pytest.approx(50.0)
    for i in range(200):
        clock.now = 1.0 + i / 50
        pacer.on_response(rate_limited=False, retry_after=None, epoch=1)
    assert pacer.rate == pytest.approx(50.0, rel=1e-3)


def test_the_first_costly_429_starts_a_slow_start_from_what_got_through_per_gate() -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock)
    for i in range(12):
        clock.now = i / 1000
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0)
    pacer.on_response(rate_limited=True, retry_after=1.0, epoch=0)
    assert pacer.rate == pytest.approx(12.0)  # 12 successes per 1 s gate
    clock.now = 1.011 + 3 / PACING.ramp_steps  # the gate opened at 1.011
    pacer.on_response(rate_limited=False, retry_after=None, epoch=1)
    assert pacer.rate == pytest.approx(12.0 * 8, rel=1e-6)
