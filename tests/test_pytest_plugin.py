"""The pytest plugin (entry point ``pytest11``), its fixtures, and the example user test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import aiohttp
import pytest

from resilience.testing import EmulatorThread, Fault, TestMode, testing_mode
from tests.conftest import PLUGIN_ENTRY_POINT, PLUGIN_MODULE

ROOT = Path(__file__).resolve().parents[1]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def plugin_installed() -> bool:
    """Does the installed metadata register the plugin (a stale editable install may not)?"""
    return any(e.name == PLUGIN_ENTRY_POINT for e in entry_points(group="pytest11"))


def test_the_plugin_is_declared_under_pytest11() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.entry-points.pytest11]\n", 1)[1].split("\n\n", 1)[0]
    assert section.strip() == f'{PLUGIN_ENTRY_POINT} = "{PLUGIN_MODULE}"'
    if plugin_installed():
        (plugin,) = [e for e in entry_points(group="pytest11") if e.name == PLUGIN_ENTRY_POINT]
        assert plugin.value == PLUGIN_MODULE


def test_the_emulator_fixture_serves_a_sync_test(resilience_emulator: EmulatorThread) -> None:
    resilience_emulator.inject(Fault.code("DISPATCH_TIMEOUT"))
    url = str(resilience_emulator.url / "v1/ping")
    assert (get(url), get(url)) == (503, 200)
    assert resilience_emulator.stats.requests == 2
    assert resilience_emulator.stats.by_code["DISPATCH_TIMEOUT"] == 1


@pytest.mark.anyio
async def test_the_emulator_fixture_serves_an_async_test(
    resilience_emulator: EmulatorThread,
) -> None:
    async with aiohttp.ClientSession() as s, s.get(resilience_emulator.url / "v1/ping") as resp:
        assert resp.status == 200
    assert [r.path for r in resilience_emulator.received] == ["/v1/ping"]


@pytest.mark.resilience_emulator(plan_concurrency=3, generation_time=0.0)
def test_the_mark_sets_the_emulator_settings(resilience_emulator: EmulatorThread) -> None:
    assert resilience_emulator.config.plan_concurrency == 3
    assert resilience_emulator.configure(rate_limit=5.0).rate_limit == 5.0


@pytest.mark.resilience_testing(attempts=2)
def test_the_testing_fixture_turns_test_mode_on(resilience_testing: TestMode) -> None:
    assert testing_mode() == resilience_testing == TestMode(attempts=2, waits=False)


def test_the_example_user_test_passes_with_the_installed_plugin() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    load = [] if plugin_installed() else ["-p", PLUGIN_MODULE]  # see tests/conftest.py
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *load,
            "examples/user_tests",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


# ------------------------------------------------------------------ EmulatorThread


def test_the_thread_stops_by_itself_after_its_duration() -> None:
    emulator = EmulatorThread(duration=0.05)
    emulator.start()
    thread = emulator._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
    emulator.stop()  # after the duration ended it: a no-op


def test_calls_after_stop_are_a_clear_error() -> None:
    with EmulatorThread() as emulator:
        assert emulator.stats.requests == 0
    with pytest.raises(RuntimeError, match="not running"):
        emulator.stats  # noqa: B018
    with pytest.raises(RuntimeError, match="not running"):
        emulator.url  # noqa: B018


def test_a_port_in_use_fails_the_start_and_leaves_no_thread() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        emulator = EmulatorThread(port=taken.getsockname()[1])
        with pytest.raises(OSError, match=r"address already in use|Errno 98"):
            emulator.start()
    assert emulator._thread is None


def test_errors_inside_the_emulator_reach_the_caller() -> None:
    with EmulatorThread() as emulator, pytest.raises(ValueError, match="plan_concurrency"):
        emulator.configure(plan_concurrency=0)


@pytest.mark.parametrize("duration", [0, -1, float("inf"), "1"])
def test_a_bad_duration_is_a_clear_error(duration: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        EmulatorThread(duration=duration)  # type: ignore[arg-type]
