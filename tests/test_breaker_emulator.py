"""The emulator's outage mode: every request answered by one transient code, for a time or
until told, in process, over the control endpoint, from the command line."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from resilience.testing import Emulator, EmulatorConfig, EmulatorProcess, Fault

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.anyio


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def status_code(session: aiohttp.ClientSession, url: object) -> tuple[int, str | None]:
    async with session.post(str(url), json={"job": "j"}) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body.get("code")


async def test_outage_until_told_answers_every_request_with_the_code(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(generation_time=0.0) as emu:
        emu.start_outage(code="GENERATION_TIMEOUT")
        emu.inject(Fault.code("RATE_LIMITED"))  # the outage comes before injected faults
        answers = [await status_code(session, emu.url / "v1/generate") for _ in range(5)]
        assert answers == [(504, "GENERATION_TIMEOUT")] * 5
        assert emu.outage_remaining == math.inf
        emu.end_outage()
        assert emu.outage_remaining is None
        emu.clear_faults()
        assert await status_code(session, emu.url / "v1/generate") == (200, None)
        stats = emu.stats
        assert (stats.outage_answers, stats.generations) == (5, 1)


async def test_timed_outage_ends_by_itself(session: aiohttp.ClientSession) -> None:
    async with Emulator(generation_time=0.0, outage_for=0.05) as emu:
        assert await status_code(session, emu.url / "v1/generate") == (503, "DISPATCH_TIMEOUT")
        await anyio.sleep(0.06)
        assert await status_code(session, emu.url / "v1/generate") == (200, None)
        assert emu.outage_remaining is None


async def test_reset_outage_cuts_every_connection(session: aiohttp.ClientSession) -> None:
    async with Emulator(generation_time=0.0) as emu:
        emu.start_outage(code="reset")
        with pytest.raises(aiohttp.ClientConnectionError):
            await status_code(session, emu.url / "v1/generate")
        assert emu.stats.by_code["reset"] == 1


async def test_outage_over_the_control_endpoint(session: aiohttp.ClientSession) -> None:
    async with Emulator(generation_time=0.0) as emu:
        configure = emu.url / "_emulator/configure"
        async with session.post(configure, json={"outage_for": 30.0}) as resp:
            assert resp.status == 200
        assert await status_code(session, emu.url / "v1/generate") == (503, "DISPATCH_TIMEOUT")
        async with session.post(configure, json={"outage_for": None}) as resp:
            assert resp.status == 200
        assert await status_code(session, emu.url / "v1/generate") == (200, None)
        async with session.get(emu.url / "_emulator/stats") as resp:
            assert (await resp.json())["outage_answers"] == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"outage_for": 0}, "outage_for must be"),
        ({"outage_for": -1.0}, "outage_for must be"),
        ({"outage_for": True}, "outage_for must be"),
        ({"outage_code": "RATE_LIMITED"}, "outage_code must be a transient code"),
        ({"outage_code": "VALIDATION_ERROR"}, "outage_code must be a transient code"),
    ],
)
def test_bad_outage_settings_are_rejected(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(**settings)  # type: ignore[arg-type]


async def test_emulator_process_starts_in_an_outage(session: aiohttp.ClientSession) -> None:
    async with EmulatorProcess(generation_time=0.0, outage_for=math.inf, duration=30) as proc:
        assert await status_code(session, proc.url / "v1/generate") == (503, "DISPATCH_TIMEOUT")
        async with session.post(
            proc.url / "_emulator/configure", json={"outage_for": None}
        ) as resp:
            assert resp.status == 200
        assert await status_code(session, proc.url / "v1/generate") == (200, None)


def test_cli_rejects_a_non_transient_outage_code() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "resilience.testing", "--outage-code", "RATE_LIMITED"],
        capture_output=True,
        env=env,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert b"argument --outage-code: not a transient code" in done.stderr
