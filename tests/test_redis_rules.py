"""One table of cases, run through the Python rule and through the Lua scripts on a real
redis-server: the fleet follows the same AIMD, pacing and budget arithmetic as one process.

The Lua side runs the library the store's scripts are built from (``_scripts.library()``) with
a one-line call of the rule's function, so the numbers are those of the production code, with
the time given explicitly instead of read from Redis's clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from resilience._budget import RetryBudget, RetryBudgetSettings
from resilience._concurrency import cut_limit, grow_limit
from resilience._pacing import PACING, QuotaCount, RatePacer
from resilience._quota import Quota
from resilience.redis._scripts import constants, library, source
from tests.redis_server import RedisServer
from tests.test_pacing import QUOTA_RACE, race


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    with RedisServer() as srv:
        client = Redis.from_url(srv.url, decode_responses=True)
        yield client
        client.close()


def lua(redis: Redis, call: str, *args: Any) -> Any:
    """Run ``call`` (Lua returning a JSON string) after the scripts' library."""
    return json.loads(redis.eval(library() + call, 0, *args))


# --------------------------------------------------------------------------- AIMD

# limit, slow start, growth, in flight (the reported one included), ceiling -> limit, growth
GROW = [
    (4, True, 0.0, 4, None, 5, 0.0),  # slow start: +1 per success
    (4, True, 0.0, 1, None, 4, 0.0),  # the limit is not used: no evidence, no growth
    (4, False, 0.5, 2, None, 4, 0.75),  # after a cut: +1/limit
    (4, False, 0.75, 4, None, 5, 0.0),  # a whole step: +1
    (3, False, 0.0, 2, None, 3, 1 / 3),
    (8, True, 0.0, 8, 8, 8, 0.0),  # at the ceiling
    (7, True, 0.0, 7, 8, 8, 0.0),
]


@pytest.mark.parametrize(("limit", "slow", "growth", "in_flight", "ceiling", "new", "grown"), GROW)
def test_a_success_grows_the_limit_alike(
    redis: Redis,
    limit: int,
    slow: bool,
    growth: float,
    in_flight: int,
    ceiling: int | None,
    new: int,
    grown: float,
) -> None:
    python = grow_limit(limit, slow_start=slow, growth=growth, in_flight=in_flight, ceiling=ceiling)
    script = lua(
        redis,
        "local l, g = aimd_grow(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),"
        " tonumber(ARGV[4]), tonumber(ARGV[5])) return cjson.encode({l, g})",
        limit,
        int(slow),
        repr(growth),
        in_flight,
        ceiling or 0,
    )
    assert python == pytest.approx((new, grown))
    assert script == pytest.approx([new, grown])


# limit, requests in flight older than the rejected one -> new limit
CUT = [
    (10, 7, 7),  # to what the server had admitted
    (10, 12, 9),  # at least by one
    (12, 0, 6),  # at most by half in one round trip
    (11, 3, 5),
    (2, 0, 1),
    (1, 0, 1),  # never below the floor
]


@pytest.mark.parametrize(("limit", "older", "new"), CUT)
def test_a_plan_limit_429_cuts_the_limit_alike(
    redis: Redis, limit: int, older: int, new: int
) -> None:
    script = lua(
        redis,
        "return cjson.encode({aimd_cut(tonumber(ARGV[1]), tonumber(ARGV[2]))})",
        limit,
        older,
    )
    assert cut_limit(limit, older) == new
    assert script == [new]


# --------------------------------------------------------------------------- pacing

# responses per second measured, pacing rate (None: not pacing) -> rate cut from, new rate
PACE_CUT = [
    (100.0, None, 100.0, 70.0),
    (100.0, 50.0, 50.0, 35.0),  # pacing already: cut from the lower of the two
    (10.0, 20.0, 10.0, 7.0),
    (0.1, None, 0.5, 0.5),  # never below the minimum rate
]


@pytest.mark.parametrize(("measured", "rate", "w_max", "new"), PACE_CUT)
def test_a_rate_limit_429_cuts_the_pacing_rate_alike(
    redis: Redis, measured: float, rate: float | None, w_max: float, new: float
) -> None:
    script = lua(
        redis,
        "local w, r = pace_cut(tonumber(ARGV[1]), tonumber(ARGV[2])) return cjson.encode({w, r})",
        repr(measured),
        "none" if rate is None else repr(rate),
    )
    assert PACING.cut(measured, rate) == pytest.approx((w_max, new))
    assert script == pytest.approx([w_max, new])


