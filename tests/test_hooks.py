"""Hooks: every attempt's start and end and every wait, through a real session and the emulator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from resilience import AttemptRecord, DeadlineExceeded, Outcome, ResilienceMiddleware
from resilience.instrumentation import AttemptStart, Hook, WaitRecord
from resilience.testing import Emulator, Fault
from tests.conftest import Events, middleware, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.005)]


class Recorder(Hook):
    """Keeps what it is told, in order."""

    def __init__(self) -> None:
        self.starts: list[AttemptStart] = []
        self.ends: list[tuple[AttemptRecord, AttemptStart | None]] = []
        self.waits: list[WaitRecord] = []
        self.order: list[str] = []

    def on_attempt_start(self, start: AttemptStart) -> None:
        self.starts.append(start)
        self.order.append(f"start {start.attempt}")

    def on_attempt_end(self, record: AttemptRecord, start: AttemptStart | None) -> None:
        self.ends.append((record, start))
        self.order.append(f"end {record.attempt} {record.outcome.value}")

    def on_wait(self, wait: WaitRecord) -> None:
        self.waits.append(wait)
        self.order.append(f"wait {wait.kind}")


class Raising(Hook):
    def on_attempt_start(self, start: AttemptStart) -> None:
        raise RuntimeError("start")

    def on_attempt_end(self, record: AttemptRecord, start: AttemptStart | None) -> None:
        raise RuntimeError("end")

    def on_wait(self, wait: WaitRecord) -> None:
        raise RuntimeError("wait")


async def test_a_hook_sees_each_attempt_start_and_end_and_the_wait_between(emu: Emulator) -> None:
    emu.inject(Fault.code("UPSTREAM_GENERATION_ERROR"))
    hook = Recorder()
    url = emu.url.with_path("/v1/generate").with_query(api_key="s3cret")
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]),)) as s:
        async with s.post(url, json={"job": "a"}) as resp:
            assert resp.status == 200

    assert hook.order == ["start 1", "end 1 retry", "wait sleep", "start 2", "end 2 ok"]
    (first, first_start), (second, second_start) = hook.ends
    assert (first_start, second_start) == (hook.starts[0], hook.starts[1])  # the same values
    assert first.request_id == second.request_id == hook.starts[0].request_id
    assert (first.status, first.code, first.handling) == (
        502,
        "UPSTREAM_GENERATION_ERROR",
        "transient",
    )
    assert second.outcome is Outcome.OK
    assert second.status == 200
    assert "s3cret" not in first.url
    assert "s3cret" not in hook.starts[0].url
    assert first.origin == hook.starts[0].origin == str(emu.url.origin())
    start = hook.starts[1]
    assert (start.method, start.server_address, start.server_port) == (
        "POST",
        "127.0.0.1",
        emu.url.port,
    )
    assert (hook.starts[0].resend_count, start.resend_count) == (0, 1)
    (wait,) = hook.waits
    assert (wait.attempt, wait.outcome, wait.request_id) == (1, Outcome.RETRY, first.request_id)
    assert first.delay is not None
    assert wait.delay == first.delay
    assert wait.waited >= 0


async def test_the_values_a_hook_gets_are_immutable(emu: Emulator) -> None:
    hook = Recorder()
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            await resp.read()
    ((record, start),) = hook.ends
    assert start is not None
    with pytest.raises(FrozenInstanceError):
        record.status = 500  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        start.attempt = 2  # type: ignore[misc]


async def test_a_hook_adds_a_header_to_each_attempt_before_it_is_sent(emu: Emulator) -> None:
    class Stamp(Hook):
        def on_attempt_start(self, start: AttemptStart) -> None:
            start.headers["X-Attempt"] = str(start.attempt)

    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=2)
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[Stamp()]),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    assert [r.headers["X-Attempt"] for r in emu.received] == ["1", "2", "3"]


async def test_a_raising_hook_is_logged_once_and_breaks_no_request(
    emu: Emulator, logs: Events
) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"))
    behind = Recorder()
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[Raising(), behind]),)) as s:
        for job in ("a", "b"):
            async with s.post(emu.url / "v1/generate", json={"job": job}) as resp:
                assert resp.status == 200
    failures = [e for e in logs if e["event"] == "resilience.hook"]
    assert len(failures) == 1
    assert failures[0]["method"] == "on_attempt_start"
    assert failures[0]["error"] == "RuntimeError: start"
    assert len(behind.ends) == 3  # the hook after the raising one still saw every attempt
    assert emu.stats.requests == 3


async def test_each_raising_hook_is_logged_once(emu: Emulator, logs: Events) -> None:
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[Raising(), Raising()]),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    assert len([e for e in logs if e["event"] == "resilience.hook"]) == 2


async def test_an_attempt_never_sent_ends_without_a_start(emu: Emulator) -> None:
    # A Retry-After past the deadline: the first request gives up and closes the gate, the
    # second finds it closed for longer than its max_elapsed and is never sent.
    emu.inject(Fault.code("RATE_LIMITED", retry_after=30))
    hook = Recorder()
    mw = middleware(hooks=[hook], max_elapsed=1.0)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 429
        with pytest.raises(DeadlineExceeded):
            await s.get(emu.url / "v1/ping")
    assert emu.stats.requests == 1
    assert len(hook.starts) == 1
    (record, start) = hook.ends[-1]
    assert start is None
    assert (record.outcome, record.reason, record.status) == (Outcome.GIVE_UP, "deadline", None)
    assert hook.ends[0][0].gate is not None  # the answer that closed the gate says so


async def test_the_park_after_a_plan_limit_429_is_a_park_wait(emu: Emulator) -> None:
    emu.configure(plan_concurrency=1, generation_time=0.05)
    hook = Recorder()
    mw = middleware(hooks=[hook], initial_concurrency=2)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:

        async def one(job: str) -> int:
            async with s.post(emu.url / "v1/generate", json={"job": job}) as resp:
                return resp.status

        assert list(await asyncio.gather(one("a"), one("b"))) == [200, 200]
    assert "park" in {w.kind for w in hook.waits}
    assert {r.outcome for r, _ in hook.ends} >= {Outcome.THROTTLED, Outcome.OK}


async def test_a_rate_limit_with_retry_after_is_a_gate_wait_taken_at_admission(
    emu: Emulator,
) -> None:
    emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=30))
    hook = Recorder()
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    (wait,) = hook.waits
    assert (wait.kind, wait.delay) == ("gate", 0.03)
    assert wait.waited < 0.03  # the loop does not sleep: the gate holds the next admission
    assert hook.starts[1].waited >= 0.02
    assert hook.ends[0][0].gate == 0.03


async def test_every_started_attempt_ends_when_the_caller_times_out(emu: Emulator) -> None:
    hook = Recorder()
    timeout = aiohttp.ClientTimeout(total=0.05)
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]),)) as s:
        with pytest.raises(asyncio.TimeoutError):
            await s.get(emu.url.with_path("/v1/slow").with_query(delay="1"), timeout=timeout)
    assert len(hook.starts) == len(hook.ends) == 1
    record, start = hook.ends[0]
    assert start is hook.starts[0]
    assert record.reason == "timeout"


def test_a_hook_must_have_the_three_methods() -> None:
    with pytest.raises(TypeError, match="on_attempt_start"):
        ResilienceMiddleware(hooks=[object()])  # type: ignore[list-item]


def test_hooks_are_given_as_a_sequence_not_one_hook() -> None:
    with pytest.raises(TypeError, match="sequence"):
        ResilienceMiddleware(hooks=Recorder())  # type: ignore[arg-type]


async def test_every_started_attempt_ends_when_the_caller_cancels(emu: Emulator) -> None:
    hook = Recorder()
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]),)) as s:
        task = asyncio.create_task(s.get(emu.url.with_path("/v1/slow").with_query(delay="1")))
        await wait_until(lambda: bool(hook.starts))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ((record, start),) = hook.ends
    assert start is hook.starts[0]
    assert (record.outcome, record.reason, record.error) == (
        Outcome.FAIL,
        "cancelled",
        "CancelledError",
    )


async def test_an_attempt_stopped_by_a_bug_further_in_ends_for_the_hooks_only(
    emu: Emulator, logs: Events
) -> None:
    async def broken(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> Any:
        raise RuntimeError("a bug in an inner middleware")

    hook = Recorder()
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]), broken)) as s:
        with pytest.raises(RuntimeError, match="inner middleware"):
            await s.get(emu.url / "v1/ping")
    ((record, start),) = hook.ends
    assert start is hook.starts[0]
    assert (record.outcome, record.reason, record.error) == (Outcome.FAIL, "error", "RuntimeError")
    assert not [e for e in logs if e["event"] == "resilience.attempt"]  # the log never has it


def test_the_backends_are_imported_only_when_first_used() -> None:
    code = (
        "import sys, resilience, resilience.instrumentation as i\n"
        "assert 'opentelemetry' not in sys.modules and 'prometheus_client' not in sys.modules\n"
        "i.PrometheusHook\n"
        "assert 'prometheus_client' in sys.modules and 'opentelemetry' not in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
