"""Rate-limit headers -> Quota: every style, and every kind of bad value, field by field."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from resilience._quota import MAX_RESET, Quota, parse_quota, read_quota

NOW = 1_700_000_000.0  # the wall clock the Unix-time cases are read against
Q = Quota


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


CASES: list[tuple[str, CIMultiDict[str], Quota | None]] = [
    # ---- the current IETF draft: RateLimit-Policy (q, w) + RateLimit (r, t)
    (
        "structured policy and state",
        h(("RateLimit-Policy", '"default";q=100;w=60'), ("RateLimit", '"default";r=50;t=30')),
        Q(100, 60.0, 50, 30.0),
    ),
    (
        "structured: the policy with the least remaining governs",
        h(
            ("RateLimit-Policy", '"burst";q=100;w=1, "day";q=1000;w=86400'),
            ("RateLimit", '"burst";r=40;t=1, "day";r=3;t=3600'),
        ),
        Q(1000, 86400.0, 3, 3600.0),
    ),
    (
        "structured: one unnamed policy joins the one named state",
        h(("RateLimit-Policy", "100;w=1"), ("RateLimit", '"x";r=3;t=0.5')),
        Q(100, 1.0, 3, 0.5),
    ),
    (
        "structured: the policy alone gives the rate",
        h(("RateLimit-Policy", '"p";q=10;w=2')),
        Q(10, 2.0, None, None),
    ),
    (
        "structured: duplicated lines that agree",
        h(("RateLimit", '"p";r=5;t=2'), ("RateLimit", '"p";r=5;t=2')),
        Q(None, None, 5, 2.0),
    ),
    (
        "structured: duplicated lines that disagree drop that field only",
        h(("RateLimit", '"p";r=5;t=2'), ("RateLimit", '"p";r=6;t=2')),
        Q(None, None, None, 2.0),
    ),
    (
        "structured: garbage parameters",
        h(("RateLimit-Policy", '"p";q=abc;w=-1'), ("RateLimit", '"p";r=7;t=soon')),
        Q(None, None, 7, None),
    ),
    ("structured: unparseable field", h(("RateLimit", ',;;=="')), None),
    # ---- the older draft: RateLimit-Limit / -Remaining / -Reset
    (
        "older draft with its policy in RateLimit-Limit",
        h(
            ("RateLimit-Limit", "100, 100;w=60"),
            ("RateLimit-Remaining", "7"),
            ("RateLimit-Reset", "3"),
        ),
        Q(100, 60.0, 7, 3.0),
    ),
    (
        "older draft without a window",
        h(("RateLimit-Limit", "10"), ("RateLimit-Remaining", "0"), ("RateLimit-Reset", "1")),
        Q(10, None, 0, 1.0),
    ),
    # ---- X-RateLimit: Reset is delta seconds or a Unix time, told apart by magnitude
    (
        "X-RateLimit with a delta reset",
        h(
            ("X-RateLimit-Limit", "60"),
            ("X-RateLimit-Remaining", "59"),
            ("X-RateLimit-Reset", "42"),
        ),
        Q(60, None, 59, 42.0),
    ),
    (
        "X-RateLimit with a Unix-time reset (GitHub)",
        h(
            ("X-RateLimit-Limit", "5000"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", str(int(NOW) + 60)),
        ),
        Q(5000, None, 0, 60.0),
    ),
    (
        "a Unix-time reset in the past: restored already",
        h(("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(int(NOW) - 5))),
        Q(None, None, 0, 0.0),
    ),
    (
        "a Unix-time reset read against the server's Date when the clocks differ",
        h(
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", str(int(NOW) + 100)),
            ("Date", formatdate(NOW + 90, usegmt=True)),
        ),
        Q(None, None, 0, 10.0),
    ),
    (
        "a Date within the skew allowance: our finer clock is used",
        h(
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", str(int(NOW) + 30)),
            ("Date", formatdate(NOW + 1, usegmt=True)),
        ),
        Q(None, None, 0, 30.0),
    ),
    (
        "a garbage Date: our clock",
        h(
            ("X-RateLimit-Remaining", "1"),
            ("X-RateLimit-Reset", str(int(NOW) + 30)),
            ("Date", "yesterday"),
        ),
        Q(None, None, 1, 30.0),
    ),
    # ---- bad values, each dropped on its own
    (
        "negative remaining",
        h(("X-RateLimit-Limit", "60"), ("X-RateLimit-Remaining", "-1")),
        Q(60, None, None, None),
    ),
    (
        "fractional remaining",
        h(("X-RateLimit-Remaining", "1.5"), ("X-RateLimit-Reset", "2")),
        Q(None, None, None, 2.0),
    ),
    (
        "garbage reset",
        h(("X-RateLimit-Remaining", "3"), ("X-RateLimit-Reset", "tomorrow")),
        Q(None, None, 3, None),
    ),
    (
        "a fractional delta reset is fine",
        h(("RateLimit-Remaining", "3"), ("RateLimit-Reset", "0.25")),
        Q(None, None, 3, 0.25),
    ),
    (
        "huge counts",
        h(("X-RateLimit-Limit", "9" * 13), ("X-RateLimit-Remaining", "99999999999")),
        None,
    ),
    (
        "a delta reset over a day",
        h(("RateLimit-Remaining", "0"), ("RateLimit-Reset", str(int(MAX_RESET) + 1))),
        Q(None, None, 0, None),
    ),
    (
        "a Unix-time reset more than a day ahead",
        h(("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(int(NOW) + 10**6))),
        Q(None, None, 0, None),
    ),
    (
        "remaining above the limit: neither is trusted",
        h(("X-RateLimit-Limit", "10"), ("X-RateLimit-Remaining", "11"), ("X-RateLimit-Reset", "5")),
        Q(None, None, None, 5.0),
    ),
    (
        "a zero limit is no limit",
        h(("X-RateLimit-Limit", "0"), ("X-RateLimit-Reset", "5")),
        Q(None, None, None, 5.0),
    ),
    (
        "duplicated lines that agree (a proxy)",
        h(("X-RateLimit-Remaining", "5"), ("X-RateLimit-Remaining", "5")),
        Q(None, None, 5, None),
    ),
    (
        "comma-joined duplicates that agree",
        h(("X-RateLimit-Remaining", "5, 5"), ("X-RateLimit-Limit", "8")),
        Q(8, None, 5, None),
    ),
    (
        "duplicated lines that disagree",
        h(("X-RateLimit-Remaining", "5"), ("X-RateLimit-Remaining", "6")),
        None,
    ),
    (
        "two different bare limits",
        h(("X-RateLimit-Limit", "5, 6"), ("X-RateLimit-Reset", "1")),
        Q(None, None, None, 1.0),
    ),
    ("no rate-limit header", h(("Content-Type", "application/json")), None),
    ("empty values", h(("X-RateLimit-Remaining", ""), ("RateLimit", "")), None),
    ("structured: an empty member", h(("RateLimit", ";"), ("RateLimit-Policy", ";;")), None),
    (
        "structured: empty members beside a good one",
        h(("RateLimit-Policy", '"d";q=10;w=1, ;'), ("RateLimit", 'a,;, "d";r=2;t=1')),
        Q(10, 1.0, 2, 1.0),
    ),
]


@pytest.mark.parametrize(("headers", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_headers_are_read_field_by_field(headers: CIMultiDict[str], expected: Quota | None) -> None:
    quota = parse_quota(headers, now=NOW)
    if expected is None or quota is None:
        assert quota == expected
        return
    assert quota.limit == expected.limit
    assert quota.window == expected.window
    assert quota.remaining == expected.remaining
    assert quota.reset == (
        pytest.approx(expected.reset, abs=1e-6) if expected.reset else expected.reset
    )


def test_the_announced_rate_is_the_quota_over_its_window() -> None:
    assert Quota(100, 60.0).rate == pytest.approx(100 / 60)
    assert Quota(100).rate is None


def test_an_answer_without_rate_limit_headers_is_not_parsed() -> None:
    # The happy path: a few lookups, no parsing.
    assert read_quota(h(("Content-Type", "text/plain"), ("Content-Length", "2"))) is None
    quota = read_quota(h(("ratelimit-remaining", "3"), ("ratelimit-reset", "1")))
    assert quota is not None
    assert (quota.remaining, quota.reset) == (3, 1.0)


def test_a_plain_mapping_works_too() -> None:
    quota = parse_quota({"X-RateLimit-Remaining": "2", "X-RateLimit-Reset": "9"}, now=NOW)
    assert quota == Quota(remaining=2, reset=9.0, aligned=9.0)
