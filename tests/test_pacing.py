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
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience._aligned import ALIGNED
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
    server: Server,
    jobs: int,
    *,
    horizon: float = 60.0,
    start: float = 0.0,
    max_rate: float = math.inf,
) -> tuple[float, int, int]:
    """Send ``jobs`` jobs through a pacer from virtual time ``start``; returns (time the last
    job succeeded, attempts, gates closed). In flight starts at 4 and grows by one per
    success, as the adaptive concurrency limit's slow start does (a rate 429 does not cut
    it). The client manages at most ``max_rate`` sends a second (a loaded loop), whatever the
    pacer allows."""
    clock = FakeClock(start)
    pacer = RatePacer(clock=clock)
    events: list[tuple[float, int, str, tuple[Any, ...]]] = []  # (time, tie, kind, payload)
    tie = 0
    waiting, done, attempts, gates, last, in_flight = jobs, 0, 0, 0, 0.0, 0
    free_at = start  # when the client can send again

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
            while (
                waiting
                and in_flight < 4 + done
                and t >= free_at
                and (not pacer.active or pacer.delay() <= 0)
            ):
                free_at = t + 1 / max_rate
                seq = pacer.take() if pacer.active else None
                waiting -= 1
                attempts += 1
                in_flight += 1
                push(t + RTT / 2, "decide", (seq, pacer.epoch))
            if waiting and in_flight < 4 + done:
                push(max(t + max(pacer.delay(), 1e-4), free_at), "send", ())
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


def until_429(sends: list[float], rate: float, burst: int) -> tuple[list[float], float]:
    """The sends a token bucket (full at 0) admits before it rejects its first, and that one."""
    tokens, last, out = float(burst), 0.0, list[float]()
    for t in sends:
        tokens = min(float(burst), tokens + (t - last) * rate)
        last = t
        if tokens < 1:
            return out, t
        tokens -= 1
        out.append(t)
    raise AssertionError("the sends never drew a 429")


def doubling(start: float, period: float, count: int, cap: float = math.inf) -> list[float]:
    """``count`` send times at a rate doubling every ``period`` s from ``start`` req/s, at most
    ``cap``."""
    t, out = 0.0, list[float]()
    while len(out) < count:
        out.append(t)
        rate = start * 2 ** min(t / period, 60.0)
        if rate >= cap:
            t += 1 / cap
        else:  # the next send one whole request of the growing rate later
            t += period * math.log2(1 + math.log(2) / (period * rate))
    return out


@pytest.mark.parametrize(("rate", "burst"), [(100.0, 10), (7.0, 3), (1000.0, 50), (100.0, 1)])
def test_a_fit_reads_the_servers_rate_from_a_slow_start(rate: float, burst: int) -> None:
    sends, _ = until_429(doubling(rate / 10, 0.1, 100_000), rate, burst)
    fit = PACING.fit(sends, 0.0, burst)
    assert fit is not None
    # The least rate that admits what was admitted: never above the server's, close to it
    # once the slow start drained more than a few of its burst.
    assert 0.7 * rate <= fit <= rate


def test_a_fit_reads_what_lagging_senders_sent_not_the_rate_they_were_allowed() -> None:
    # The pacer allowed a rate doubling without end; the senders managed 150/s at most (a
    # loaded loop, a fleet's shared schedule). What they sent still gives the server's 100/s.
    sends, _ = until_429(doubling(10.0, 0.1, 100_000, cap=150.0), 100.0, 10)
    assert PACING.fit(sends, 0.0, 10) == pytest.approx(100.0, rel=0.03)


def test_a_fit_of_a_stretch_held_above_the_rate_is_its_rate() -> None:
    sends, _ = until_429([i / 110 for i in range(1000)], 100.0, 10)
    assert PACING.fit(sends, 0.0, 10) == pytest.approx(100.0, rel=0.02)


def test_a_fit_needs_more_sends_than_the_burst() -> None:
    assert PACING.fit([0.0, 0.001, 0.002], 0.0, 5) is None
    assert PACING.fit([0.0, 0.0, 0.0], 0.0, 1) is None  # no rate admits these: burst misjudged


def test_a_fit_takes_the_first_stretchs_rate_out_of_its_burst() -> None:
    # 10 successes over the first 0.05 s: 5 of them came from the server's 100/s.
    sends, _ = until_429(doubling(10.0, 0.1, 100_000), 100.0, 5)
    assert PACING.fit_burst(sends, 0.0, 10.0, 0.05) == pytest.approx(100.0, rel=0.1)
    low = PACING.fit(sends, 0.0, 10.0)
    assert low is not None
    assert low < 80.0  # the burst taken as counted errs low


