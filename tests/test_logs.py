"""The attempt-log reader: :mod:`resilience.logs` and ``python -m resilience logs``."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import resilience.logs
from resilience import CodeTable, ErrorSpec, cli
from resilience.cli import _logs
from resilience.cli._logs import render_text, render_timeline
from resilience.logs import (
    CodeRow,
    LogSummary,
    RequestRow,
    summarize,
    summary_to_json,
    timeline,
)

ROOT = Path(__file__).resolve().parents[1]


def ev(**fields: Any) -> str:
    """One attempt-event line, as structlog's JSONRenderer writes it."""
    return json.dumps({"event": "resilience.attempt", **fields})


SAMPLE: list[str] = [
    ev(
        level="info",
        timestamp="2026-11-25T12:00:00.123Z",
        request_id="req-a",
        attempt=1,
        method="POST",
        url="http://127.0.0.1:8080/v1/generate",
        status=503,
        code="DISPATCH_TIMEOUT",
        handling="transient",
        retryable=True,
        outcome="retry",
        reason=None,
        delay=0.42,
        elapsed=0.05,
        duration=0.05,
        waited=0.0,
        server_request_id="srv-1",
        error=None,
        limit=8,
    ),
    "not json {",
    json.dumps({"event": "resilience.limit", "limit": 7}),
    # A transport error: no status, no code, the exception class in `error`.
    ev(
        request_id="req-a",
        attempt=2,
        status=None,
        code=None,
        error="ServerDisconnectedError",
        outcome="retry",
        delay=0.8,
        elapsed=0.52,
        server_request_id=None,
    ),
    ev(
        request_id="req-a",
        attempt=3,
        status=200,
        code=None,
        outcome="ok",
        delay=None,
        elapsed=1.41,
        server_request_id="srv-3",
    ),
    ev(request_id="req-b", attempt=1, status=429, code="RATE_LIMITED", outcome="throttled"),
    ev(
        request_id="req-b",
        attempt=2,
        status=503,
        code="DISPATCH_TIMEOUT",
        outcome="give_up",
        reason="max_attempts",
        delay=None,
        elapsed=2.5,
        server_request_id="srv-9",
    ),
    ev(
        request_id="req-c",
        attempt=1,
        status=402,
        code="BILLING_INSUFFICIENT_CREDITS",
        outcome="fail",
        reason="not_retryable",
        elapsed=0.03,
        server_request_id="srv-10",
    ),
    ev(request_id="req-d", attempt="x", outcome="ok", elapsed=0.1),  # malformed
    ev(request_id="req-d", attempt=1, outcome="ok", elapsed="slow"),  # malformed
    ev(
        request_id="req-e",
        attempt=1,
        status=425,
        code="JOB_NOT_READY",
        outcome="not_ready",
        delay=0.25,
        elapsed=0.02,
    ),
    "",
    ev(
        request_id="req-f",
        attempt=1,
        status=None,
        code=None,
        error="ClientConnectorError",
        outcome="give_up",
        reason="deadline",
        elapsed=0.9,
    ),
    "[1, 2]",
    '"resilience.attempt"',
    # Its terminal event is not in the log (cut short): attempts count, requests do not.
    ev(request_id="req-g", attempt=1, status=502, code=None, outcome="retry", delay=0.0),
]


def row(code: str, attempts: int, retried: int = 0, gave_up: int = 0, failed: int = 0) -> CodeRow:
    return CodeRow(code, attempts, retried, gave_up, failed)


def render(summary: LogSummary) -> str:
    out = io.StringIO()
    render_text(summary, Console(file=out, width=140, color_system=None))
    return out.getvalue()


# -- summarize -----------------------------------------------------------------------------------


def test_summary_counts() -> None:
    s = summarize(SAMPLE)
    assert s.lines_read == len(SAMPLE) == 16
    assert s.attempt_events == 9
    assert s.skipped_lines == 7
    assert s.malformed_events == 2
    assert s.lines_read == s.attempt_events + s.skipped_lines
    assert (s.requests, s.requests_ok, s.requests_gave_up, s.requests_failed) == (4, 1, 2, 1)
    assert (s.retries, s.throttled, s.not_ready) == (3, 1, 1)
    assert s.waited == pytest.approx(0.42 + 0.8 + 0.25)
    assert s.failures_total == 3
    assert s.top == 10


