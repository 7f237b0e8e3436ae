"""The breaker enforced in process: held requests wait unsent, one probe, ordered slow start."""

from __future__ import annotations

import time

import anyio
import pytest

from resilience._breaker import BreakerState, CircuitBreaker, Tally
from resilience._circuit import Circuit, CircuitTicket, LocalBreakers
from resilience._errors import CircuitOpen, DeadlineExceeded
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio
ORIGIN = "http://127.0.0.1:1"
BREAK = 0.05
SETTINGS = CircuitBreaker(
    minimum_throughput=3, break_duration=BREAK, max_break_duration=0.2, probe_timeout=5.0
)


def circuit() -> Circuit:
    return Circuit(LocalBreakers(SETTINGS))


async def admit(c: Circuit, deadline: float | None) -> CircuitTicket:
    """What a store does around its own admission (``admit_through``), without a permit."""
    held = 0.0
    while True:
        held += await c.enter(ORIGIN, deadline)
        ticket = await c.commit(ORIGIN, deadline, held)
        if ticket is not None:
            return ticket


async def trip(c: Circuit) -> None:
    tickets = [await admit(c, None) for _ in range(SETTINGS.minimum_throughput)]
    for ticket in tickets:
        await c.report(ticket, Tally.FAILURE, "DISPATCH_TIMEOUT")
    assert c.rule.state(ORIGIN)[0] is BreakerState.OPEN


async def test_closed_breaker_lets_requests_through_at_once() -> None:
    c = circuit()
    ticket = await admit(c, time.monotonic() + 1)
    assert (ticket.held, ticket.decision.probe) == (0.0, False)


async def test_request_that_cannot_outlast_the_break_fails_at_once_with_circuit_open() -> None:
    c = circuit()
    await trip(c)
    began = time.monotonic()
    with pytest.raises(CircuitOpen) as info:
        await admit(c, time.monotonic() + BREAK / 5)
    assert time.monotonic() - began < BREAK / 2
    error = info.value
    assert (error.origin, error.last_code) == (ORIGIN, "DISPATCH_TIMEOUT")
    assert 0 < error.retry_in <= BREAK
    assert "DISPATCH_TIMEOUT" in str(error)


async def test_held_requests_wait_for_one_probe_and_go_after_its_success() -> None:
    c = circuit()
    await trip(c)
    passed: list[CircuitTicket] = []

    async def job() -> None:
        passed.append(await admit(c, time.monotonic() + 5))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(job)
        await wait_until(lambda: bool(passed), 2)
        await anyio.sleep(BREAK / 2)
        assert len(passed) == 1, "exactly one probe while half-open"
        probe = passed[0]
        assert probe.decision.probe
        assert probe.held > 0  # it waited for the break (the exact span depends on the start)
        await c.report(probe, Tally.SUCCESS, None)
        with anyio.fail_after(2):
            while len(passed) < 20:
                # Answer whatever went out: the slow start releases the rest as they succeed.
                for ticket in passed[1:]:
                    await c.report(ticket, Tally.SUCCESS, None)
                await anyio.sleep(0.001)
    assert not any(t.decision.probe for t in passed[1:])
    assert c.rule.state(ORIGIN)[0] is BreakerState.CLOSED


async def test_slow_start_releases_held_requests_gradually() -> None:
    c = circuit()
    # Four in flight before the outage: the ramp comes back up to that.
    before = [await admit(c, None) for _ in range(4)]
    for ticket in before[:3]:
        await c.report(ticket, Tally.FAILURE, "DISPATCH_TIMEOUT")
    c.abandon(before[3])
    passed: list[CircuitTicket] = []

    async def job() -> None:
        passed.append(await admit(c, None))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(job)
        await wait_until(lambda: bool(passed), 2)
        await c.report(passed[0], Tally.SUCCESS, None)  # the probe
        await anyio.sleep(0.01)
        assert len(passed) == 3, "two go out after the probe, not all nine"
        await c.report(passed[1], Tally.SUCCESS, None)
        await anyio.sleep(0.01)
        assert len(passed) == 5  # one freed + one more of cap: 2 -> 3 in flight
        for ticket in passed[2:]:
            await c.report(ticket, Tally.SUCCESS, None)
        with anyio.fail_after(2):
            while len(passed) < 10:
                for ticket in passed:
                    if not ticket.ended:
                        await c.report(ticket, Tally.SUCCESS, None)
                await anyio.sleep(0.002)