def test_the_ramp_doubles_every_gate_over_ramp_steps() -> None:
    assert PACING.ramp_rate(10.0, 0.0, 1.0) == 10.0
    assert PACING.ramp_rate(10.0, 1.0 / PACING.ramp_steps, 1.0) == pytest.approx(20.0)
    assert PACING.ramp_rate(10.0, 1e9, 1.0) == 10.0 * 2.0**20  # bounded


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


@pytest.mark.parametrize("max_rate", [130.0, 250.0, 400.0])
def test_whole_second_retry_after_from_a_lagging_client_costs_one_gate_more_at_most(
    max_rate: float,
) -> None:
    # The client cannot send as fast as the slow start allows: the rate is read from what it
    # sent, not from what the pacer allowed. Its first stretch is no burst either, so the
    # server's burst is read less well: the hold may be a little high and cost one more gate.
    last, attempts, gates = run_batch(token_bucket(100.0, 10, "seconds"), 300, max_rate=max_rate)
    assert gates <= 3
    assert last <= 2.1 * 2.9
    assert attempts <= 1.15 * 300


@pytest.mark.parametrize(("rate", "burst", "jobs"), [(20.0, 5, 300), (300.0, 10, 900)])
def test_whole_second_retry_after_stays_under_twice_the_floor_at_other_rates(
    rate: float, burst: int, jobs: int
) -> None:
    last, attempts, _ = run_batch(token_bucket(rate, burst, "seconds"), jobs, horizon=120.0)
    assert last <= 2.0 * (jobs - burst) / rate
    assert attempts <= 1.15 * jobs


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
    first, second = pacer.take(), pacer.take()
    assert pacer.quota_left == 0
    # Spent, but two sends are in flight: it looks again shortly, until their answers say.
    assert pacer.delay() == pytest.approx(ALIGNED.probe_poll)
    pacer.on_response(
        rate_limited=False, retry_after=None, epoch=0, quota=Quota(10, 1.0, 1, 0.5), seq=first
    )
    closed = pacer.on_response(
        rate_limited=False, retry_after=None, epoch=0, quota=Quota(10, 1.0, 0, 0.5), seq=second
    )
    assert closed  # the gate a spent quota closes, once nothing is in flight
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


def test_answers_that_reach_the_server_out_of_order_lose_no_quota() -> None:
    # Sends race to the server (across processes above all): send 2 is counted before
    # send 1. Reading the answer to send 1 as counting only the sends before it would
    # subtract send 2 twice; the count would hold 1 send of the window back for good.
    count = QuotaCount()
    count.answer(Quota(10, 1.0, 5, 1.0), seq=0, now=0.0)
    for seq in (1, 2, 3):
        count.take(0.0, seq)
    count.answer(Quota(10, 1.0, 3, 1.0), seq=1, now=0.01)  # 2 was counted first
    assert count.left == 1  # 3 less the two in flight (2 is counted, we cannot know yet)
    count.answer(Quota(10, 1.0, 4, 1.0), seq=2, now=0.01)  # overtaken: says too much
    assert count.left == 2  # the least remaining (3), less send 3 in flight
    count.answer(Quota(10, 1.0, 2, 1.0), seq=3, now=0.01)
    assert count.left == 2  # all answered: what the server says


def test_a_send_that_ended_without_an_answer_stays_spent_and_leaves_flight() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock=clock)
    pacer.on_response(rate_limited=False, retry_after=None, epoch=0, quota=Quota(9, 1.0, 2, 1))
    first, second = pacer.take(), pacer.take()
    pacer.on_response(
        rate_limited=False, retry_after=None, epoch=0, quota=Quota(9, 1.0, 1, 1), seq=first
    )
    assert pacer.quota_left == 0  # 1, less the send in flight
    assert pacer.delay() == pytest.approx(ALIGNED.probe_poll)  # its answer may give it back
    pacer.forget(second)  # a transport error: the server may have counted it
    assert pacer.quota_left == 0
    assert pacer.delay() == pytest.approx(1.0)  # nothing in flight: held to the reset
    pacer.forget(second)  # a release after that changes nothing
    assert pacer.quota_left == 0