def test_code_rows() -> None:
    s = summarize(SAMPLE)
    assert {r.code: r for r in s.codes} == {
        "DISPATCH_TIMEOUT": row("DISPATCH_TIMEOUT", 2, retried=1, gave_up=1),
        "ServerDisconnectedError": row("ServerDisconnectedError", 1, retried=1),
        "ok": row("ok", 1),
        "RATE_LIMITED": row("RATE_LIMITED", 1, retried=1),
        "BILLING_INSUFFICIENT_CREDITS": row("BILLING_INSUFFICIENT_CREDITS", 1, failed=1),
        "JOB_NOT_READY": row("JOB_NOT_READY", 1, retried=1),
        "ClientConnectorError": row("ClientConnectorError", 1, gave_up=1),
        "HTTP 502": row("HTTP 502", 1, retried=1),
    }
    assert s.codes[0].code == "DISPATCH_TIMEOUT"  # most attempts first, then by name
    assert [r.code for r in s.codes[1:]] == sorted(r.code for r in s.codes[1:])
    assert sum(r.attempts for r in s.codes) == s.attempt_events


def test_slowest_and_failures() -> None:
    s = summarize(SAMPLE)
    assert s.slowest == (
        RequestRow("req-b", "srv-9", 2, 2.5, "give_up", "DISPATCH_TIMEOUT", "max_attempts"),
        RequestRow("req-a", "srv-3", 3, 1.41, "ok", "ok", None),
        RequestRow("req-f", None, 1, 0.9, "give_up", "ClientConnectorError", "deadline"),
        RequestRow(
            "req-c", "srv-10", 1, 0.03, "fail", "BILLING_INSUFFICIENT_CREDITS", "not_retryable"
        ),
    )
    assert [(r.request_id, r.reason) for r in s.failures] == [
        ("req-b", "max_attempts"),
        ("req-c", "not_retryable"),
        ("req-f", "deadline"),
    ]


def test_top_bounds_the_lists() -> None:
    elapsed = list(range(50))
    random.Random(7).shuffle(elapsed)
    lines = [
        ev(request_id=f"r{e}", attempt=1, status=500, code="E", outcome="fail", elapsed=float(e))
        for e in elapsed
    ]
    s = summarize(lines, top=3)
    assert [r.request_id for r in s.slowest] == ["r49", "r48", "r47"]
    assert [r.request_id for r in s.failures] == [f"r{e}" for e in elapsed[:3]]
    assert s.failures_total == s.requests_failed == 50


def test_ties_keep_the_earlier_request() -> None:
    lines = [ev(request_id=f"r{i}", outcome="ok", elapsed=1.0) for i in range(5)]
    assert [r.request_id for r in summarize(lines, top=2).slowest] == ["r0", "r1"]


def test_top_zero_still_counts() -> None:
    s = summarize(SAMPLE, top=0)
    assert s.slowest == s.failures == ()
    assert s.failures_total == 3
    with pytest.raises(ValueError, match="top"):
        summarize(SAMPLE, top=-1)


def test_terminal_event_without_elapsed_is_not_ranked() -> None:
    s = summarize([ev(request_id="r", outcome="fail", reason="not_retryable", status=400)])
    assert s.requests_failed == 1
    assert s.slowest == ()
    assert s.failures == (RequestRow("r", None, None, None, "fail", "HTTP 400", "not_retryable"),)


