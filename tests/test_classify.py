from __future__ import annotations

from datetime import datetime, timezone

import pytest

from resilience import CodeTable, Handling
from resilience._classify import HUGE_RETRY_AFTER, classify, parse_retry_after

URLLIB3_NOW = datetime(2019, 6, 3, 11, 0, 0, tzinfo=timezone.utc)
GO_NOW = datetime(1999, 12, 31, 23, 59, 57, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("1000", 1000.0),
        ("\t42 ", 42.0),
        ("Mon, 3 Jun 2019 12:00:00 UTC", 3600.0),
        ("Mon, 03 Jun 2019 11:30:12 GMT", 1812.0),  # RFC 1123
        ("Monday, 03-Jun-19 11:30:12 GMT", 1812.0),  # RFC 850
        ("Mon Jun  3 11:30:12 2019", 1812.0),  # asctime, no zone = UTC
        ("Mon, 03 Jun 2019 10:00:00 GMT", 0.0),  # in the past
        ("Mon, 03 Jun 2019 11:00:00 GMT", 0.0),  # now
    ],
)
def test_urllib3_retry_after_vectors(value: str, expected: float) -> None:
    assert parse_retry_after({"Retry-After": value}, URLLIB3_NOW) == expected


@pytest.mark.parametrize("value", ["-1", "+1", "1.0", "1.5", "²", "foo", "", "badbadbad"])
def test_invalid_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after({"Retry-After": value}, URLLIB3_NOW) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("Fri, 31 Dec 1999 23:59:59 GMT", 2.0),
        ("Fri, 31 Dec 1999 23:59:00 GMT", 0.0),
        ("Fri, 32 Dec 1999 23:59:59 GMT", None),
        ("-2", None),
    ],
)
def test_go_retryablehttp_vectors(value: str, expected: float | None) -> None:
    assert parse_retry_after({"Retry-After": value}, GO_NOW) == expected


def test_retry_after_ms_wins_and_bad_ms_falls_back() -> None:
    assert parse_retry_after({"Retry-After-Ms": "250", "Retry-After": "1"}) == 0.25
    assert parse_retry_after({"Retry-After-Ms": "-5", "Retry-After": "1"}) == 1.0
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("00000000000000000000002500", 2.5),  # zero padding longer than any cut
        ("0000000000000000000000000000000000000000250.5", 0.2505),
        ("000", 0.0),
        ("2500.000000000000000000000000000000000001", 2.5),
        ("9" * 40, HUGE_RETRY_AFTER),  # absurd: a wait past any deadline, never an overflow
        ("9" * 5000, HUGE_RETRY_AFTER),
    ],
)
def test_long_retry_after_ms_values_are_read_whole(value: str, expected: float) -> None:
    assert parse_retry_after({"Retry-After-Ms": value}) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0000000000000000000000000002", 2.0), ("0" * 30, 0.0), ("1" + "0" * 30, HUGE_RETRY_AFTER)],
)
def test_long_zero_padded_retry_after_seconds_are_read_whole(value: str, expected: float) -> None:
    assert parse_retry_after({"Retry-After": value}) == expected


def _env(code: str) -> dict[str, object]:
    return {"ok": False, "code": code, "detail": "d", "error": "e"}


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (502, "UPSTREAM_GENERATION_ERROR", Handling.TRANSIENT),
        (502, "UPSTREAM_GENERATION_SERVICE_ERROR", Handling.PERMANENT),
        (503, "DISPATCH_TIMEOUT", Handling.TRANSIENT),
        (503, "GENERATION_CAPACITY_EXCEEDED", Handling.PERMANENT),
        (429, "GENERATION_CONCURRENCY_EXCEEDED", Handling.CONCURRENCY_LIMIT),
        (429, "RATE_LIMITED", Handling.RATE_LIMIT),
        (425, "GENERATION_NOT_READY", Handling.NOT_READY),
        (402, "BILLING_INSUFFICIENT_CREDITS", Handling.PERMANENT),
    ],
)
def test_the_code_decides_not_the_status(status: int, code: str, expected: Handling) -> None:
    handling, got_code, detail, known = classify(status, _env(code), CodeTable.default())
    assert (handling, got_code, detail, known) == (expected, code, "d", True)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (408, Handling.TRANSIENT),
        (425, Handling.NOT_READY),
        (429, Handling.RATE_LIMIT),
        (500, Handling.TRANSIENT),
        (502, Handling.TRANSIENT),
        (503, Handling.TRANSIENT),
        (504, Handling.TRANSIENT),
        (400, Handling.PERMANENT),
        (404, Handling.PERMANENT),
        (501, Handling.PERMANENT),
    ],
)
def test_status_fallback_without_envelope_or_with_unknown_code(
    status: int, expected: Handling
) -> None:
    table = CodeTable.default()
    assert classify(status, None, table)[0] is expected
    assert classify(status, _env("SOMETHING_NEW"), table)[0] is expected
    assert classify(status, _env("SOMETHING_NEW"), table)[3] is False
    assert classify(status, {"code": 17}, table)[0] is expected


def test_success_is_never_an_error() -> None:
    assert classify(200, None, CodeTable.default())[0] is Handling.OK
    assert classify(302, _env("RATE_LIMITED"), CodeTable.default())[0] is Handling.OK
