from __future__ import annotations

import json
from pathlib import Path

import pytest

from resilience import CodeTable, ErrorSpec, Handling

SHARED = Path(__file__).resolve().parents[2] / "shared" / "codes.json"


def test_default_table_ships_all_40_codes_with_their_fields() -> None:
    table = CodeTable.default()
    assert len(table) == 40
    spec = table["UPSTREAM_GENERATION_ERROR"]
    assert (spec.status, spec.retryable, spec.domain) == (502, True, "upstream")
    assert spec.message == "Generation service request failed."
    assert table["UPSTREAM_GENERATION_SERVICE_ERROR"].retryable is False
    assert table["DISPATCH_TIMEOUT"].how is Handling.TRANSIENT
    assert table["GENERATION_CAPACITY_EXCEEDED"].how is Handling.PERMANENT


EXPECTED = Path(__file__).resolve().parent / "codes_expected.json"


def _assert_table_matches(published: list[dict[str, object]]) -> None:
    table = CodeTable.default()
    assert sorted(table) == sorted(str(row["code"]) for row in published)
    for row in published:
        spec = table[str(row["code"])]
        assert (spec.status, spec.retryable, spec.domain, spec.message) == (
            row["status"],
            row["retryable"],
            row["domain"],
            row["message"],
        ), row["code"]


def test_default_table_matches_the_expected_copy_of_all_40_codes() -> None:
    """The published table, copied into tests/ so a clone anywhere checks every code."""
    published = json.loads(EXPECTED.read_text())
    assert len(published) == 40
    _assert_table_matches(published)


@pytest.mark.skipif(not SHARED.exists(), reason="shared/ not beside the checkout")
def test_default_table_matches_the_published_json() -> None:
    published = json.loads(SHARED.read_text())
    assert published == json.loads(EXPECTED.read_text()), "tests/codes_expected.json is stale"
    _assert_table_matches(published)


def test_throttles_and_polls_have_their_own_handling() -> None:
    table = CodeTable.default()
    assert table["GENERATION_NOT_READY"].how is Handling.NOT_READY
    assert table["GENERATION_CONCURRENCY_EXCEEDED"].how is Handling.CONCURRENCY_LIMIT
    assert table["RATE_LIMITED"].how is Handling.RATE_LIMIT


def test_overrides_flip_one_code_and_add_another() -> None:
    table = CodeTable.default().with_overrides(
        ErrorSpec("QUOTA_SOON", 503, retryable=True), GENERATION_CAPACITY_EXCEEDED=True
    )
    assert table["GENERATION_CAPACITY_EXCEEDED"].how is Handling.TRANSIENT
    assert table["QUOTA_SOON"].how is Handling.TRANSIENT
    assert CodeTable.default()["GENERATION_CAPACITY_EXCEEDED"].retryable is False
    with pytest.raises(KeyError, match="unknown code"):
        CodeTable.default().with_overrides(NOPE=True)


@pytest.mark.parametrize(
    "text",
    ['{"code": "X"}', "[1]", '[{"status": 500, "retryable": true}]', "not json"],
)
def test_malformed_tables_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        CodeTable.from_json(text)


def test_bad_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="HTTP status"):
        ErrorSpec("X", 42, retryable=False)
    with pytest.raises(ValueError, match="contradicts"):
        ErrorSpec("X", 503, retryable=False, handling=Handling.TRANSIENT)
    with pytest.raises(TypeError):
        CodeTable([{"code": "X"}])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "row",
    [
        {"code": "X", "status": 503, "retryable": "false"},  # a string is not a flag
        {"code": "X", "status": 503, "retryable": 0},
        {"code": "X", "status": "503", "retryable": True},
        {"code": "X", "status": 503.5, "retryable": True},
        {"code": "X", "status": True, "retryable": True},
        {"code": 123, "status": 503, "retryable": True},
        {"code": "", "status": 503, "retryable": True},
        {"code": "X", "status": 503, "retryable": True, "message": 7},
        {"code": "X", "status": 503, "retryable": True, "domain": None},
        {"code": "X" * 101, "status": 503, "retryable": True},  # longer than any envelope code
    ],
)
def test_from_json_rejects_rows_of_the_wrong_types(row: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="code table row"):
        CodeTable.from_json(json.dumps([row]))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"code": 123}, TypeError),
        ({"code": " X"}, ValueError),
        ({"status": "503"}, TypeError),
        ({"status": True}, TypeError),
        ({"retryable": "yes"}, TypeError),
        ({"message": None}, TypeError),
        ({"domain": 1}, TypeError),
        ({"handling": "transient"}, TypeError),
    ],
)
def test_error_spec_checks_every_field_at_construction(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    fields: dict[str, object] = {"code": "X", "status": 503, "retryable": True, **kwargs}
    with pytest.raises(error):
        ErrorSpec(**fields)  # type: ignore[arg-type]


def test_with_overrides_checks_its_arguments() -> None:
    table = CodeTable.default()
    with pytest.raises(TypeError, match="ErrorSpec"):
        table.with_overrides("X")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RATE_LIMITED"):
        table.with_overrides(RATE_LIMITED="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RATE_LIMITED"):
        table.with_overrides(RATE_LIMITED=1)  # type: ignore[arg-type]