# rate cut from, seconds since the cut, measured, pacing rate -> new pacing rate
PACE_GROW = [
    (100.0, 0.0, 100.0, 70.0, 70.0),  # right after the cut: the cut rate
    (100.0, 0.5, 100.0, 70.0, 96.25),  # CUBIC: concave towards the old rate
    (100.0, 1.0, 100.0, 70.0, 100.0),  # back at the old rate after `recovery`
    (100.0, 2.0, 30.0, 70.0, 70.0),  # never above twice the measured, never lowered
    (10.0, 3.0, 50.0, 12.0, 34.0),  # convex probing past it
    (1.0, 0.0, 0.0, 0.5, 0.5),  # never below the minimum rate
]


@pytest.mark.parametrize(("w_max", "since", "measured", "rate", "new"), PACE_GROW)
def test_a_success_grows_the_pacing_rate_alike(
    redis: Redis, w_max: float, since: float, measured: float, rate: float, new: float
) -> None:
    script = lua(
        redis,
        "return cjson.encode({pace_grow(tonumber(ARGV[1]), tonumber(ARGV[2]),"
        " tonumber(ARGV[3]), tonumber(ARGV[4]))})",
        repr(w_max),
        repr(since),
        repr(measured),
        repr(rate),
    )
    assert PACING.grow(w_max, since, measured, rate) == pytest.approx(new)
    assert script == pytest.approx([new])


# n responses evenly over `span` seconds, then a 429 -> the pacing rate after it
RATE_AFTER_429 = [(100, 1.0), (50, 0.5), (10, 0.2), (3, 0.01), (200, 0.8)]


@pytest.mark.parametrize(("n", "span"), RATE_AFTER_429)
def test_the_pacing_rate_after_a_429_is_the_same(redis: Redis, n: int, span: float) -> None:
    """The whole path: responses measured, then a 429 (RatePacer vs the scripts' pacer)."""
    times = [span * i / n for i in range(n)]
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock)
    for t in times:
        clock.now = t
        pacer.on_response(rate_limited=False, retry_after=None, epoch=0)
    clock.now = span
    pacer.on_response(rate_limited=True, retry_after=None, epoch=0)
    key = f"rules:rate:{n}:{span}"
    redis.delete(key)
    milli = json.loads(
        redis.eval(
            library() + "local key = KEYS[1] local times = cjson.decode(ARGV[1])"
            " for _, t in ipairs(times) do rate_response(key, t * 1000, false, -1, -1, 60000) end"
            " local _, milli = rate_response(key, tonumber(ARGV[2]) * 1000, true, -1, 0, 60000)"
            " return cjson.encode({milli})",
            1,
            key,
            json.dumps(times),
            repr(span),
        )
    )
    assert pacer.rate is not None
    assert milli[0] / 1000 == pytest.approx(pacer.rate, abs=0.001)


# answers over a stretch of `span` s, then a 429 whose gate is `gate` s, then a success `after`
# s after the gate opened -> the pacing rate after the 429 and after the success
COSTLY_429 = [(40, 0.4, 1.0, 0.5), (12, 0.01, 1.0, 1.0), (300, 2.0, 2.0, 5.0), (3, 0.5, 1.0, 0.0)]


@pytest.mark.parametrize(("n", "span", "gate", "after"), COSTLY_429)
def test_the_fleets_cut_for_a_whole_second_gate_is_the_rules(
    redis: Redis, n: int, span: float, gate: float, after: float
) -> None:
    """A costly 429 in the fleet: PacingRule.stretch_cut, then CUBIC back over its recovery."""
    times = [span * i / n for i in range(n)]
    w_max, cut, beta, recovery = PACING.stretch_cut(n, span, None, gate)
    key = f"rules:costly:{n}:{span}:{gate}:{after}"
    redis.delete(key)
    got = json.loads(
        redis.eval(
            library() + "local key = KEYS[1] local times = cjson.decode(ARGV[1])"
            " for _, t in ipairs(times) do rate_response(key, t * 1000, false, -1, -1, 60000) end"
            " local span, gate = tonumber(ARGV[2]) * 1000, tonumber(ARGV[3]) * 1000"
            " local _, cut = rate_response(key, span, true, gate, 0, 60000)"
            " local _, grown = rate_response(key, span + gate + tonumber(ARGV[4]) * 1000,"
            "   false, -1, -1, 60000)"
            " local v = redis.call('HMGET', key, 'first', 'total')"
            " return cjson.encode({cut, grown, tonumber(v[2])})",
            1,
            key,
            json.dumps(times),
            repr(span),
            repr(gate),
            repr(after),
        )
    )
    assert got[0] / 1000 == pytest.approx(cut, abs=0.001)
    # the success: measured over the window (answers, 429 and this one) as WindowRate does
    now = span + gate + after
    span_seen = min(PACING.window, max(now, PACING.minimum_span))
    measured = got[2] / span_seen
    grown = PACING.grow(w_max, after, measured, cut, beta, recovery)  # from the opening
    assert got[1] / 1000 == pytest.approx(grown, abs=0.002)


