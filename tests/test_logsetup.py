"""configure_logging(): JSON lines of resilience's events, the app's structlog setup untouched."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog

from resilience import configure_logging
from resilience._events import emit
from resilience.testing import Emulator, Fault
from tests.conftest import assert_baseline, middleware

pytestmark = pytest.mark.anyio


async def _two_requests(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:  # retried
            assert resp.status == 200
        async with s.post(emu.url / "v1/generate", json={"job": "b"}) as resp:  # first try
            assert resp.status == 200


async def test_events_go_to_the_file_as_json_lines(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "attempts.jsonl"
    undo = configure_logging(path)
    try:
        await _two_requests(emu)
    finally:
        undo()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    attempts = [e for e in events if e["event"] == "resilience.attempt"]
    # INFO: the retry and its success; the first-attempt success of "b" is DEBUG.
    assert [(e["attempt"], e["outcome"], e["level"]) for e in attempts] == [
        (1, "retry", "info"),
        (2, "ok", "info"),
    ]
    assert all(e["timestamp"].endswith("Z") for e in attempts)


async def test_debug_level_also_logs_first_attempt_successes(emu: Emulator) -> None:
    stream = io.StringIO()
    undo = configure_logging(stream, level="debug")
    try:
        await _two_requests(emu)
    finally:
        undo()
    outcomes = [json.loads(line)["outcome"] for line in stream.getvalue().splitlines()]
    assert outcomes == ["retry", "ok", "ok"]


async def test_the_apps_structlog_configuration_is_left_alone(
    emu: Emulator, tmp_path: Path
) -> None:
    before = structlog.get_config()
    processors = list(before["processors"])
    undo = configure_logging(tmp_path / "a.jsonl")
    try:
        assert structlog.get_config() == before
        assert list(structlog.get_config()["processors"]) == processors
        with structlog.testing.capture_logs() as app_events:
            structlog.get_logger("app").info("app.event", user="u1")
            await _two_requests(emu)
        # The app's own events still reach the app's processors; resilience's go to the file.
        assert [e["event"] for e in app_events] == ["app.event"]
    finally:
        undo()


async def test_undo_restores_the_default_route_and_closes_the_file(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "a.jsonl"
    undo = configure_logging(path)
    undo()
    with structlog.testing.capture_logs() as captured:
        await _two_requests(emu)
    assert path.read_text() == ""
    assert any(e["event"] == "resilience.attempt" for e in captured)


def test_bad_level_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging(level="loud")


# ------------------------------------------------------------------ a sink that fails


def _reports(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("resilience: logging failed")]


async def test_a_closed_log_file_changes_no_outcome_and_leaks_no_permit(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every request logs INFO events into a file that was closed under the logger: each still
    ends in its success (run once), every permit comes back, and the failure is reported on
    stderr once, as stdlib logging reports a broken handler."""
    stream = (tmp_path / "attempts.jsonl").open("w", encoding="utf-8")
    undo = configure_logging(stream)
    stream.close()
    try:
        # A retry, a rate-limit gate and a plan-limit cut: attempt, gate and limit events.
        emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=2)
        emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=5), times=1)
        emu.inject(Fault.code("GENERATION_CONCURRENCY_EXCEEDED"), times=1)
        mw = middleware(max_concurrency=2, max_elapsed=5.0)
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            for job in "abcdef":
                async with s.post(emu.url / "v1/generate", json={"job": job}) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["execution"] == 1
            assert_baseline(s, mw)
    finally:
        undo()
    assert emu.stats.requests == 10
    assert len(_reports(capsys.readouterr().err)) == 1


_CLOSED_STDOUT_SCRIPT = """
import asyncio, sys
import aiohttp
from resilience import Backoff, ResilienceMiddleware
from resilience.testing import Emulator, Fault

async def main():
    async with Emulator(generation_time=0.001) as emu:
        emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=3)
        mw = ResilienceMiddleware(
            backoff=Backoff(initial=0.001, max_delay=0.002), max_concurrency=1, max_elapsed=5.0
        )
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            for job in "abc":
                async with s.post(emu.url / "v1/generate", json={"job": job}) as resp:
                    body = await resp.json()
                    print("job", job, resp.status, body["execution"], file=sys.stderr)
        print("in_flight", mw.store.limiter.in_flight, file=sys.stderr)

asyncio.run(main())
"""


def test_a_closed_stdout_pipe_changes_no_outcome_and_leaks_no_permit() -> None:
    """``python app.py | true``: with no logging set up, events go to stdout, a pipe whose
    reader is gone. No BrokenPipeError (which would look like a network error and invite an
    outer retry of a POST that ran); the requests succeed once each; reported once."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CLOSED_STDOUT_SCRIPT],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    lines = proc.stderr.splitlines()
    assert [line for line in lines if line.startswith(("job", "in_flight"))] == [
        "job a 200 1",
        "job b 200 1",
        "job c 200 1",
        "in_flight 0",
    ], proc.stderr
    assert len(_reports(proc.stderr)) == 1, proc.stderr


# ------------------------------------------------------------------ stacked configurations


def _open_paths() -> set[str]:
    fds = Path("/proc/self/fd")
    paths = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            paths.add(os.readlink(fd))
    return paths


def _lines(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_configurations_stack_and_unstack_independently(tmp_path: Path) -> None:
    """Undoing one configuration removes only it (and closes only its file): the latest one
    still in place receives the events; undoing them all restores the default route."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    undo_first = configure_logging(first)
    undo_second = configure_logging(second)
    emit("test.one", "info")
    undo_first()
    assert str(first) not in _open_paths(), "the first file stays open after its undo"
    emit("test.two", "info")
    undo_first()  # a second undo of the same configuration is harmless
    emit("test.three", "info")
    undo_second()
    assert str(second) not in _open_paths()
    with structlog.testing.capture_logs() as captured:
        emit("test.four", "info")
    assert _lines(first) == []
    assert _lines(second) == ["test.one", "test.two", "test.three"]
    assert [e["event"] for e in captured] == ["test.four"]


def test_undoing_the_latest_configuration_reactivates_the_one_below(tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    undo_first = configure_logging(first)
    undo_second = configure_logging(second)
    emit("test.one", "info")
    undo_second()
    emit("test.two", "info")
    undo_first()
    assert _lines(first) == ["test.two"]
    assert _lines(second) == ["test.one"]
