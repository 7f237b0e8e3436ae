"""configure_logging(): JSON lines of resilience's events, the app's structlog setup untouched."""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest
import structlog

from resilience import configure_logging
from resilience.testing import Emulator, Fault
from tests.conftest import middleware

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
