"""The happy path (``Store.try_admit`` and ``Admission.succeeded``, no awaits) is a shortcut, not
a second policy: the same sequence of answers leaves the same outcomes and the same limits
whether requests take it or are forced through ``admit()`` and ``report()``."""

from __future__ import annotations

import aiohttp
import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import Backoff, Feedback, LocalStore, ResilienceMiddleware
from resilience._store import Admission
from resilience.testing import Emulator, Fault

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.001, multiplier=2, max_delay=0.002)


class _Forced:
    """An admission that refuses the shortcut: every success goes through ``report()``."""

    def __init__(self, inner: Admission) -> None:
        self._inner = inner

    @property
    def limit(self) -> int:
        return self._inner.limit

    async def report(self, feedback: Feedback) -> None:
        await self._inner.report(feedback)

    def succeeded(self) -> bool:
        return False

    def release(self) -> None:
        self._inner.release()

    async def wait_for_release(self, timeout: float) -> None:
        await self._inner.wait_for_release(timeout)


class SlowPathStore(LocalStore):
    """A LocalStore whose requests never take the happy path."""

    def try_admit(self, origin: str) -> Admission | None:
        return None

    async def admit(self, origin: str, deadline: float | None) -> Admission:
        return _Forced(await super().admit(origin, deadline))


ANSWERS = {
    "ok": None,
    "503": Fault.code("DISPATCH_TIMEOUT"),
    "422": Fault.code("VALIDATION_ERROR"),
    "429-plan": Fault.code("GENERATION_CONCURRENCY_EXCEEDED", retry_after_ms=1),
    "429-rate": Fault.code("RATE_LIMITED", retry_after_ms=1),
    "reset": Fault.reset(),
}


def _state(store: LocalStore, origin: str) -> tuple[object, ...]:
    """What the limits learned: the limit and its growth, the pacing, the budget."""
    limiter = store.limiter
    pacer = store.pacer(origin)
    budget = store.budget
    assert budget is not None
    return (
        limiter.limit,
        limiter._slow_start,
        round(limiter._growth, 9),
        limiter.in_flight,
        pacer.epoch,
        pacer.rate is not None,
        sum(budget._deposits),
        sum(budget._withdrawals),
    )


async def _run(store: LocalStore, answers: list[str]) -> tuple[list[int], int, tuple[object, ...]]:
    async with Emulator() as emu:
        emu.configure(generation_time=0.0)
        # Faults are consumed in order by the attempts, retries included; "ok" adds none.
        for name in answers:
            fault = ANSWERS[name]
            if fault is not None:
                emu.inject(fault)
        mw = ResilienceMiddleware(store=store, backoff=FAST, max_attempts=3)
        statuses = []
        async with aiohttp.ClientSession(middlewares=(mw,)) as session:
            for i in range(len(answers)):
                try:
                    async with session.post(emu.url / "v1/generate", json={"job": f"j{i}"}) as resp:
                        await resp.read()
                        statuses.append(resp.status)
                except aiohttp.ClientError as exc:
                    statuses.append(-len(type(exc).__name__))
        return statuses, emu.stats.requests, _state(store, str(emu.url.origin()))


async def test_a_healthy_request_takes_the_happy_path() -> None:
    store = LocalStore()
    taken: list[Admission | None] = []
    original = store.try_admit

    def spy(origin: str) -> Admission | None:
        admission = original(origin)
        taken.append(admission)
        return admission

    store.try_admit = spy  # type: ignore[method-assign]
    async with (
        Emulator() as emu,
        aiohttp.ClientSession(middlewares=(ResilienceMiddleware(store=store),)) as session,
    ):
        for i in range(3):
            async with session.post(emu.url / "v1/generate", json={"job": f"j{i}"}) as resp:
                assert resp.status == 200
    # The first request meets a new origin (admit() sets it up); the next ones go straight.
    assert taken[0] is None
    assert all(admission is not None for admission in taken[1:])


async def test_no_happy_path_while_the_gate_is_closed_or_pacing_is_on() -> None:
    store = LocalStore()
    async with (
        Emulator() as emu,
        aiohttp.ClientSession(
            middlewares=(ResilienceMiddleware(store=store, backoff=FAST),)
        ) as session,
    ):
        origin = str(emu.url.origin())
        async with session.post(emu.url / "v1/generate", json={"job": "j0"}) as resp:
            assert resp.status == 200
        emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=50))
        async with session.post(emu.url / "v1/generate", json={"job": "j1"}) as resp:
            assert resp.status == 200
        assert store.pacer(origin).active  # pacing on after a 429: every send queues
        assert store.try_admit(origin) is None


async def test_no_happy_path_when_every_permit_is_taken() -> None:
    store = LocalStore(initial_concurrency=1, max_concurrency=1)
    async with (
        Emulator() as emu,
        aiohttp.ClientSession(middlewares=(ResilienceMiddleware(store=store),)) as session,
    ):
        origin = str(emu.url.origin())
        async with session.post(emu.url / "v1/generate", json={"job": "j0"}) as resp:
            assert resp.status == 200
        held = store.try_admit(origin)
        assert held is not None
        assert store.try_admit(origin) is None  # the limit (1) is reached
        held.release()
        again = store.try_admit(origin)
        assert again is not None
        again.release()


SEQUENCES = st.lists(st.sampled_from(sorted(ANSWERS)), min_size=1, max_size=8)


# Each example runs in its own event loop (anyio.run), as tests/test_properties.py does.
@settings(max_examples=25, deadline=None)
@given(SEQUENCES)
def test_the_happy_path_changes_no_outcome_and_no_limit(answers: list[str]) -> None:
    fast = anyio.run(_run, LocalStore(circuit_breaker=None), answers)
    slow = anyio.run(_run, SlowPathStore(circuit_breaker=None), answers)
    assert fast == slow


@settings(max_examples=15, deadline=None)
@given(SEQUENCES)
def test_the_happy_path_changes_no_outcome_behind_the_breaker(answers: list[str]) -> None:
    fast = anyio.run(_run, LocalStore(), answers)
    slow = anyio.run(_run, SlowPathStore(), answers)
    assert fast == slow