# --------------------------------------------------------------------------- announced quota

# steps: ("answer", now, seq, remaining, reset, limit, window[, aligned, unaligned, limited])
# | ("take", now) | ("roll", now) | ("throttled", now) (seconds; None: not announced)
# -> (left, reset_at, wait) after each step, Python and Lua alike
QUOTA_RUNS = [
    # an answer, then sends taken from what it says remains, then the reset
    [("answer", 0.0, 0, 5, 1.0, 10, 1.0), ("take", 0.1), ("take", 0.1), ("roll", 1.0)],
    # sends counted out of order (across processes): the least remaining, less those in
    # flight, reckoned again at each answer
    [("answer", 0.0, 0, 5, 1.0, 10, 1.0), ("take", 0.0), ("take", 0.0), ("take", 0.0),
     ("answer", 0.01, 1, 3, 1.0, 10, 1.0), ("answer", 0.01, 2, 4, 1.0, 10, 1.0),
     ("answer", 0.01, 3, 2, 1.0, 10, 1.0)],
    # a long wait for answers looks again less and less often (Alignment.poll)
    [("answer", 0.0, 0, 1, 5.0, 10, None), ("take", 0.0), ("roll", 0.004), ("roll", 0.1),
     ("roll", 0.5), ("roll", 3.0), ("roll", 4.9), ("answer", 4.95, 1, 0, 0.05, 10, None)],
    # no window announced: after the reset the count holds while its answers are out
    [("answer", 0.0, 0, 0, 0.5, 4, None), ("roll", 0.6), ("take", 0.7), ("take", 0.7),
     ("take", 0.7), ("take", 0.7), ("take", 0.7), ("answer", 0.71, 1, 2, 0.5, 4, None),
     ("answer", 0.72, 4, 0, 0.5, 4, None)],
    # an answer with no count to a send of this window spends it (an earlier-counted answer
    # read after it cannot give it back); one to a send before the roll does not
    [("answer", 0.0, 0, 5, 1.0, 10, 1.0), ("take", 0.0), ("take", 0.0), ("take", 0.0),
     ("answer", 0.01, 2, 3, 1.0, 10, 1.0), ("answer", 0.01, 3, None, None, None, None),
     ("answer", 0.01, 1, 4, 1.0, 10, 1.0), ("take", 0.02), ("roll", 1.0), ("take", 1.0),
     ("take", 1.0), ("answer", 1.01, 5, 9, 1.0, 10, 1.0),
     ("answer", 1.01, 4, None, None, None, None), ("answer", 1.01, 6, 9, 1.0, 10, 1.0)],
    # the aligned end a little past the reset named: the roll waits for it
    [("answer", 0.996, 0, 0, 1.0, 10, 1.0, 1.004, 0, 0), ("roll", 1.997), ("take", 1.997),
     ("roll", 2.021), ("take", 2.021)],
    # a 429 holds its window whatever answers to sends before it say
    [("answer", 0.0, 0, 5, 1.0, 10, 1.0), ("take", 0.0), ("take", 0.0), ("throttled", 0.01),
     ("answer", 0.01, 1, 4, 1.0, 10, 1.0)],
    # an answer overtaken by later ones says too much: the count only goes down
    [("answer", 0.0, 0, 5, 1.0, 10, None), ("take", 0.0), ("take", 0.0),
     ("answer", 0.1, 2, 2, 0.9, 10, None), ("answer", 0.1, 1, 4, 0.9, 10, None)],
    # whole-second resets: the earliest named wins; a late answer from the old window is
    # ignored after the reset
    [("answer", 0.0, 0, 3, 1.0, 5, None), ("take", 0.2), ("answer", 0.3, 1, 2, 1.0, 5, None),
     ("roll", 1.05), ("answer", 1.1, 1, 0, 0.0, 5, None), ("take", 1.2)],
    # no window: after the reset nothing is known of the next one
    [("answer", 0.0, 0, 0, 0.5, 4, None), ("roll", 0.6), ("take", 0.7)],
    # wall-clock alignment: held to the aligned end, one probe, its success refills
    [("answer", 0.4, 0, 0, 1.0, 10, 1.0, 0.6, 0, 0), ("roll", 0.9), ("roll", 1.03),
     ("take", 1.03), ("take", 1.03), ("answer", 1.04, 1, 9, 1.0, 10, 1.0, 0.96, 0, 0),
     ("take", 1.05)],
    # a 429 to the probe: dropped for good, the named reset holds
    [("answer", 0.4, 0, 0, 1.0, 10, 1.0, 0.6, 0, 0), ("take", 1.03),
     ("answer", 1.04, 1, 0, 1.0, 10, 1.0, 0.96, 0, 1), ("roll", 1.2), ("roll", 1.4),
     ("take", 1.45), ("answer", 1.5, 0, 0, 1.0, 10, 1.0, 0.5, 0, 0)],
    # a 429 with no headers to the probe; an answer that contradicts alignment
    [("answer", 0.4, 0, 0, 1.0, 10, 1.0, 0.6, 0, 0), ("take", 1.03), ("throttled", 1.04)],
    [("answer", 0.5, 0, 0, 30.0, 10, 60.0, None, 1, 0), ("roll", 1.0),
     ("answer", 0.6, 0, 0, 30.0, 10, 60.0, 29.4, 0, 0), ("roll", 1.0)],
    # not spent at the aligned end: the old count until the named reset
    [("answer", 0.4, 0, 3, 1.0, 10, 1.0, 0.6, 0, 0), ("roll", 1.1), ("take", 1.1)],
    # sends in the last second before a whole-second reset: one probe at the roll, its answer
    # says what is left; with an exact reset the whole quota
    [("answer", 0.0, 0, 5, 1.0, 10, 1.0, 1.0, 0, 0), ("take", 0.5), ("roll", 1.0),
     ("take", 1.0), ("take", 1.0), ("answer", 1.01, 2, 3, 1.0, 10, 1.0, 0.99, 0, 0)],
    [("answer", 0.0, 0, 5, 1.0, 10, 1.0), ("take", 0.5), ("roll", 1.0), ("take", 1.0)],
    # an answer read after the aligned end of a count not spent: the next window's count
    # (an answer to a send before the end, read late, is not)
    [("answer", 0.5, 0, 8, 1.0, 10, 1.0, 0.5, 0, 0), ("take", 0.6), ("take", 0.9),
     ("roll", 1.025), ("take", 1.03), ("answer", 1.05, 2, 6, 1.0, 10, 1.0, 0.95, 0, 0),
     ("answer", 1.06, 3, 9, 1.0, 10, 1.0, 0.94, 0, 0), ("take", 1.07)],
]  # fmt: skip


