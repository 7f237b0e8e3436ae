from __future__ import annotations

import anyio
import pytest

from resilience._budget import RetryBudget, RetryBudgetSettings
from resilience._concurrency import AdaptiveLimiter, ConcurrencyPermit
from resilience._pacing import Cubic, RatePacer, TokenBucket, WindowRate

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- adaptive concurrency


async def take(limiter: AdaptiveLimiter, n: int) -> list[ConcurrencyPermit]:
    return [await limiter.acquire() for _ in range(n)]


async def test_slow_start_grows_by_one_per_success_while_used() -> None:
    limiter = AdaptiveLimiter(initial=4)
    permits = await take(limiter, 4)
    for p in permits:  # all four answered while still holding their slots
        limiter.on_success(p)
    assert limiter.limit == 8


async def test_unused_limit_does_not_grow() -> None:
    limiter = AdaptiveLimiter(initial=10)
    (p,) = await take(limiter, 1)
    limiter.on_success(p)
    assert limiter.limit == 10


async def test_a_429_cuts_to_what_was_in_flight_before_it() -> None:
    limiter = AdaptiveLimiter(initial=12)
    permits = await take(limiter, 12)
    # The server admitted the first 8; the 9th was the first it turned away.
    limiter.on_concurrency_exceeded(permits[8])
    assert limiter.limit == 8
    # The rest of that burst was sent before the cut: one cut per round trip.
    for p in permits[9:]:
        limiter.on_concurrency_exceeded(p)
    assert limiter.limit == 8


async def test_cut_is_at_least_one_and_never_below_the_floor() -> None:
    limiter = AdaptiveLimiter(initial=3)
    (p,) = await take(limiter, 1)
    limiter.on_concurrency_exceeded(p)  # nothing older in flight
    assert limiter.limit == 1
    limiter.release(p)
    (q,) = await take(limiter, 1)
    limiter.on_concurrency_exceeded(q)
    assert limiter.limit == 1


async def test_after_a_cut_growth_is_one_per_round_trip() -> None:
    limiter = AdaptiveLimiter(initial=9)
    permits = await take(limiter, 9)
    limiter.on_concurrency_exceeded(permits[8])
    limiter.release(permits[8])
    assert limiter.limit == 8
    for p in permits[:7]:
        limiter.on_success(p)
    assert limiter.limit == 8
    limiter.on_success(permits[7])
    assert limiter.limit == 9


async def test_ceiling_is_never_passed() -> None:
    limiter = AdaptiveLimiter(initial=4, ceiling=5)
    permits = await take(limiter, 4)
    for p in permits:
        limiter.on_success(p)
    assert limiter.limit == 5
    assert AdaptiveLimiter(initial=10, ceiling=3).limit == 3


