"""Rate limits as servers announce them, end to end: the emulator's Retry-After styles and
fixed window, and the middleware reading the announcement on every answer."""

from __future__ import annotations

import asyncio
import math
import time
from email.utils import parsedate_to_datetime

import aiohttp
import pytest

from resilience import ResilienceMiddleware
from resilience._decide import OK_ENDING, RequestPolicy
from resilience._quota import Quota, parse_quota
from resilience.testing import Emulator, EmulatorConfig
from resilience.testing._ratelimit import QUOTA_HEADER_STYLES, FixedWindow, quota_headers
from tests.conftest import FAST, local

pytestmark = pytest.mark.anyio


async def post(session: aiohttp.ClientSession, emu: Emulator, job: str) -> aiohttp.ClientResponse:
    async with session.post(emu.url / "v1/generate", json={"job": job}) as resp:
        await resp.read()
        return resp


# ---------------------------------------------------------------- the emulator


@pytest.mark.parametrize("style", ["ms", "seconds", "date"])
async def test_the_rate_limit_answer_says_when_in_the_chosen_style(style: str) -> None:
    async with (
        Emulator(rate_limit=0.5, rate_burst=1, generation_time=0.0, retry_after_style=style) as emu,
        aiohttp.ClientSession() as s,
    ):
        assert (await post(s, emu, "a")).status == 200
        resp = await post(s, emu, "b")
    assert resp.status == 429
    headers = resp.headers
    if style == "date":
        when = parsedate_to_datetime(headers["Retry-After"]).timestamp()
        assert 0 < when - time.time() <= 3.0  # the token frees in 2 s, one-second resolution
        assert "Retry-After-Ms" not in headers
    else:
        assert headers["Retry-After"] == "2"  # whole seconds, rounded up
        assert ("Retry-After-Ms" in headers) is (style == "ms")


def test_a_fixed_window_is_aligned_to_the_wall_clock() -> None:
    window = FixedWindow(2, 10.0)
    assert window.admit(101.0) == (True, 1, 110.0)
    assert window.admit(109.9) == (True, 0, 110.0)
    assert window.admit(109.95) == (False, 0, 110.0)
    assert window.admit(110.0) == (True, 1, 120.0)


@pytest.mark.parametrize("style", [s for s in QUOTA_HEADER_STYLES if s != "none"])
def test_every_announcement_style_reads_back_as_the_same_quota(style: str) -> None:
    wall = 1_700_000_000.25
    headers = quota_headers(style, 100, 1.0, 42, math.floor(wall) + 1.0, wall)
    quota = parse_quota(headers, now=wall)
    assert quota is not None
    assert quota.remaining == 42
    assert quota.limit == 100
    # Delta resets are whole seconds rounded up; a Unix-time reset is exact.
    assert quota.reset == (pytest.approx(0.75) if style == "x-unix" else 1.0)
    assert quota.window == (1.0 if style in ("ietf", "ietf-old") else None)


async def test_the_fixed_window_announces_itself_on_every_answer() -> None:
    async with (
        Emulator(window_limit=2, window_seconds=60.0, quota_headers="ietf") as emu,
        aiohttp.ClientSession() as s,
    ):
        answers = [await post(s, emu, f"j{i}") for i in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    remaining = [parse_quota(a.headers).remaining for a in answers]  # type: ignore[union-attr]
    assert remaining == [1, 0, 0]
    assert all(a.headers["RateLimit-Policy"] == '"window";q=2;w=60' for a in answers)
    assert int(answers[2].headers["Retry-After"]) >= 1


def test_bad_rate_limit_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="retry_after_style"):
        EmulatorConfig(retry_after_style="minutes")
    with pytest.raises(ValueError, match="quota_headers"):
        EmulatorConfig(quota_headers="github")
    with pytest.raises(ValueError, match="window_limit"):
        EmulatorConfig(window_limit=0)
    with pytest.raises(ValueError, match="window_seconds"):
        EmulatorConfig(window_seconds=0)


# ---------------------------------------------------------------- the middleware


async def test_an_announced_quota_holds_sends_until_the_reset_without_a_429() -> None:
    async with (
        Emulator(
            window_limit=5, window_seconds=1.0, quota_headers="x-unix", generation_time=0
        ) as emu,
    ):
        mw = ResilienceMiddleware(backoff=FAST)
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            # Send in the first half of a window, so the batch spans exactly two.
            await asyncio.sleep((0.1 - time.time() % 1.0) % 1.0)
            start = time.monotonic()
            statuses = [
                r.status for r in await asyncio.gather(*(post(s, emu, f"j{i}") for i in range(8)))
            ]
            took = time.monotonic() - start
    assert statuses == [200] * 8
    assert emu.stats.by_code["RATE_LIMITED"] == 0  # held at Remaining 0, not throttled
    assert 0.5 < took < 1.5  # the last three waited for the next window


async def test_a_success_answer_feeds_its_quota_to_the_store() -> None:
    async with Emulator(window_limit=50, window_seconds=60.0, quota_headers="ietf-old") as emu:
        mw = ResilienceMiddleware(backoff=FAST)
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            await post(s, emu, "a")
        pacer = local(mw).pacer(str(emu.url.origin()))
    assert pacer.quota_left == 49


async def test_a_whole_second_retry_after_closes_the_gate_for_a_second() -> None:
    async with Emulator(
        rate_limit=20.0, rate_burst=1, generation_time=0, retry_after_style="seconds"
    ) as emu:
        mw = ResilienceMiddleware(backoff=FAST)
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            start = time.monotonic()
            statuses = [
                r.status for r in await asyncio.gather(*(post(s, emu, f"j{i}") for i in range(3)))
            ]
            took = time.monotonic() - start
    assert statuses == [200] * 3
    assert emu.stats.by_code["RATE_LIMITED"] >= 1
    assert took >= 1.0  # Retry-After: 1 honoured, though a token frees in 50 ms


def policy(max_elapsed: float | None) -> RequestPolicy:
    mw = ResilienceMiddleware(max_elapsed=max_elapsed)
    return RequestPolicy(mw.settings, method="GET", keyed=False, body=None)


def test_an_answer_without_headers_costs_no_new_feedback() -> None:
    p = policy(60.0)
    assert p.feedback(OK_ENDING) is p.feedback(OK_ENDING, None)


def test_a_quota_reset_is_capped_like_a_retry_after() -> None:
    feedback = policy(2.0).feedback(OK_ENDING, Quota(10, None, 0, 3600.0))
    assert feedback is not None
    assert feedback.quota == Quota(10, None, 0, 3.0)  # one deadline plus a second
