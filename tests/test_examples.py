"""Every script in ``examples/`` runs as-is against the emulator and says what it showed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> lines (or parts of lines) its stdout must contain
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        "job quickstart-1: HTTP 200 {'ok': True, 'job': 'quickstart-1', 'execution': 1}",
        "job quickstart-2: HTTP 402 BILLING_INSUFFICIENT_CREDITS (not retried)",
        "the emulator received 4 requests for 2 jobs",
    ],
    "tuning_backoff.py": [
        "== the default: worst case 15.5 s over 5 retries",
        "total waiting: 0.000s best case, 3.100s worst case",
        "outcome ok after 4 attempts",
    ],
    "fleet.py": [
        "one RedisStore namespace: 90 of 90 jobs done, max in flight 4 of plan 4, "
        "1.00 attempts per job, plan-limit 429s: 0",
        "a LocalStore per process: 90 of 90 jobs done",
    ],
    "polling.py": ["created job-1 (HTTP 202)", "job-1: HTTP 200 {'ok': True, 'id': 'job-1'"],
    "reading_logs.py": ["60 requests:", "code ", "timeline of request "],
    "shared_limiter.py": [
        "one shared store   : limits 4 and 4 (same store: True)",
        "max in flight 4 of plan 4, plan-limit 429s: 0",
        "a store per session: ",
    ],
}


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        # A hang guard, not a speed test: fleet.py starts five processes (16 s at load 8).
        timeout=120,
        check=False,
    )


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    proc = run_example(name)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for expected in EXPECTED[name]:
        assert expected in proc.stdout, f"{expected!r} not in the output of {name}:\n{proc.stdout}"


def test_quickstart_logs_each_attempt_as_a_json_line() -> None:
    proc = run_example("quickstart.py")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["resilience.attempt"] * 4
    assert [e["outcome"] for e in events] == ["retry", "retry", "ok", "fail"]
    assert events[3]["code"] == "BILLING_INSUFFICIENT_CREDITS"


def test_shared_store_sees_fewer_plan_rejections_than_separate_ones() -> None:
    proc = run_example("shared_limiter.py")
    shared, separate = (
        int(line.rsplit(" ", 1)[1]) for line in proc.stdout.splitlines() if "429s:" in line
    )
    assert shared == 0 < separate
