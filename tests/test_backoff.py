from __future__ import annotations

import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest

from resilience import Backoff


def test_expo_vectors_from_backoff_package() -> None:
    # backoff's tests/test_wait_gen.py: expo(max_value=16) -> 1, 2, 4, 8, 16, 16, 16
    schedule = Backoff(initial=1, multiplier=2, max_delay=16, jitter="none")
    assert list(islice(schedule.delays(), 7)) == [1, 2, 4, 8, 16, 16, 16]
    # factor=3 -> 3 * 2**i
    assert list(islice(Backoff(3, 2, 1000, "none").delays(), 4)) == [3, 6, 12, 24]


def test_full_jitter_stays_within_zero_and_nominal_and_max_delay() -> None:
    schedule = Backoff(initial=0.5, multiplier=2, max_delay=4, jitter="full")
    nominal = list(islice(schedule.nominal_delays(), 200))
    for value, cap in zip(islice(schedule.delays(), 200), nominal, strict=False):
        assert 0 <= value <= cap <= 4


def test_equal_jitter_never_below_half() -> None:
    schedule = Backoff(initial=1, multiplier=2, max_delay=8, jitter="equal")
    nominal = islice(schedule.nominal_delays(), 200)
    for value, cap in zip(islice(schedule.delays(), 200), nominal, strict=True):
        assert cap / 2 <= value <= cap


def test_preview_gives_bounds_and_worst_case_total() -> None:
    preview = Backoff(initial=0.5, multiplier=2, max_delay=3, jitter="full").preview(4)
    assert [s.nominal for s in preview.steps] == [0.5, 1, 2, 3]
    assert [s.low for s in preview.steps] == [0, 0, 0, 0]
    assert preview.worst_case_total == 6.5
    assert "worst case" in str(preview)
    assert Backoff(initial=1, jitter="equal").preview(1).steps[0].low == 0.5


def test_zero_initial_means_no_wait() -> None:
    assert list(islice(Backoff(initial=0, max_delay=0).delays(), 3)) == [0, 0, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": -1}, "initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"initial": 2, "max_delay": 1}, "max_delay"),
        ({"jitter": "wild"}, "jitter"),
        ({"initial": float("nan")}, "finite"),
        ({"max_delay": float("inf")}, "finite"),
    ],
)
def test_bad_settings_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_non_numbers_raise_type_error() -> None:
    with pytest.raises(TypeError):
        Backoff(initial="1")  # type: ignore[arg-type]


def test_a_huge_multiplier_reaches_max_delay_without_overflow() -> None:
    """``initial * multiplier**n`` overflows a float on the third poll; the schedule must
    reach ``max_delay`` and stay there instead of raising OverflowError."""
    schedule = Backoff(initial=1, multiplier=1e200, max_delay=1e300, jitter="none")
    assert list(islice(schedule.delays(), 6)) == [1, 1e200, 1e300, 1e300, 1e300, 1e300]
    steps = schedule.preview(10).steps
    assert [s.nominal for s in steps][-1] == 1e300
    assert Backoff(initial=1e308, multiplier=10, max_delay=1.5e308).preview(3).worst_case_total


def test_cli_backoff_with_a_huge_multiplier_prints_no_traceback() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resilience",
            "backoff",
            "--initial",
            "1",
            "--multiplier",
            "1e200",
            "--max-delay",
            "1e300",
            "--retries",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr  # 2: the cli extra is missing


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"initial": float("nan")}, ValueError),
        ({"max_delay": float("inf")}, ValueError),
        ({"multiplier": 10**400}, ValueError),  # an int no float can hold
        ({"initial": True}, TypeError),
        ({"initial": "1"}, TypeError),
        ({"jitter": "Full"}, ValueError),
        ({"jitter": ["full"]}, TypeError),
        ({"multiplier": 0.5}, ValueError),
    ],
)
def test_bad_backoff_settings_fail_at_construction(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Backoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("retries", "error"),
    [(-1, ValueError), (1.5, TypeError), (True, TypeError), (10**9, ValueError)],
)
def test_bad_preview_lengths_are_rejected(retries: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Backoff().preview(retries)  # type: ignore[arg-type]
