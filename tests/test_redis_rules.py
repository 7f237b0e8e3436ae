"""One table of cases, run through the Python rule and through the Lua scripts on a real
redis-server: the fleet follows the same AIMD, pacing and budget arithmetic as one process.

The Lua side runs the library the store's scripts are built from (``_scripts.library()``) with
a one-line call of the rule's function, so the numbers are those of the production code, with
the time given explicitly instead of read from Redis's clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from resilience._budget import RetryBudget, RetryBudgetSettings
from resilience._concurrency import cut_limit, grow_limit
from resilience._pacing import PACING, RatePacer
from resilience.redis._scripts import constants, library, source
from tests.redis_server import RedisServer


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


# --------------------------------------------------------------------------- costly gates

# the cost-aware rule's pieces: Lua call -> the Python rule's value
COSTLY_PIECES = [
    ("pace_ramp_start(12, 0.012, 1.0)", PACING.ramp_start(12, 0.012, 1.0)),
    ("pace_ramp_start(500, 5.0, 1.0)", PACING.ramp_start(500, 5.0, 1.0)),
    ("pace_ramp_start(0, 0.5, 2.0)", PACING.ramp_start(0, 0.5, 2.0)),
    ("pace_ramp_rate(12, 0.3, 1.0)", PACING.ramp_rate(12, 0.3, 1.0)),
    ("pace_ramp_rate(12, 1e9, 1.0)", PACING.ramp_rate(12, 1e9, 1.0)),
    ("pace_ramp_limit(266, 1.0, 11)", PACING.ramp_limit(266, 1.0, 11)),
    ("pace_ramp_limit(50, 1.0, 1e6)", PACING.ramp_limit(50, 1.0, 1e6)),
    ("pace_ramp_limit(1000, 2.0, 3)", PACING.ramp_limit(1000, 2.0, 3)),
    ("pace_held_fit(110, 1.0, 1.0, 10, 120)", PACING.held_fit(110, 1.0, 1.0, 10, 120)),
    ("pace_held_fit(20, 0.1, 1.0, 10, 120) or -1", -1),
    ("pace_grow(100, 1.5, 90, 95, 0.95, 2.0)", PACING.grow(100, 1.5, 90, 95, 0.95, 2.0)),
]


@pytest.mark.parametrize(("call", "expected"), COSTLY_PIECES)
def test_the_costly_gate_rule_is_the_same(redis: Redis, call: str, expected: float) -> None:
    assert lua(redis, f"return cjson.encode({{{call}}})") == pytest.approx([expected])


# (seconds, 429?, Retry-After s or None): answers fed in order -> the pacing rate after each
COSTLY_RUNS = [
    # whole-second gates: the first stretch's burst, a slow start, its 429, the hold
    [(i / 1000, False, None) for i in range(12)]
    + [(0.012, True, 1.0)]
    + [(1.012 + i / 50, False, None) for i in range(20)]
    + [(1.45, True, 1.0)]
    + [(2.46 + i / 90, False, None) for i in range(60)],
    # a millisecond gate stays botocore's, then a costly one
    [(i / 100, False, None) for i in range(50)]
    + [(0.5, True, 0.01)]
    + [(0.52 + i / 80, False, None) for i in range(40)]
    + [(1.1, True, 2.0)],
]


@pytest.mark.parametrize("run", COSTLY_RUNS)
def test_the_pacer_follows_costly_gates_alike(redis: Redis, run: list[Any]) -> None:
    clock = FakeClock(0.0)
    pacer = RatePacer(clock=clock)
    expected = []
    for t, limited, retry_after in run:
        clock.now = t
        pacer.on_response(rate_limited=limited, retry_after=retry_after, epoch=pacer.epoch)
        expected.append(-0.001 if pacer.rate is None else math.floor(pacer.rate * 1000) / 1000)
    key = f"rules:costly:{len(run)}"
    redis.delete(key)
    got = json.loads(
        redis.eval(
            library() + "local key, out = KEYS[1], {}"
            " for _, a in ipairs(cjson.decode(ARGV[1])) do"
            "   local epoch = tonumber(redis.call('HGET', key, 'epoch')) or 0"
            "   local _, milli = rate_response(key, a[1] * 1000, a[2], a[3] * 1000, epoch, 60000)"
            "   out[#out + 1] = milli / 1000"
            " end return cjson.encode(out)",
            1,
            key,
            json.dumps([(t, limited, -0.001 if ra is None else ra) for t, limited, ra in run]),
        )
    )
    # Lua rounds the rate to mrps on the way out; -1: not pacing
    assert got == pytest.approx(
        [e if e < 0 else math.floor(e * 1000) / 1000 for e in expected], abs=2e-3
    )


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