def test_a_send_of_the_old_window_that_ends_unanswered_spends_nothing_of_the_new() -> None:
    count = QuotaCount()
    count.answer(Quota(10, 1.0, 5, 1.0), seq=0, now=0.0, counted=False)
    count.take(0.5, 1)  # in flight when the window rolls
    count.roll(1.0, sends=1)
    count.take(1.0, 2)
    count.take(1.0, 3)
    count.answer(Quota(10, 1.0, 8, 1.0), seq=3, now=1.01)  # counted after send 2
    assert count.left == 6  # 8, less sends 1 and 2 in flight (1 may count in this window)
    count.ended(1)  # a transport error: if counted, then in the old window
    count.answer(Quota(10, 1.0, 9, 1.0), seq=2, now=1.01)
    assert count.left == 8  # what the server says (not 7)


def test_an_answer_without_rate_limit_headers_counts_its_send_as_spent() -> None:
    pacer = RatePacer(clock=FakeClock())
    pacer.on_response(rate_limited=False, retry_after=None, epoch=0, quota=Quota(9, 1.0, 3, 1))
    first, _ = pacer.take(), pacer.take()
    assert pacer.quota_left == 1
    pacer.on_response(rate_limited=False, retry_after=None, epoch=0, seq=first)
    assert pacer.quota_left == 1  # it was counted by the server, not given back


def test_a_429_holds_its_window_whatever_later_answers_say() -> None:
    count = QuotaCount()
    count.answer(Quota(10, 1.0, 5, 1.0), seq=0, now=0.0)
    for seq in (1, 2):
        count.take(0.0, seq)
    count.ended(2)
    count.throttled(2)
    count.answer(Quota(10, 1.0, 4, 1.0), seq=1, now=0.01)  # counted before the 429
    assert count.left == 0
    assert count.spent()


def test_within_a_window_the_count_only_goes_down() -> None:
    count = QuotaCount()
    count.answer(Quota(10, None, 5, 1.0), seq=5, now=0.0)
    count.answer(Quota(10, None, 8, 1.0), seq=6, now=0.1)  # overtaken by later ones
    assert count.left == 5


def test_the_earliest_reset_named_in_a_window_wins() -> None:
    # Whole-second resets are rounded up: the earliest is the tightest.
    count = QuotaCount()
    count.answer(Quota(10, None, 5, 1.0), seq=1, now=0.0)
    count.answer(Quota(10, None, 4, 1.0), seq=2, now=0.3)
    assert count.reset_at == pytest.approx(1.0)


def test_answers_to_sends_before_a_reset_do_not_count_in_the_next_window() -> None:
    count = QuotaCount()
    count.answer(Quota(10, 1.0, 0, 0.5), seq=3, now=0.0)
    count.roll(0.6, sends=3)
    assert count.left == 10
    count.answer(Quota(10, 1.0, 0, 0.0), seq=3, now=0.6)  # late, from the old window
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
        seq = pacer.take()
        # spent while its answer is out (that answer would name the next reset)
        assert pacer.delay() == pytest.approx(ALIGNED.probe_poll)
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0, seq=seq)
    assert pacer.delay() == 0.0  # counted from the limit, but no reset named: never held


def test_with_no_window_announced_the_next_window_is_counted_from_the_limit() -> None:
    # No reset is predicted, but sends keep their numbers: the first answers of the new window
    # are corrected for the sends in flight (uncounted, they were read as the latest).
    count = QuotaCount()
    count.answer(Quota(10, None, 0, 0.5), seq=3, now=0.0)
    count.roll(0.6, sends=3)
    assert (count.left, count.reset_at) == (10, None)
    assert not count.spent()  # no reset named: our own count holds nothing
    for seq in range(4, 10):
        count.take(0.6, seq)
    count.answer(Quota(10, None, 9, 1.0), seq=4, now=0.61)  # 5 more in flight
    assert count.left == 4


def test_a_minute_window_is_still_predicted() -> None:
    count = QuotaCount()
    count.answer(Quota(10, 60.0, 0, 0.5), seq=1, now=0.0)
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


def slow_start_after_a_first_gate(clock: FakeClock) -> RatePacer:
    """A pacer that saw ten quick successes, then a whole-second 429 at 0.01 s."""
    pacer = RatePacer(clock=clock)
    for i in range(10):
        clock.now = i / 1000
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0)
    clock.now = 0.01
    pacer.on_response(rate_limited=True, retry_after=1.0, epoch=0)
    return pacer


def test_a_wait_in_the_slow_start_lasts_one_doubling_at_most() -> None:
    clock = FakeClock()
    pacer = slow_start_after_a_first_gate(clock)
    clock.now = 1.01  # the gate opens
    pacer.take()
    pacer.take()  # borrowed from the future at the slow start's first rate (10/s)
    assert pacer.delay() <= 1.0 / PACING.ramp_steps + 1e-9  # then it has doubled: look again