async def test_limit_is_enforced_and_release_wakes_a_waiter() -> None:
    limiter = AdaptiveLimiter(initial=2)
    a, b = await take(limiter, 2)
    got: list[ConcurrencyPermit] = []

    async def third() -> None:
        got.append(await limiter.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(third)
        await anyio.sleep(0.01)
        assert got == []
        limiter.release(a)
    assert len(got) == 1
    limiter.release(b)
    limiter.release(got[0])
    limiter.release(got[0])  # idempotent
    assert limiter.in_flight == 0


async def test_cancelled_waiter_leaks_no_permit() -> None:
    limiter = AdaptiveLimiter(initial=1)
    (held,) = await take(limiter, 1)
    with anyio.move_on_after(0.01):
        await limiter.acquire()
    limiter.release(held)
    assert limiter.in_flight == 0
    assert limiter.waiting == 0
    (again,) = await take(limiter, 1)
    limiter.release(again)


async def test_parked_request_wakes_on_release_not_on_timer() -> None:
    limiter = AdaptiveLimiter(initial=2)
    (p,) = await take(limiter, 1)
    woke_at: list[float] = []

    async def parked() -> None:
        await limiter.wait_for_release(timeout=5.0)
        woke_at.append(anyio.current_time())

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(parked)
        await anyio.sleep(0.01)
        limiter.release(p)
    assert woke_at
    assert woke_at[0] - start < 1.0


async def test_a_release_while_the_rejected_request_was_in_flight_is_not_missed() -> None:
    limiter = AdaptiveLimiter(initial=3)
    other, rejected = await take(limiter, 2)
    limiter.on_concurrency_exceeded(rejected)
    limiter.release(other)  # completes after the 429 was seen, before the request parks
    limiter.release(rejected)
    with anyio.fail_after(1):
        await limiter.wait_for_release(timeout=30.0, since=rejected)  # returns at once


async def test_a_release_before_the_429_does_not_wake_the_rejected_request() -> None:
    limiter = AdaptiveLimiter(initial=3)
    other, rejected = await take(limiter, 2)
    limiter.release(other)  # that slot freed before the server turned us away: taken since
    limiter.on_concurrency_exceeded(rejected)
    limiter.release(rejected)
    with anyio.move_on_after(0.05) as scope:
        await limiter.wait_for_release(timeout=30.0, since=rejected)
    assert scope.cancelled_caught  # parked, waiting for a completion that comes after


async def test_park_times_out_when_nothing_of_ours_completes() -> None:
    limiter = AdaptiveLimiter(initial=2)
    with anyio.fail_after(1):
        await limiter.wait_for_release(timeout=0.01)
    assert limiter.waiting == 0


def test_bad_limiter_settings() -> None:
    with pytest.raises(ValueError, match="floor"):
        AdaptiveLimiter(floor=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        AdaptiveLimiter(ceiling=0)


# ---------------------------------------------------------------- CUBIC / rate (botocore vectors)


def test_cubic_k_vector() -> None:
    assert Cubic(10, 0).k == pytest.approx(1.9574338205844317)


def test_cubic_error_received_vector() -> None:
    cubic = Cubic(10, 0)
    assert cubic.error_received(8, 1) == pytest.approx(5.6)
    assert cubic.k == pytest.approx(1.8171205928321397)


def test_cubic_beta_06_vector() -> None:
    cubic = Cubic(10, 0, beta=0.6)
    assert cubic.error_received(10, 1) == pytest.approx(6.0)
    assert cubic.success_received(1) == pytest.approx(6.0)


def test_cross_sdk_cubic_table_all_successes() -> None:
    cubic = Cubic(10, 5)
    expected = [7.0, 9.64893600966, 10.000030849917364, 10.453284520772092,
                13.408697022224185, 21.26626835427364, 36.425998516920465]  # fmt: skip
    for t, rate in zip(range(5, 12), expected, strict=False):
        assert cubic.success_received(t) == pytest.approx(rate)


def test_cross_sdk_cubic_table_with_throttles() -> None:
    cubic = Cubic(10, 5)
    last = cubic.success_received(5)
    assert last == pytest.approx(7.0)
    last = cubic.success_received(6)
    assert last == pytest.approx(9.64893600966)
    last = cubic.error_received(last, 7)
    assert last == pytest.approx(6.754255206761999)
    last = cubic.error_received(last, 8)
    assert last == pytest.approx(4.727978644733399)
    for t, rate in [(9, 6.606547753887045), (10, 6.763279816944947),
                    (11, 7.598174833907107), (12, 11.511232804773524)]:  # fmt: skip
        assert cubic.success_received(t) == pytest.approx(rate)


def test_window_rate_counts_the_last_second() -> None:
    window = WindowRate()
    assert window.rate(0) == 0
    for i in range(50):
        window.record(i / 100)  # 100/s for half a second
    assert window.rate(0.5) == pytest.approx(100, rel=0.05)
    assert window.rate(1.2) == pytest.approx(30, rel=0.1)  # 0.2-0.49 is in the window
    assert window.rate(5.0) == 0


def test_token_bucket_vectors() -> None:
    bucket = TokenBucket(10, 0)
    assert bucket.reserve(0.1) == 0
    assert bucket.reserve(0.15) == pytest.approx(0.05)  # blocks until 0.2
    slow = TokenBucket(0.1, 0, min_rate=0.2)
    assert slow.rate == 0.2


def test_gate_closes_for_retry_after_and_pacing_starts() -> None:
    clock = FakeClock(10.0)
    pacer = RatePacer(clock=clock)
    assert pacer.delay() == 0
    assert pacer.rate is None
    assert not pacer.active
    for _ in range(20):
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0)
    clock.now = 10.2
    # A cheap gate (a millisecond Retry-After): botocore's cut; costly ones: test_pacing.py.
    assert pacer.on_response(rate_limited=True, retry_after=0.1, epoch=0) is True
    assert pacer.active
    assert pacer.blocked_until == pytest.approx(10.3)
    assert pacer.delay() == pytest.approx(0.1)
    assert pacer.rate is not None
    assert pacer.rate > 0
    # A second 429 from the same round trip extends the gate but does not cut again.
    rate = pacer.rate
    assert pacer.on_response(rate_limited=True, retry_after=0.2, epoch=0) is False
    assert pacer.rate == rate
    assert pacer.blocked_until == pytest.approx(10.4)
    # After the gate, sends are spaced by the pacing rate.
    clock.now = 10.4
    spacing = []
    for _ in range(5):
        wait = pacer.delay()
        clock.now += wait
        pacer.take()
        spacing.append(wait)
    assert spacing[0] == 0  # the gate's own wait is over
    assert spacing[-1] == pytest.approx(1 / rate, rel=0.05)  # no burst after the pause


def test_pacing_rate_recovers_after_a_cut() -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock, recovery=1.0)
    for i in range(100):
        clock.now = i / 100
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0)
    pacer.on_response(rate_limited=True, retry_after=0.01, epoch=0)
    cut = pacer.rate
    assert cut is not None
    for i in range(100):
        clock.now = 1.0 + i / 100
        pacer.on_response(rate_limited=False, retry_after=None, epoch=1)
    assert pacer.rate is not None
    assert pacer.rate > cut


