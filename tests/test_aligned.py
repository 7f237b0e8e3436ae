"""Whole-second delta resets placed by wall-clock alignment, verified by one probe.

The rule's judgement of one answer (a table), the quota count step by step, and whole batches
on a fake clock against a simulated fixed window that announces itself with the emulator's own
header writer, read by our parser: aligned, not aligned, and with the clocks skewed.
"""

from __future__ import annotations

import math
from email.utils import formatdate

import pytest

from resilience._aligned import ALIGNED, Alignment
from resilience._pacing import QuotaCount
from resilience._quota import Quota, parse_quota
from resilience.testing._ratelimit import quota_headers
from tests.test_pacing import WALL, Announced, Server, run_batch

SKEW = ALIGNED.skew

# ---------------------------------------------------------------- one answer

JUDGED: list[tuple[str, float, int, float | None, float | None, float | None, bool]] = [
    # (case, wall, reset, window, Date, seconds to the aligned boundary, contradicts)
    ("1 s window, mid-second", 100.4, 1, 1.0, None, 0.6, False),
    ("1 s window, just after its start", 100.001, 1, 1.0, None, 0.999, False),
    # The server, a little ahead, is in the next window already: the later candidate.
    ("server ahead within the skew", 100.995, 1, 1.0, None, 1.005, False),
    ("no window announced: whole seconds", 100.25, 1, None, None, 0.75, False),
    ("a minute window, aligned", 1000.5, 20, 60.0, None, 19.5, False),
    ("a minute window, not aligned", 1000.5, 30, 60.0, None, None, True),
    ("a reset of 0: the boundary is now", 100.4, 0, 1.0, None, 0.0, False),
    ("a window of half a second is not judged", 100.4, 1, 0.5, None, None, False),
    ("a Date within its second", 100.4, 1, 1.0, 100.0, 0.6, False),
    ("a Date two seconds ahead", 100.4, 1, 1.0, 102.0, None, True),
    ("a Date three seconds behind", 100.4, 1, 1.0, 97.0, None, True),
]


@pytest.mark.parametrize(
    ("wall", "reset", "window", "date", "aligned", "unaligned"),
    [c[1:] for c in JUDGED],
    ids=[c[0] for c in JUDGED],
)
def test_one_answer_is_judged_against_wall_clock_alignment(
    wall: float,
    reset: int,
    window: float | None,
    date: float | None,
    aligned: float | None,
    unaligned: bool,
) -> None:
    got, contradicts = ALIGNED.judge(wall, reset, window, date)
    assert contradicts is unaligned
    assert got == (pytest.approx(aligned) if aligned is not None else None)


def test_bad_alignment_constants_are_rejected() -> None:
    with pytest.raises(ValueError, match="skew"):
        Alignment(skew=-0.1)
    with pytest.raises(ValueError, match="probe_poll"):
        Alignment(probe_poll=3.0)
    with pytest.raises(ValueError, match="poll_growth"):
        Alignment(poll_growth=1.5)
    with pytest.raises(ValueError, match="poll_max"):
        Alignment(poll_max=-1.0)


def test_a_long_wait_for_answers_looks_again_less_often() -> None:
    # A spent count whose sends are out (a generation of 30 s): a few dozen looks, not 6,000.
    count = QuotaCount()
    count.answer(Quota(10, 60.0, 1, 60.0), seq=0, now=0.0, counted=False)
    count.take(0.0, 1)
    now, looks = 0.0, 0
    while now < 30.0:
        now += count.wait(now)
        looks += 1
    assert ALIGNED.poll(0.0) == ALIGNED.probe_poll
    assert ALIGNED.poll(100.0) == ALIGNED.poll_max
    assert looks < 60


@pytest.mark.parametrize("style", ["ietf", "ietf-old", "x"])
def test_every_delta_style_carries_the_aligned_boundary(style: str) -> None:
    wall = WALL + 0.3
    headers = quota_headers(style, 100, 1.0, 0, WALL + 1.0, wall)
    headers["Date"] = formatdate(wall, usegmt=True)
    quota = parse_quota(headers, now=wall)
    assert quota is not None
    assert quota.reset == 1.0
    assert quota.aligned == pytest.approx(0.7)
    assert not quota.unaligned


def test_a_unix_time_reset_is_exact_and_not_judged() -> None:
    quota = parse_quota(quota_headers("x-unix", 100, 1.0, 0, WALL + 1.0, WALL + 0.3), WALL + 0.3)
    assert quota is not None
    assert quota.aligned is None
    assert not quota.unaligned


# ---------------------------------------------------------------- the count, step by step

SPENT = Quota(100, 1.0, 0, 1.0, aligned=0.6)  # read at 0.4 into a second: it ends at 1.0