@pytest.mark.parametrize("steps", QUOTA_RUNS)
def test_the_quota_count_is_the_same(redis: Redis, steps: list[Any]) -> None:
    _same_count(redis, steps)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=st.integers(1, 20), used=st.integers(0, 20), steps=QUOTA_RACE)
def test_the_fleets_count_is_the_same_whatever_the_order(
    redis: Redis, limit: int, used: int, steps: list[tuple[str, int]]
) -> None:
    # test_pacing's property schedules (sends reaching the server and their answers coming
    # back in any order, some lost), replayed through the Lua: the same count after each step.
    _, replay, _, _ = race(limit, min(used, limit), steps)
    _same_count(redis, replay)


def _same_count(redis: Redis, steps: list[Any]) -> None:
    count, sends, expected = QuotaCount(), 0, []
    flying: set[int] = set()  # counted sends not answered: the Lua is told which answers end one
    lua_steps = []
    for step in steps:
        kind, now = step[0], step[1]
        count.roll(now, sends)
        if kind == "answer":
            seq, remaining, reset, limit, window = step[2:7]
            aligned, unaligned, limited = (*step[7:], None, 0, 0)[:3]
            quota = Quota(limit, window, remaining, reset, aligned, bool(unaligned))
            ended = seq in flying
            flying.discard(seq)
            count.answer(quota, seq or sends, now, limited=bool(limited), counted=bool(seq))
            step = (*step[:7], aligned, unaligned, limited, int(ended))
        elif kind == "take" and count.left is not None:
            sends += 1
            count.take(now, sends)
            flying.add(sends)
        elif kind == "throttled":
            count.throttled(sends)
        lua_steps.append(step)
        reset_at = -1.0 if count.reset_at is None else round(count.reset_at * 1000, 3)
        wait = round(count.wait(now) * 1000, 3)
        expected += [-1 if count.left is None else count.left, reset_at, wait]
    key = f"rules:quota:{len(steps)}:{steps[0][1]}"
    redis.delete(key)
    got = json.loads(
        redis.eval(
            library() + "local key, out = KEYS[1], {}"
            " local function none(x) if x == cjson.null then return -1 end return x end"
            " for _, s in ipairs(cjson.decode(ARGV[1])) do"
            "   local q = quota_load(key) local now = s[2] * 1000"
            "   quota_roll(q, now)"
            "   if s[1] == 'answer' then"
            "     local seq = s[3] if seq <= 0 then seq = q.sends end"
            "     local function ms(x)"
            "       if x == nil or x == cjson.null then return -1 end return x * 1000"
            "     end"
            "     quota_answer(q, seq, none(s[4]), ms(s[5]), none(s[6]), ms(s[7]), now, ms(s[8]),"
            "                  s[9], s[10], s[11], 1000000)"
            "   elseif s[1] == 'take' and q.qleft then"
            "     quota_take(q, now) q.sends = q.sends + 1"
            "   elseif s[1] == 'throttled' then"
            "     quota_throttled(q, q.sends)"
            "   end"
            "   out[#out + 1] = q.qleft or -1 out[#out + 1] = q.qreset or -1"
            "   out[#out + 1] = quota_wait(q, now)"
            "   quota_save(key, q)"
            " end return cjson.encode(out)",
            1,
            key,
            json.dumps(lua_steps),
        )
    )
    assert got == pytest.approx(expected)