@pytest.mark.parametrize(
    "fields",
    [
        {"attempt": "x"},
        {"attempt": True},
        {"attempt": 0},
        {"attempt": 1.5},
        {"elapsed": "slow"},
        {"elapsed": float("nan")},
        {"elapsed": float("inf")},
        {"delay": -1},
        {"delay": [0.1]},
        {"outcome": "retrying"},
        {"outcome": ["ok"]},
        {"outcome": None},
        {"status": "503"},
        {"status": 42},
        {"request_id": 17},
        {"server_request_id": {"id": 1}},
        {"code": 503},
        {"error": False},
        {"reason": 5},
    ],
    ids=repr,
)
def test_wrong_types_are_malformed(fields: dict[str, Any]) -> None:
    good = {"request_id": "r", "attempt": 1, "outcome": "ok", "elapsed": 0.1}
    lines = [ev(**{**good, **fields}), ev(**good)]
    s = summarize(lines)
    assert (s.lines_read, s.attempt_events, s.skipped_lines, s.malformed_events) == (2, 1, 1, 1)
    assert timeline(lines, "r") == [json.loads(lines[1])]


def test_missing_outcome_is_malformed() -> None:
    s = summarize([json.dumps({"event": "resilience.attempt", "attempt": 1})])
    assert (s.attempt_events, s.malformed_events) == (0, 1)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "garbage resilience.attempt",
        '{"event": "resilience.attempt", "outcome": "ok"',
        '{"event": "resilience.attempt", "outcome": "ok"} trailing',
        '"resilience.attempt"',
        '["resilience.attempt"]',
        '{"event": "resilience.gate", "note": "resilience.attempt"}',
        '{"event": ["resilience.attempt"], "outcome": "ok"}',
        "[" * 100_000 + "resilience.attempt",
    ],
    ids=lambda line: repr(line[:40]),
)
def test_non_attempt_lines_are_skipped(line: str) -> None:
    s = summarize([line])
    assert (s.lines_read, s.attempt_events, s.skipped_lines, s.malformed_events) == (1, 0, 1, 0)


def test_lenient_lines() -> None:
    ok = ev(request_id="r", outcome="ok", elapsed=0.5)
    lines: list[str | bytes] = [
        "\ufeff" + ok + "\n",  # a byte-order mark
        "  " + ok + "  \r\n",  # surrounding whitespace
        ok.encode(),  # bytes
        ev(request_id="cafX", outcome="ok").encode().replace(b"X", b"\xff"),  # bad UTF-8
        ev(request_id="r", outcome="ok", extra={"nested": [1, 2]}, level=None),  # extra keys
        json.dumps({"outcome": "ok", "event": "resilience.attempt"}),  # minimal
    ]
    s = summarize(lines)
    assert (s.attempt_events, s.requests_ok, s.skipped_lines) == (6, 6, 0)
    assert summarize(lines[:3]).slowest[0] == RequestRow("r", None, None, 0.5, "ok", "ok", None)


def test_code_key_fallbacks() -> None:
    lines = [
        ev(outcome="retry", code="", status=503),  # an empty code falls back to the status
        ev(outcome="retry", code=None, status=None, error=None),
        ev(outcome="ok", code="SOMETHING", status=200),  # success is always "ok"
    ]
    assert [r.code for r in summarize(lines).codes] == ["HTTP 503", "ok", "unknown"]


def test_distinct_codes_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resilience.logs, "_MAX_CODES", 3)
    lines = [ev(outcome="retry", code=f"C{i}") for i in range(8)] + [ev(outcome="retry", code="C0")]
    codes = {r.code: r.attempts for r in summarize(lines).codes}
    assert codes == {"C0": 2, "C1": 1, "C2": 1, "(other)": 5}


def test_streaming_in_constant_memory() -> None:
    """200k lines through a generator: memory stays bounded by ``top``, not by the log."""
    pool: list[str] = []
    for i in range(1000):
        outcome = ("retry", "throttled", "ok", "give_up", "fail")[i % 5]
        pool.append(
            f'{{"event":"resilience.attempt","request_id":"r{i}","code":"C{i % 7}",'
            f'"outcome":"{outcome}","delay":0.01,"elapsed":{i / 10}}}'
        )

    def lines() -> Iterator[str]:
        return itertools.islice(itertools.cycle(pool), 200_000)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        s = summarize(lines())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"
    assert s.lines_read == s.attempt_events == 200_000
    assert s.requests == 120_000
    assert s.failures_total == 80_000
    assert len(s.slowest) == len(s.failures) == 10
    assert s.slowest[0].elapsed == 99.9
    assert s.waited == pytest.approx(2000.0)