def spent() -> QuotaCount:
    """A count told at 10.4 that the window is spent, by an answer to the latest send."""
    count = QuotaCount()
    count.answer(SPENT, seq=100, now=10.4)
    return count


def send(count: QuotaCount, seq: int, now: float = 0.0) -> None:
    """Send ``seq`` taken from the count (as ``RatePacer.take`` does)."""
    assert count.left is not None
    count.take(now, seq)


def test_a_spent_count_holds_until_the_aligned_boundary_not_the_named_reset() -> None:
    assert spent().wait(10.4) == pytest.approx(0.6 + SKEW)  # named: 1.0 s


def test_at_the_aligned_boundary_one_probe_goes_and_the_rest_wait_for_its_answer() -> None:
    count = spent()
    at = 11.0 + SKEW
    count.roll(at, sends=100)
    assert count.left == 1  # the probe
    send(count, 101, at)
    assert count.wait(at) == pytest.approx(ALIGNED.probe_poll)
    # Its answer shows the new window: the rest go, and the next end is placed again.
    count.answer(Quota(100, 1.0, 99, 1.0, aligned=1.0 - SKEW), seq=101, now=at)
    assert count.left == 99
    assert count.aligned
    assert count.reset_at == pytest.approx(at + 1.0)
    assert count.aligned_at == pytest.approx(12.0)


def test_a_429_to_the_probe_drops_the_alignment_and_holds_to_the_named_reset() -> None:
    count = spent()
    at = 11.0 + SKEW
    count.roll(at, sends=100)
    send(count, 101)
    count.answer(Quota(100, 1.0, 0, 1.0, aligned=0.98), seq=101, now=at, limited=True)
    assert not count.aligned
    assert count.left == 0
    assert count.wait(at) == pytest.approx(11.4 - at)  # the reset the first answer named
    count.roll(11.4, sends=101)  # from here on, the conservative rule
    assert count.left == 100
    count.answer(Quota(100, 1.0, 0, 1.0, aligned=0.5), seq=201, now=11.5)
    assert count.wait(11.5) == pytest.approx(0.9)  # the predicted 12.4, not 11.5 + 0.5


def test_a_429_without_headers_to_the_probe_drops_the_alignment_too() -> None:
    count = spent()
    count.roll(11.0 + SKEW, sends=100)
    send(count, 101)
    count.ended(101)
    count.throttled(101)
    assert not count.aligned
    assert count.wait(11.0 + SKEW) == pytest.approx(0.4 - SKEW)


def test_an_answer_that_contradicts_alignment_drops_it_for_good() -> None:
    count = QuotaCount()
    count.answer(Quota(100, 60.0, 0, 30.0, unaligned=True), seq=1, now=0.0)
    count.answer(Quota(100, 60.0, 0, 30.0, aligned=29.5), seq=2, now=0.0)
    assert count.wait(0.0) == pytest.approx(30.0)


def test_a_probe_never_answered_holds_no_longer_than_the_named_reset() -> None:
    count = spent()
    count.roll(11.0 + SKEW, sends=100)
    send(count, 101)  # the probe; its answer never comes
    count.roll(11.4, sends=101)
    assert count.left == 100
    assert count.aligned  # no evidence either way


def test_an_answer_read_after_the_aligned_end_starts_the_next_window() -> None:
    # The window was not used up: sends went on past its aligned end, and the server counted
    # them in its next window. That window's first answer is the count from then on (before,
    # the old count's minimum held, and its end a second late drew a refused probe).
    count = QuotaCount()
    count.answer(Quota(100, 1.0, 50, 1.0, aligned=0.5), seq=50, now=0.5)
    for seq in range(51, 71):
        send(count, seq)
    count.roll(1.0 + SKEW, sends=70)  # the aligned end passes; 30 left of the old count
    for seq in range(71, 81):
        send(count, seq)
    for seq in range(51, 69):
        count.ended(seq)  # answers with no rate-limit headers
    # Read late, an answer to a send before the end says nothing of the next window.
    count.answer(Quota(100, 1.0, 31, 1.0, aligned=0.5), seq=69, now=1.1)
    assert count.left == 20  # 31, less the 11 sends still in flight
    count.ended(70)
    count.answer(Quota(100, 1.0, 90, 1.0, aligned=0.97), seq=71, now=1.03)
    assert count.left == 81  # 90, less the 9 sent after that one and still in flight
    assert count.reset_at == pytest.approx(2.03)
    assert count.aligned_at == pytest.approx(2.0)


