"""Test mode (``resilience.testing.set_testing``): users' suites run retries without real waits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import anyio
import pytest

from resilience import Backoff, ResilienceMiddleware
from resilience.testing import Emulator, Fault, TestMode, set_testing, testing_mode
from tests.conftest import Events, attempts

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002)]

SLOW = Backoff(initial=5.0, multiplier=2, max_delay=30.0)  # far longer than any test may take


@pytest.fixture(autouse=True)
def no_test_mode_leaks() -> Iterator[None]:
    assert testing_mode() is None
    yield
    set_testing(False)


async def test_test_mode_retries_without_sleeping(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("UPSTREAM_GENERATION_ERROR"), times=3)
    with set_testing():
        async with aiohttp.ClientSession(middlewares=(ResilienceMiddleware(backoff=SLOW),)) as s:
            with anyio.fail_after(2):
                async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
                    assert resp.status == 200
    assert [e["outcome"] for e in attempts(logs)] == ["retry", "retry", "retry", "ok"]
    assert all(e["delay"] == 0 for e in attempts(logs)[:3])  # the log says no wait was taken


async def test_test_mode_attempts_replace_every_middlewares_max_attempts(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=10)
    with set_testing(attempts=2):
        async with aiohttp.ClientSession(middlewares=(ResilienceMiddleware(backoff=SLOW),)) as s:
            async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
                assert resp.status == 503
    assert emu.stats.requests == 2


async def test_a_long_retry_after_neither_sleeps_nor_closes_the_gate_in_test_mode(
    emu: Emulator,
) -> None:
    emu.inject(Fault.code("RATE_LIMITED", retry_after=30), times=2)
    with set_testing():
        async with aiohttp.ClientSession(middlewares=(ResilienceMiddleware(),)) as s:
            with anyio.fail_after(2):
                for _ in range(2):
                    async with s.get(emu.url / "v1/ping") as resp:
                        assert resp.status == 200
    assert emu.stats.requests == 4


async def test_the_park_after_a_plan_limit_429_does_not_wait_in_test_mode(emu: Emulator) -> None:
    emu.configure(plan_concurrency=1, generation_time=0.02)
    mw = ResilienceMiddleware(initial_concurrency=4, max_elapsed=5.0)
    with set_testing():
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:

            async def one(job: str) -> int:
                async with s.post(emu.url / "v1/generate", json={"job": job}) as resp:
                    return resp.status

            with anyio.fail_after(3):
                assert await asyncio.gather(*(one(str(i)) for i in range(4))) == [200] * 4


async def test_waits_true_keeps_the_waits_and_only_changes_attempts(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"))
    backoff = Backoff(initial=0.05, multiplier=1, max_delay=0.05, jitter="none")
    with set_testing(attempts=3, waits=True):
        async with aiohttp.ClientSession(middlewares=(ResilienceMiddleware(backoff=backoff),)) as s:
            start = anyio.current_time()
            async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
                assert resp.status == 200
            assert anyio.current_time() - start >= 0.05


def test_the_context_manager_restores_the_mode_in_force_before() -> None:
    with set_testing(attempts=3) as outer:
        assert outer == TestMode(attempts=3, waits=False)
        with set_testing(attempts=1):
            assert testing_mode() == TestMode(attempts=1)
        assert testing_mode() == outer
        with set_testing(False):
            assert testing_mode() is None
        assert testing_mode() == outer
    assert testing_mode() is None


def test_a_plain_call_stays_on_until_turned_off() -> None:
    set_testing(attempts=2)
    assert testing_mode() == TestMode(attempts=2)
    set_testing(False)
    assert testing_mode() is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"attempts": 0}, ValueError),
        ({"attempts": True}, TypeError),
        ({"attempts": 1.5}, TypeError),
        ({"waits": "no"}, TypeError),
    ],
)
def test_bad_test_mode_settings_are_clear_errors(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        set_testing(True, **kwargs)  # type: ignore[arg-type]
    assert testing_mode() is None


def test_testing_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="bool"):
        set_testing("yes")  # type: ignore[arg-type]