async def test_failed_probe_refuses_waiters_that_cannot_outlast_the_grown_break() -> None:
    c = circuit()
    await trip(c)
    errors: list[BaseException] = []
    probes: list[CircuitTicket] = []

    async def job(deadline_in: float) -> None:
        try:
            ticket = await admit(c, time.monotonic() + deadline_in)
        except CircuitOpen as exc:
            errors.append(exc)
        else:
            probes.append(ticket)

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, 5.0)  # the probe
        await anyio.sleep(BREAK * 1.5)
        tg.start_soon(job, BREAK * 1.6)  # holds behind the probe; cannot outlast a 2x break
        await anyio.sleep(0.005)
        assert len(probes) == 1
        began = time.monotonic()
        await c.report(probes[0], Tally.FAILURE, "GENERATION_TIMEOUT")
        await wait_until(lambda: bool(errors), 1)
        assert time.monotonic() - began < BREAK / 2, "refused at the failed probe, not later"
    error = errors[0]
    assert isinstance(error, CircuitOpen)
    assert error.last_code == "GENERATION_TIMEOUT"


async def test_held_request_whose_deadline_passes_fails_with_circuit_open() -> None:
    c = circuit()
    await trip(c)
    probe = None

    async def first() -> None:
        nonlocal probe
        probe = await admit(c, None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.sleep(BREAK * 1.5)
        assert probe is not None
        with pytest.raises(CircuitOpen):
            await admit(c, time.monotonic() + 0.02)
        c.abandon(probe)


async def test_abandoned_probe_lets_the_next_held_request_probe() -> None:
    c = circuit()
    await trip(c)
    passed: list[CircuitTicket] = []

    async def job() -> None:
        passed.append(await admit(c, None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        tg.start_soon(job)
        await wait_until(lambda: bool(passed), 2)
        c.abandon(passed[0])
        c.abandon(passed[0])  # idempotent
        await wait_until(lambda: len(passed) >= 2, 2)
        assert passed[1].decision.probe
        await c.report(passed[1], Tally.SUCCESS, None)


async def test_cancelled_waiter_leaves_the_line() -> None:
    c = circuit()
    await trip(c)
    passed: list[CircuitTicket] = []
    scopes: list[anyio.CancelScope] = []

    async def job() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            passed.append(await admit(c, None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await wait_until(lambda: bool(passed), 2)
        tg.start_soon(job)  # first in line
        tg.start_soon(job)  # second
        await anyio.sleep(0.005)
        scopes[1].cancel()
        await anyio.sleep(0.005)
        assert len(c._origin(ORIGIN).waiters) == 1
        await c.report(passed[0], Tally.SUCCESS, None)  # the second goes, nobody is stuck
        await wait_until(lambda: len(passed) >= 2, 2)
    assert len(passed) == 2


async def test_ramp_with_no_room_before_the_deadline_is_a_deadline_error() -> None:
    c = circuit()
    await trip(c)
    await anyio.sleep(BREAK)
    probe = await admit(c, None)
    await c.report(probe, Tally.SUCCESS, None)
    held = [await admit(c, None) for _ in range(2)]  # the ramp's first two
    with pytest.raises(DeadlineExceeded, match="no room at the circuit breaker"):
        await admit(c, time.monotonic() + 0.01)
    for ticket in held:
        await c.report(ticket, Tally.SUCCESS, None)


async def test_state_changes_are_logged(logs: list[dict[str, object]]) -> None:
    c = circuit()
    await trip(c)
    with pytest.raises(CircuitOpen):
        await admit(c, time.monotonic())
    await anyio.sleep(BREAK)
    probe = await admit(c, None)
    await c.report(probe, Tally.SUCCESS, None)
    await c.report(await admit(c, None), Tally.SUCCESS, None)
    states = [e["state"] for e in logs if e["event"] == "resilience.circuit"]
    assert states[0] == "open"
    assert states[-1] == "closed"