def test_a_count_not_spent_is_not_rolled_early() -> None:
    count = QuotaCount()
    count.answer(Quota(100, 1.0, 5, 1.0, aligned=0.6), seq=95, now=10.4)
    count.roll(11.1, sends=95)
    assert count.left == 5  # the old window's count, until the named reset


# ---------------------------------------------------------------- whole batches


def announced_window(style: str, *, offset: float = 0.0, ahead: float = 0.0) -> Server:
    """100 per second, windows starting where the server's clock (``ahead`` s ahead of ours)
    plus ``offset`` is a whole second (offset 0: aligned to its wall clock); every answer
    announces it in ``style`` with a ``Date``; a 429 has a whole-second Retry-After."""
    state = {"index": -1, "used": 0}

    def decide(t: float) -> tuple[bool, float | None, Announced]:
        wall = WALL + t + ahead
        index = math.floor(wall + offset)
        if index != state["index"]:
            state["index"], state["used"] = index, 0
        admitted = state["used"] < 100
        state["used"] += admitted
        reset_at = index + 1 - offset
        headers = quota_headers(style, 100, 1.0, 100 - state["used"], reset_at, wall)
        headers["Date"] = formatdate(wall, usegmt=True)
        return admitted, (None if admitted else max(1, math.ceil(reset_at - wall))), headers

    return decide


def batch(server: Server, phase: float) -> tuple[float, int, int]:
    """300 jobs from ``phase`` s into a second; the time past the floor (the start of the
    third window), attempts, 429s."""
    last, attempts, _ = run_batch(server, 300, start=phase)
    return last - 2.0, attempts, attempts - 300


@pytest.mark.parametrize("style", ["ietf", "ietf-old", "x"])
@pytest.mark.parametrize("phase", [0.05, 0.4, 0.7])
def test_an_aligned_window_with_delta_resets_ends_near_the_floor(style: str, phase: float) -> None:
    late, attempts, _ = batch(announced_window(style), phase)
    assert late <= 0.05  # was up to the phase: a second's rounding carried into every window
    assert attempts == 300


@pytest.mark.parametrize("offset", [0.3, 0.6])
def test_an_unaligned_window_costs_one_early_probe_then_the_named_resets(offset: float) -> None:
    late, _, refused = batch(announced_window("ietf", offset=offset), 0.1)
    assert refused <= 1  # one probe, ever; never a batch sent early
    assert late <= 1.5


@pytest.mark.parametrize("ahead", [-0.3, -0.05, 0.05, 0.3])
def test_a_skewed_server_clock_costs_at_most_one_probe(ahead: float) -> None:
    late, _, refused = batch(announced_window("ietf-old", ahead=ahead), 0.4)
    assert refused <= 1
    assert late <= 1.5


def test_a_window_not_used_up_before_it_ended_is_not_taken_whole_again() -> None:
    # Started 5 ms before a boundary: the first answers name an end a second away, and the
    # sends after the real end count in the server's next window. Before, the roll at the
    # named end assumed a whole quota there: 176 429s. Now one probe asks first.
    _, _, refused = batch(announced_window("ietf"), 0.995)
    assert refused <= 1


@pytest.mark.parametrize("style", ["ietf", "ietf-old", "x"])
def test_sends_that_crossed_a_boundary_do_not_make_the_next_probe_early(style: str) -> None:
    # Started 5 ms before a boundary, the count takes the sends just after it for the old
    # window's (their answers name resets a few milliseconds apart): it is the next window it
    # counts, which ends at the aligned boundary, a few milliseconds after the earliest reset
    # named. A roll at that reset sent the probe into a spent window (a 429 whose whole-second
    # Retry-After cost the window after), every second window: 1,000 jobs took 19.0 s.
    last, attempts, _ = run_batch(announced_window(style), 1000, start=0.995)
    assert attempts <= 1003
    assert last <= 10.05  # the first window (5 ms) holds a few sends: ten more windows


def test_a_server_clock_seconds_off_is_seen_in_its_date_and_costs_no_probe() -> None:
    # Its windows start half a second into ours: alignment to our clock would be early.
    late, _, refused = batch(announced_window("ietf", ahead=-2.5), 0.4)
    assert refused == 0
    assert late <= 1.0  # the named resets, as without the alignment


@pytest.mark.parametrize("style", ["ietf", "ietf-old", "x"])
def test_a_long_batch_sends_no_window_twice(style: str) -> None:
    # 1,000 jobs, ten windows: with no window length announced (X-RateLimit-*), the count
    # after a reset must not send past its quota while the answers naming the next reset are
    # in flight (before: 2,614 attempts).
    last, attempts, _ = run_batch(announced_window(style), 1000, start=0.5)
    assert attempts <= 1003
    assert last - 9.0 <= 0.05  # the start of the tenth window