# --------------------------------------------------------------------------- retry budget

# ratio, min_per_second, ttl, steps (second, deposits, withdrawals) -> withdrawals allowed
BUDGET = [
    (0.2, 0.0, 10.0, [(0.0, 100, 30)], [20]),  # 20 % of the requests
    (0.2, 1.0, 10.0, [(0.0, 0, 20)], [10]),  # the reserve alone: min_per_second * ttl
    (0.5, 0.0, 2.0, [(0.0, 10, 1), (5.0, 0, 1)], [1, 0]),  # deposits expire after ttl
    (1.0, 0.0, 3.0, [(0.0, 2, 0), (2.0, 2, 0), (3.5, 0, 3)], [0, 0, 2]),  # one slot a second
    (0.1, 2.0, 2.5, [(0.0, 10, 7)], [6]),  # a fractional ttl: ceil(ttl) slots, reserve 5
    (0.2, 0.0, 10.0, [(0.0, 10, 1), (0.5, 5, 3), (11.0, 0, 1)], [1, 2, 0]),
]


@pytest.mark.parametrize(("ratio", "reserve", "ttl", "steps", "allowed"), BUDGET)
def test_the_retry_budget_arithmetic_is_the_same(
    redis: Redis,
    ratio: float,
    reserve: float,
    ttl: float,
    steps: list[tuple[float, int, int]],
    allowed: list[int],
) -> None:
    clock = FakeClock(1000.0)
    settings = RetryBudgetSettings(ratio=ratio, min_per_second=reserve, ttl=ttl)
    budget = RetryBudget(settings, clock=clock)
    python = []
    for at, deposits, withdrawals in steps:
        clock.now = 1000.0 + at
        for _ in range(deposits):
            budget.deposit()
        python.append(sum(budget.try_withdraw() for _ in range(withdrawals)))
    key = f"rules:budget:{ratio}:{reserve}:{ttl}:{len(steps)}"
    redis.delete(key)
    script = []
    for at, deposits, withdrawals in steps:
        now = (1000.0 + at) * 1000
        got = 0
        args = (repr(now), repr(ratio), repr(reserve), repr(ttl))
        call = (
            "return budget(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1',"
            " tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), 60000)"
        )
        redis.eval(library() + call, 1, key, args[0], deposits, "0", *args[1:])
        for _ in range(withdrawals):
            got += int(redis.eval(library() + call, 1, key, args[0], 0, "1", *args[1:]))
        script.append(got)
    assert python == allowed
    assert script == allowed


# --------------------------------------------------------------------------- one source


def test_the_scripts_hardcode_no_rule_constant() -> None:
    """The constants come from the Python rules: the Lua files only name them."""
    rendered = constants()
    assert rendered["BETA"] == PACING.beta
    assert rendered["MIN_RATE"] == PACING.min_rate
    assert rendered["BURST_MS"] == PACING.burst * 1000
    header = "".join(f"local {name} = {float(value)!r}\n" for name, value in rendered.items())
    assert library().startswith(header)
    lua_files = library()[len(header) :] + "".join(
        source(name)[len(library()) :] for name in ("acquire", "report", "release", "renew")
    )
    for name in rendered:
        assert re.search(rf"\b{name}\b", lua_files), f"{name} is never used"
        assert not re.search(rf"\b{name}\s*=", lua_files), f"{name} is set in a Lua file"
    # the rule's own numbers appear nowhere in Lua (1000 converts units and is not one)
    assert not re.search(r"\b(0\.7|0\.5|0\.02|30000)\b", lua_files)
