"""The command line: ``python -m resilience {demo,backoff,logs}``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.cli import main
from resilience.cli._demo_run import DEFAULT_EMULATOR, DemoSettings, run_demo
from resilience.logs import summarize

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    return subprocess.run(
        [sys.executable, "-m", "resilience", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
        check=False,
    )


def attempt_events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event["event"] == "resilience.attempt":
            events.append(event)
    return events


def summary_value(stdout: str, label: str) -> int:
    match = re.search(rf"^\s*{label}\s+([\d,]+)", stdout, re.MULTILINE)
    assert match is not None, f"no {label!r} row in:\n{stdout}"
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One small demo run (about 1.5 s): its stdout and its log file."""
    log = tmp_path_factory.mktemp("demo") / "attempts.jsonl"
    proc = run_cli("demo", "--jobs", "40", "--quiet", "--log-file", str(log))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout, log


# ------------------------------------------------------------------ demo


def test_demo_prints_the_summary(demo_run: tuple[str, Path]) -> None:
    stdout, _ = demo_run
    assert "Summary" in stdout
    assert summary_value(stdout, "jobs") == 40
    assert summary_value(stdout, "ok") + summary_value(stdout, "failed") == 40
    assert summary_value(stdout, "duplicate executions") == 0
    plan = DEFAULT_EMULATOR.plan_concurrency
    assert plan is not None
    assert summary_value(stdout, "max in flight") <= plan
    assert "Attempts by code" in stdout


def test_demo_log_has_one_attempt_event_per_emulator_request(demo_run: tuple[str, Path]) -> None:
    stdout, log = demo_run
    events = attempt_events(log)
    assert len(events) == summary_value(stdout, "emulator requests")
    assert len(events) == summary_value(stdout, "attempts")
    assert {e["outcome"] for e in events} <= {"ok", "retry", "throttled", "give_up", "fail"}
    terminal = [e for e in events if e["outcome"] in ("ok", "give_up", "fail")]
    assert len(terminal) == 40  # one logical request per job


def test_demo_appends_and_summarizes_only_its_own_run(tmp_path: Path) -> None:
    log = tmp_path / "attempts.jsonl"
    log.write_text('{"event": "resilience.attempt", "outcome": "fail", "code": "OLD"}\n')
    proc = run_cli("demo", "--jobs", "5", "--quiet", "--log-file", str(log), "--fatal-rate", "0")
    assert proc.returncode == 0, proc.stderr
    assert "OLD" not in proc.stdout
    assert log.read_text().startswith('{"event": "resilience.attempt", "outcome": "fail"')


@pytest.mark.anyio
async def test_demo_stops_by_itself_at_the_timeout() -> None:
    result = await run_demo(DemoSettings(jobs=300, timeout=0.3))
    assert result.cancelled > 0
    assert result.jobs_ok + result.jobs_failed + result.cancelled == 300
    assert result.wall_time < 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--jobs", "-1"], "argument --jobs: must be in [1, 10000], got -1"),
        (["demo", "--jobs", "many"], "argument --jobs: not an integer"),
        (["demo", "--jitter", "wild"], "argument --jitter: invalid choice: 'wild'"),
        (["demo", "--initial", "-1"], "argument --initial: must be >= 0"),
        (["demo", "--initial", "2", "--max-delay", "1"], "max_delay (1.0) must be >= initial"),
        (["demo", "--multiplier", "0.5"], "multiplier must be >= 1"),
        (["demo", "--transient-rate", "0.7", "--fatal-rate", "0.7"], "must be at most 1"),
        (["demo", "--reset-rate", "2"], "argument --reset-rate: must be a probability"),
        (["demo", "--rate-limit", "fast"], "argument --rate-limit: not a number"),
        (["demo", "--max-elapsed", "inf"], "argument --max-elapsed: must be a finite number"),
        (["demo", "--max-attempts", "0"], "argument --max-attempts: must be in [1, 1000]"),
        (["demo", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["backoff", "--multiplier", "0.5"], "Backoff.multiplier must be >= 1"),
        (["backoff", "--retries", "-1"], "argument --retries: must be in [0, 1000]"),
        (["backoff", "--initial", "nan"], "argument --initial: must be a finite number"),
        ([], "the following arguments are required: COMMAND"),
        (["frob"], "invalid choice: 'frob'"),
    ],
)
def test_bad_options_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "error:" in err
    assert "Traceback" not in err


def test_unwritable_log_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--log-file", str(tmp_path / "missing" / "log.jsonl")]) == 2
    assert "cannot write --log-file" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("demo", "backoff", "logs"))
    assert main(["demo", "--help"]) == 0
    assert "--plan-concurrency" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("resilience ")


# ------------------------------------------------------------------ backoff


def test_backoff_prints_the_schedule_and_worst_case(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["backoff", "--initial", "0.5", "--retries", "3", "--jitter", "none"]
    assert main([*argv, "--max-elapsed", "2"]) == 0
    out = capsys.readouterr().out
    assert "Backoff(initial=0.5, multiplier=2.0, max_delay=30.0, jitter='none')" in out
    rows = [line for line in out.splitlines() if re.match(r"^\W*\d+\W+\d+\.\d{3}", line)]
    assert len(rows) == 3
    assert re.search(r"\b3\D+2\.000\D+2\.000\D+2\.000\D+3\.500\D+3\.500\D+gives up", rows[2])
    assert "Worst case 3.500 s of waiting over 3 retries" in out
    assert "max_elapsed 2 s stops retries from 3 on in the worst case" in out


def test_backoff_default_full_jitter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backoff"]) == 0
    out = capsys.readouterr().out
    assert "Worst case 7.500 s of waiting over 4 retries (best case 0.000 s)" in out
    assert "every retry fits" in out


def test_missing_rich_prints_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    assert main(["backoff"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'resilience[cli]'" in err
    assert len(err.strip().splitlines()) == 1


def test_python_dash_m_runs_main() -> None:
    proc = run_cli("backoff", "--retries", "2", "--max-elapsed", "none")
    assert proc.returncode == 0, proc.stderr
    assert "Worst case 1.500 s" in proc.stdout
    assert "max_elapsed" not in proc.stdout


# ------------------------------------------------------------------ logs


def test_logs_reads_the_demo_log(
    demo_run: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, log = demo_run
    assert main(["logs", str(log)]) == 0
    out = capsys.readouterr().out
    assert "Retry log summary" in out
    assert "Attempts by code" in out
    assert main(["logs", str(log), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["attempts"] == len(attempt_events(log))
    assert doc["requests"]["total"] == 40


def test_logs_reads_stdin(demo_run: tuple[str, Path]) -> None:
    _, log = demo_run
    proc = run_cli("logs", "-", "--json", stdin=log.read_bytes())
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    with log.open("rb") as lines:
        assert doc["attempts"] == summarize(lines).attempt_events == len(attempt_events(log))


def test_logs_errors_come_from_the_log_reader(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "/nonexistent/attempts.jsonl"]) == 2
    assert "cannot read /nonexistent/attempts.jsonl" in capsys.readouterr().err