# ---------------------------------------------------------------- retry budget


def test_budget_allows_ratio_of_requests_plus_reserve() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(RetryBudgetSettings(ratio=0.2, min_per_second=0), clock=clock)
    for _ in range(100):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(30)) == 20


def test_budget_reserve_alone_allows_min_per_second_times_ttl() -> None:
    budget = RetryBudget(
        RetryBudgetSettings(ratio=0.2, min_per_second=1, ttl=10), clock=FakeClock(0)
    )
    assert sum(budget.try_withdraw() for _ in range(20)) == 10


def test_budget_deposits_and_withdrawals_expire_after_ttl() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(RetryBudgetSettings(ratio=0.5, min_per_second=0, ttl=2), clock=clock)
    for _ in range(10):
        budget.deposit()
    assert budget.balance == 5
    assert budget.try_withdraw()
    clock.now = 5.0
    assert budget.balance == 0
    assert not budget.try_withdraw()


def test_bad_budget_settings() -> None:
    with pytest.raises(ValueError, match="ttl"):
        RetryBudgetSettings(ttl=0.5)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudgetSettings(ratio=-1)


async def test_a_cut_at_most_halves_the_limit() -> None:
    # The oldest request reached the server last: nothing older is in flight, but the server
    # had admitted others. One round trip must not collapse the limit to the floor.
    limiter = AdaptiveLimiter(initial=12)
    permits = await take(limiter, 12)
    limiter.on_concurrency_exceeded(permits[0])
    assert limiter.limit == 6


def test_pacing_switches_off_after_an_idle_spell() -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock, idle_reset=30.0)
    pacer.on_response(rate_limited=True, retry_after=0.1, epoch=0)
    assert pacer.active
    assert pacer.rate is not None
    clock.now = 31.0
    assert not pacer.active
    assert pacer.rate is None
    assert pacer.delay() == 0


def test_a_success_after_idling_does_not_lower_the_rate() -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock)
    for i in range(100):
        clock.now = i / 100
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0)
    pacer.on_response(rate_limited=True, retry_after=None, epoch=0)
    cut = pacer.rate
    assert cut is not None
    clock.now = 20.0  # quiet for a while: the measured rate is ~0, the server's limit is not
    pacer.on_response(rate_limited=False, retry_after=None, epoch=1)
    assert pacer.rate is not None
    assert pacer.rate >= cut