def test_after_a_gate_at_most_half_the_servers_burst_goes_at_once() -> None:
    clock = FakeClock()
    pacer = slow_start_after_a_first_gate(clock)
    sends = 0
    clock.now = 2.5  # long after the gate opened: the bucket had all the time to fill
    while pacer.delay() == 0:
        pacer.take()
        sends += 1
    assert sends <= PACING.burst_share * 10


def test_the_fit_waits_for_the_gate_to_open() -> None:
    clock = FakeClock()
    pacer = slow_start_after_a_first_gate(clock)
    server = token_bucket(100.0, 10, "seconds")
    clock.now = 1.01  # the gate opens: the slow start sends until the server says 429
    admitted = []
    while True:
        clock.now += pacer.delay()
        seq = pacer.take()
        ok, retry_after, _ = server(clock.now)
        if not ok:
            break
        admitted.append(clock.now)
        pacer.on_response(rate_limited=False, retry_after=None, epoch=1, seq=seq)
    cut = pacer.rate
    assert cut is not None
    assert pacer.on_response(rate_limited=True, retry_after=retry_after, epoch=1, seq=seq)
    assert pacer.rate == pytest.approx(cut * PACING.beta)  # a cut until the gate opens
    clock.now += 1.0
    pacer.delay()  # the gate is open: the fit is made before the first send
    fit = PACING.fit_burst(admitted, 1.01, 10.0, 0.01)  # 10 successes in the first 0.01 s
    assert fit is not None
    assert fit == pytest.approx(100.0, rel=0.1)
    assert pacer.rate == pytest.approx(PACING.hold * min(fit, cut))


# Steps of the property below: send one (if the count allows), let one send in transit reach
# the server, deliver one answer, or lose one send in transit (a transport error).
QUOTA_RACE = st.lists(
    st.tuples(st.sampled_from(["send", "arrive", "answer", "lose"]), st.integers(0, 10_000)),
    max_size=120,
)


def race(
    limit: int, used: int, steps: list[tuple[str, int]]
) -> tuple[QuotaCount, list[Any], int, bool]:
    """One window of ``limit``, ``used`` of it before our first answer, then our sends only:
    they reach the server and their answers come back in the order ``steps`` picks, and the
    rest in order at the end. Returns the count, the steps as ``test_redis_rules`` replays
    them through the Lua, the server's count, and whether a send was lost in transit."""
    count = QuotaCount()
    count.answer(Quota(limit, 10.0, limit - used, 10.0), seq=0, now=0.0, counted=False)
    replay: list[Any] = [("answer", 0.0, 0, limit - used, 10.0, limit, 10.0)]
    counted = used  # the server's count
    transit: list[int] = []  # sent, not yet at the server
    arrived: list[tuple[int, int]] = []  # at the server: (send, remaining it answered)
    seq, lost = 0, False

    def answer(send: int, remaining: int | None) -> None:
        count.answer(Quota(limit, 10.0, remaining, 10.0), seq=send, now=0.0)
        replay.append(("answer", 0.0, send, remaining, 10.0, limit, 10.0))

    for kind, pick in steps:
        if kind == "send" and not count.spent():
            seq += 1
            count.take(0.0, seq)
            replay.append(("take", 0.0))
            transit.append(seq)
        elif kind == "arrive" and transit:
            send = transit.pop(pick % len(transit))
            assert counted < limit, "the count let a send go past the quota"
            counted += 1
            arrived.append((send, limit - counted))
        elif kind == "answer" and arrived:
            answer(*arrived.pop(pick % len(arrived)))
        elif kind == "lose" and transit:
            answer(transit.pop(pick % len(transit)), None)  # no count read: it stays spent
            lost = True
    for send in transit:
        assert counted < limit, "the count let a send go past the quota"
        counted += 1
        arrived.append((send, limit - counted))
    for send, remaining in arrived:
        answer(send, remaining)
    return count, replay, counted, lost


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 30), used=st.integers(0, 30), steps=QUOTA_RACE)
def test_the_count_never_over_sends_and_loses_nothing_whatever_the_order(
    limit: int, used: int, steps: list[tuple[str, int]]
) -> None:
    # The count never lets more go than the server has left (no 429, asserted in race()), and
    # once every send is answered it says exactly what the server does.
    count, _, counted, lost = race(limit, min(used, limit), steps)
    assert count.left is not None
    if lost:
        assert count.left <= limit - counted  # a lost send may have been counted: never more
    else:
        assert count.left == limit - counted  # nothing held back for good