# -- timeline ------------------------------------------------------------------------------------


def test_timeline_picks_one_request_in_order() -> None:
    events = timeline(SAMPLE, "req-a")
    assert [(e["attempt"], e["outcome"]) for e in events] == [(1, "retry"), (2, "retry"), (3, "ok")]
    assert events[0]["limit"] == 8  # the whole event, extra keys included
    assert timeline([line.encode() for line in SAMPLE], "req-b") == timeline(SAMPLE, "req-b")
    assert timeline(SAMPLE, "req-d") == []  # only malformed events
    assert timeline(SAMPLE, "nope") == []


def test_timeline_ids_that_json_escapes() -> None:
    rid = 'odd "id" \\ é'
    lines = [ev(request_id=rid, attempt=1, outcome="ok"), ev(request_id="x", outcome="ok")]
    assert [e["request_id"] for e in timeline(lines, rid)] == [rid]


def test_render_timeline() -> None:
    out = io.StringIO()
    render_timeline(timeline(SAMPLE, "req-b"), Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    assert "Request req-b" in text
    assert "RATE_LIMITED" in text
    assert "give_up (max_attempts)" in text
    assert "2.500 s" in text
    out = io.StringIO()
    render_timeline(timeline(SAMPLE, "req-a"), Console(file=out, width=140, color_system=None))
    assert "ServerDisconnectedError" in out.getvalue()
    assert "POST http://127.0.0.1:8080/v1/generate" in out.getvalue()


# -- rendering -----------------------------------------------------------------------------------


def test_render_text() -> None:
    text = render(summarize(SAMPLE))
    for expected in (
        "Retry log summary",
        "DISPATCH_TIMEOUT",
        "ServerDisconnectedError",
        "Slowest 4 requests",
        "Failed requests (first 3 of 3)",
        "max_attempts",
        "2 malformed attempt events",
        "1.470 s",
    ):
        assert expected in text, expected


def test_render_text_escapes_log_values() -> None:
    lines = [
        ev(request_id="[bold]x[/bold]", outcome="fail", code="[red]C", elapsed=1.0),
        ev(request_id="\x1b[31mred", outcome="fail", code="C", elapsed=2.0),
    ]
    text = render(summarize(lines))
    assert "[bold]x[/bold]" in text
    assert "[red]C" in text
    assert "\x1b" not in text
    assert "\\x1b[31mred" in text


def test_render_text_of_an_empty_log() -> None:
    s = summarize([])
    assert s.lines_read == s.requests == 0
    assert "No resilience.attempt events found" in render(s)


def test_summary_to_json() -> None:
    doc = summary_to_json(summarize(SAMPLE, top=2))
    assert json.loads(json.dumps(doc)) == doc
    assert doc["requests"] == {"total": 4, "ok": 1, "gave_up": 2, "failed": 1}
    assert (doc["lines_read"], doc["attempts"], doc["skipped_lines"]) == (16, 9, 7)
    assert doc["waited"] == pytest.approx(1.47)
    assert doc["codes"][0] == {
        "code": "DISPATCH_TIMEOUT",
        "attempts": 2,
        "retried": 1,
        "gave_up": 1,
        "failed": 0,
    }
    assert [r["request_id"] for r in doc["slowest"]] == ["req-b", "req-a"]
    assert doc["failures"][1]["reason"] == "not_retryable"
    assert doc["failures_total"] == 3


# -- the command ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    return cli.main(["logs", *argv])


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "retries.jsonl"
    path.write_bytes(("\n".join(SAMPLE) + "\n").encode() + b"\xff\xfe broken bytes\n")
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_main_json(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, str(log_file), "--json")
    assert doc == summary_to_json(summarize([*SAMPLE, "\ufffd\ufffd broken bytes"]))
    assert doc["lines_read"] == 17
    assert doc["skipped_lines"] == 8
    assert len(run_json(capsys, str(log_file), "--json", "--top", "1")["slowest"]) == 1


def test_main_text(
    log_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main([str(log_file)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "Retry log summary" in out
    assert str(log_file.name) in out
    assert "DISPATCH_TIMEOUT" in out


def test_main_reads_stdin(
    log_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(log_file.read_bytes())))
    assert run_json(capsys, "-", "--json") == run_json(capsys, str(log_file), "--json")


def test_main_reads_gzip(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gz = tmp_path / "retries.jsonl.gz"
    gz.write_bytes(gzip.compress(log_file.read_bytes()))
    assert run_json(capsys, str(gz), "--json") == run_json(capsys, str(log_file), "--json")


def test_main_request_timeline(
    log_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    doc = run_json(capsys, str(log_file), "--request", "req-a", "--json")
    assert doc["request_id"] == "req-a"
    assert [e["attempt"] for e in doc["attempts"]] == [1, 2, 3]

    assert main([str(log_file), "--request", "req-b"]) == 0
    out, _ = capsys.readouterr()
    assert "give_up (max_attempts)" in out


def test_main_unknown_request(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(log_file), "--request", "nope"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "no attempt events for request_id 'nope'" in err


def assert_read_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("python -m resilience logs: error: cannot read ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    return err


def test_main_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = assert_read_error(capsys, [str(tmp_path / "missing.jsonl")])
    assert "No such file or directory" in err
    assert_read_error(capsys, [str(tmp_path / "missing.jsonl.gz"), "--json"])
    assert_read_error(capsys, [str(tmp_path / "missing.jsonl"), "--request", "r"])


def test_main_unreadable_inputs(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_read_error(capsys, [str(tmp_path)])  # a directory
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_bytes(log_file.read_bytes())
    assert_read_error(capsys, [str(not_gzip), "--json"])
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(log_file.read_bytes())[:-12])
    assert_read_error(capsys, [str(truncated), "--json"])


@pytest.mark.parametrize("argv", [[], ["x", "--top", "-1"], ["x", "--top", "many"], ["x", "-z"]])
def test_main_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: python -m resilience logs" in capsys.readouterr().err


def test_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage: python -m resilience logs" in capsys.readouterr().out


def test_overlong_lines_are_skipped_without_being_held() -> None:
    data = b"short\n" + b"x" * 100 + b"\nafter\n" + b"y" * 40
    assert list(_logs._iter_lines(io.BytesIO(data), max_line=16)) == [
        b"short\n",
        b"",
        b"after\n",
        b"",
    ]
    assert list(_logs._iter_lines(io.BytesIO(b"a\nb"), max_line=16)) == [b"a\n", b"b"]


def test_main_without_rich(
    log_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("rich", "rich.console", "rich.table", "rich.text"):
        monkeypatch.setitem(sys.modules, name, None)
    assert run_json(capsys, str(log_file), "--json")["requests"]["total"] == 4
    assert main([str(log_file)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "install 'resilience[cli]', or use --json" in err


@pytest.mark.parametrize(
    ("old", "new"),
    [("summarize_log", summarize), ("log_timeline", timeline), ("LogSummary", LogSummary)],
)
def test_old_top_level_names_still_work_with_a_deprecation_warning(old: str, new: object) -> None:
    import resilience

    with pytest.warns(DeprecationWarning, match=rf"resilience\.{old} is deprecated"):
        assert getattr(resilience, old) is new
    assert old not in resilience.__all__


def test_unknown_top_level_name_is_an_attribute_error() -> None:
    import resilience

    with pytest.raises(AttributeError, match="no attribute 'summarise_log'"):
        resilience.summarise_log  # noqa: B018


# -- troubleshooting: final failures by domain ---------------------------------------------------


def test_final_failures_are_grouped_by_the_tables_domain_with_advice() -> None:
    summary = summarize(SAMPLE)
    assert [(r.domain, r.requests, r.codes) for r in summary.domains] == [
        ("billing", 1, (("BILLING_INSUFFICIENT_CREDITS", 1),)),
        ("generation", 1, (("DISPATCH_TIMEOUT", 1),)),
        ("transport", 1, (("ClientConnectorError", 1),)),
    ]
    advice = {r.domain: r.advice for r in summary.domains}
    assert "top up" in advice["billing"]
    assert "lower concurrency or retry later" in advice["generation"]
    assert "network" in advice["transport"]


def test_every_domain_of_the_table_has_its_own_advice() -> None:
    failures = [
        ev(request_id=f"r{n}", attempt=1, status=spec.status, code=code, outcome="fail")
        for n, (code, spec) in enumerate(CodeTable.default().items())
    ]
    rows = {r.domain: r for r in summarize(failures).domains}
    assert set(rows) == {"auth", "billing", "common", "generation", "studio", "upstream", "voice"}
    assert sum(r.requests for r in rows.values()) == len(CodeTable.default())
    advice = [r.advice for r in rows.values()]
    assert len(set(advice)) == len(advice), "each domain says something of its own"
    assert "check the API key" in rows["auth"].advice
    assert "fix the request" in rows["common"].advice


def test_answers_the_table_does_not_know_are_other_and_counts_are_not_bounded_by_top() -> None:
    lines = [
        ev(request_id="a", attempt=1, status=502, code=None, outcome="give_up"),
        ev(request_id="b", attempt=1, status=418, code="TEAPOT", outcome="fail"),
        *(
            ev(request_id=f"c{n}", attempt=3, code="AUTH_REQUIRED", outcome="fail")
            for n in range(5)
        ),
    ]
    summary = summarize(lines, top=1)
    assert len(summary.failures) == 1
    assert [(r.domain, r.requests, dict(r.codes)) for r in summary.domains] == [
        ("auth", 5, {"AUTH_REQUIRED": 5}),
        ("other", 2, {"HTTP 502": 1, "TEAPOT": 1}),
    ]


def test_a_custom_table_gives_its_own_domains() -> None:
    table = CodeTable([ErrorSpec("TEAPOT", status=418, retryable=False, domain="kitchen")])
    line = ev(request_id="b", attempt=1, status=418, code="TEAPOT", outcome="fail")
    (row,) = summarize([line], table=table).domains
    assert (row.domain, row.requests) == ("kitchen", 1)
    assert row.advice  # a domain we have no advice for still says where to look


def test_json_and_text_carry_the_troubleshooting(
    log_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = run_json(capsys, str(log_file), "--json")
    assert doc["failures_by_domain"] == [
        {"domain": r.domain, "requests": r.requests, "codes": dict(r.codes), "advice": r.advice}
        for r in summarize(SAMPLE).domains
    ]
    monkeypatch.setenv("COLUMNS", "200")
    assert main([str(log_file)]) == 0
    out = capsys.readouterr().out
    assert "Troubleshooting: failed requests by domain" in out
    assert "top up the account's credits" in out


def test_a_log_without_failures_has_no_troubleshooting() -> None:
    summary = summarize([ev(request_id="a", attempt=1, status=200, outcome="ok")])
    assert summary.domains == ()
    assert "Troubleshooting" not in render(summary)
    assert summary_to_json(summary)["failures_by_domain"] == []


# -- stdin ---------------------------------------------------------------------------------------


def test_closed_stdin_is_a_one_line_error_with_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when fd 0 is closed
    for argv in (["-", "--json"], ["-"], ["-", "--request", "r"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == "python -m resilience logs: error: cannot read <stdin>: stdin is closed\n"


def test_closed_stdin_from_the_shell_is_a_one_line_error_with_exit_2() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -m resilience logs - --json <&-', sys.executable],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "python -m resilience logs: error: cannot read <stdin>: stdin is closed\n"


def test_the_docs_advice_table_is_what_the_reader_says() -> None:
    text = (ROOT / "docs" / "howto" / "read-logs.md").read_text(encoding="utf-8")
    table = text.split("| domain | advice |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z]+)` \| (.+) \|$", table, re.MULTILINE))
    assert rows == dict(resilience.logs._ADVICE)
