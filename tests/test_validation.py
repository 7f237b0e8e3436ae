"""Every public constructor checks every setting when it is built: type, finiteness, range and
syntax. An odd value either raises ``TypeError``/``ValueError`` at once, or builds an object that
works; nothing is accepted that fails later or silently switches a feature off."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from resilience import (
    Backoff,
    CodeTable,
    ErrorSpec,
    Handling,
    LocalStore,
    Redaction,
    ResilienceMiddleware,
    RetryBudgetSettings,
)
from resilience._events import redact_url

NAN, INF = float("nan"), float("inf")

# Values a hurried user (or a config file read without schema) might pass anywhere.
ODD: st.SearchStrategy[object] = st.one_of(
    st.sampled_from(
        [
            *(NAN, INF, -INF, -1, -1.5, 0, 0.0, 0.5, 1, 1.5, 3, 1e300, 10**400, -(10**400)),
            *(True, False, None, "", "x", "1", "false", "transient", b"1", (), [], {}),
            *("X-Id\r\nInjected: 1", "Bad Header", 123),
            *(("x",), ("(",), ["sid", 3], {"https://a.test": "g"}, {"a.test": "g"}, {"x": 1}),
        ]
    ),
    st.floats(),
    st.integers(),
    st.text(max_size=4),
)


def _finite(*values: object) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _backoff_works(b: Backoff) -> None:
    assert _finite(b.initial, b.multiplier, b.max_delay)
    for value in islice(b.delays(), 64):
        assert 0 <= value <= b.max_delay
    assert math.isfinite(b.preview(64).worst_case_total)


def _spec_works(spec: ErrorSpec) -> None:
    assert isinstance(spec.code, str)
    assert isinstance(spec.status, int)
    assert not isinstance(spec.status, bool)
    assert isinstance(spec.retryable, bool)
    assert isinstance(spec.how, Handling)
    assert isinstance(spec.message, str)
    assert isinstance(spec.domain, str)
    assert CodeTable([spec])[spec.code] is spec


def _table_works(table: CodeTable) -> None:
    for spec in table.values():
        _spec_works(spec)


def _budget_works(budget: RetryBudgetSettings) -> None:
    assert _finite(budget.ratio, budget.min_per_second, budget.ttl)
    local = LocalStore(retry_budget=budget).budget
    assert local is not None
    assert math.isfinite(local.balance)  # a nan balance would allow every retry: budget off


def _row(**changes: object) -> str:
    row: dict[str, object] = {"code": "X", "status": 503, "retryable": True, **changes}
    return json.dumps([row])


@dataclass(frozen=True)
class Case:
    """One public constructor with one setting replaced by an odd value."""

    name: str
    build: Callable[[object], Any]
    works: Callable[[Any], None]


def _backoff(field: str, value: Any) -> Backoff:
    return Backoff(**{field: value})


def _spec(field: str, value: Any) -> ErrorSpec:
    return ErrorSpec(**{"code": "X", "status": 503, "retryable": True, field: value})


def _from_json(field: str, value: Any) -> CodeTable:
    return CodeTable.from_json(_row(**{field: value}))


def _budget(field: str, value: Any) -> RetryBudgetSettings:
    return RetryBudgetSettings(**{field: value})


def _flag_override(value: Any) -> CodeTable:
    return CodeTable.default().with_overrides(RATE_LIMITED=value)


def _spec_override(value: Any) -> CodeTable:
    return CodeTable.default().with_overrides(value)


def _preview(value: Any) -> object:
    return Backoff().preview(value)


def _cases(
    name: str,
    build: Callable[[str, Any], Any],
    fields: tuple[str, ...],
    works: Callable[[Any], None],
) -> list[Case]:
    return [Case(f"{name}({f}=)", functools.partial(build, f), works) for f in fields]


def _middleware(field: str, value: Any) -> ResilienceMiddleware:
    return ResilienceMiddleware(**{field: value})


def _middleware_works(mw: ResilienceMiddleware) -> None:
    settings = mw.settings
    assert isinstance(settings.max_attempts, int)
    assert settings.max_attempts >= 1
    assert settings.max_elapsed is None or (
        _finite(settings.max_elapsed) and settings.max_elapsed > 0
    )
    assert type(settings.envelope_cap) is int
    assert settings.envelope_cap >= 0
    assert isinstance(settings.raise_api_errors, bool)
    assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", settings.request_id_header)
    store = mw.store
    assert isinstance(store, LocalStore)
    assert store.budget is None or math.isfinite(store.budget.balance)


def _redis_store(field: str, value: Any) -> object:
    from resilience.redis import RedisStore

    return RedisStore.from_url("redis://127.0.0.1:1/0", namespace="v", **{field: value})


def _redis_store_works(store: Any) -> None:
    settings = store._settings
    for name in ("lease_ttl", "redis_timeout", "probe_max_delay", "state_ttl"):
        assert _finite(getattr(settings, name)), name
    assert type(settings.max_connections) is int


def _local_store(field: str, value: Any) -> LocalStore:
    return LocalStore(**{field: value})


def _local_store_works(store: LocalStore) -> None:
    assert store.limit_of("https://api.test") >= 1
    assert store.limit_of("https://other.test") >= 1


def _redaction(field: str, value: Any) -> Redaction:
    return Redaction(**{field: value})


def _redaction_works(rules: Redaction) -> None:
    assert all(isinstance(p, str) and p for p in (*rules.params, *rules.paths))
    redact_url(URL("https://h/bot1/x?sid=1;token=2"), rules)


CASES = [
    *_cases("Backoff", _backoff, ("initial", "multiplier", "max_delay", "jitter"), _backoff_works),
    Case("Backoff.preview()", _preview, lambda _: None),
    *_cases(
        "ErrorSpec",
        _spec,
        ("code", "status", "retryable", "message", "domain", "handling"),
        _spec_works,
    ),
    *_cases(
        "CodeTable.from_json",
        _from_json,
        ("code", "status", "retryable", "message", "domain"),
        _table_works,
    ),
    Case("with_overrides(code=)", _flag_override, _table_works),
    Case("with_overrides(spec)", _spec_override, _table_works),
    *_cases("RetryBudgetSettings", _budget, ("ratio", "min_per_second", "ttl"), _budget_works),
    *_cases(
        "ResilienceMiddleware",
        _middleware,
        (
            "max_attempts",
            "max_elapsed",
            "max_concurrency",
            "initial_concurrency",
            "retry_budget",
            "raise_api_errors",
            "envelope_cap",
            "request_id_header",
        ),
        _middleware_works,
    ),
    *_cases(
        "LocalStore",
        _local_store,
        ("max_concurrency", "initial_concurrency", "retry_budget", "limit_groups", "shared_limit"),
        _local_store_works,
    ),
    *_cases("Redaction", _redaction, ("params", "paths"), _redaction_works),
    *_cases(
        "RedisStore",
        _redis_store,
        (
            "lease_ttl",
            "redis_timeout",
            "max_connections",
            "probe_max_delay",
            "state_ttl",
            "max_concurrency",
            "initial_concurrency",
            "retry_budget",
        ),
        _redis_store_works,
    ),
]


def _json_safe(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


@settings(max_examples=1500, deadline=None)
@given(case=st.sampled_from(CASES), value=ODD)
def test_every_public_constructor_rejects_odd_values_or_works(case: Case, value: object) -> None:
    if case.name.startswith("CodeTable.from_json") and not _json_safe(value):
        return  # not expressible in a JSON table
    try:
        built = case.build(value)
    except (TypeError, ValueError):
        return
    case.works(built)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min_per_second": NAN}, ValueError),  # nan turned the budget off
        ({"ratio": NAN}, ValueError),
        ({"ttl": NAN}, ValueError),
        ({"min_per_second": INF}, ValueError),
        ({"ratio": "0.2"}, TypeError),
        ({"ttl": True}, TypeError),
        ({"min_per_second": 10**400}, ValueError),
    ],
)
def test_bad_retry_budget_settings_fail_at_construction(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        RetryBudgetSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"envelope_cap": NAN}, TypeError),  # nan turned classification by code off
        ({"envelope_cap": 1.5}, TypeError),
        ({"envelope_cap": INF}, TypeError),
        ({"envelope_cap": True}, TypeError),
        ({"envelope_cap": 2**40}, ValueError),
        ({"max_elapsed": 10**400}, ValueError),  # passed, then overflowed
        ({"max_elapsed": NAN}, ValueError),
        ({"max_elapsed": "60"}, TypeError),
        ({"request_id_header": 123}, TypeError),
        ({"request_id_header": "X-Id\r\nInjected: 1"}, ValueError),
        ({"request_id_header": "Bad Header"}, ValueError),
        ({"request_id_header": ""}, ValueError),
        ({"retry_budget": "x"}, TypeError),
        ({"raise_api_errors": "yes"}, TypeError),
        ({"raise_api_errors": 1}, TypeError),
    ],
)
def test_bad_middleware_settings_fail_at_construction(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        ResilienceMiddleware(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"probe_max_delay": NAN}, {"probe_max_delay": INF}, {"max_connections": 2.5},
     {"state_ttl": NAN}],
)  # fmt: skip
def test_bad_redis_store_settings_fail_at_construction(kwargs: dict[str, object]) -> None:
    from resilience.redis import RedisStore

    with pytest.raises((TypeError, ValueError)):
        RedisStore.from_url("redis://127.0.0.1:1/0", namespace="v", **kwargs)  # type: ignore[arg-type]
