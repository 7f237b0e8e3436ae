"""The account-level stop rule on a fake clock: one stop answer speaks for the credentials."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from yarl import URL

from resilience import Redaction
from resilience._account import (
    MAX_STOPPED,
    RECHECK_STALE,
    AccountStop,
    AccountStops,
    Go,
    Stopped,
    credentials_key,
)

ORIGIN = "http://127.0.0.1:8000"
URL_ = URL(ORIGIN + "/v1/generate")
NAMES = AccountStop().credential_headers


def key(value: str, origin: str = ORIGIN, url: URL = URL_) -> bytes:
    return credentials_key(origin, CIMultiDict({"Authorization": value}), url, NAMES)


def stop(stops: AccountStops, k: bytes, now: float, go: Go | None = None) -> None:
    stops.record(
        k,
        go or Go(recheck=False),
        now,
        status=402,
        code="BILLING_INSUFFICIENT_CREDITS",
        detail="Insufficient credits.",
    )


def test_credentials_are_compared_by_a_keyed_digest_never_kept_in_clear() -> None:
    secret = "Bearer sk-live-very-secret"
    digest = key(secret)
    assert secret.encode() not in digest
    assert digest == key(secret)
    assert digest != key("Bearer sk-other")
    assert digest != key(secret, origin="http://127.0.0.1:9000")


def test_header_names_are_case_insensitive_and_query_secrets_count() -> None:
    lower = credentials_key(ORIGIN, CIMultiDict({"x-api-key": "k1"}), URL_, NAMES)
    upper = credentials_key(ORIGIN, CIMultiDict({"X-API-KEY": "k1"}), URL_, NAMES)
    assert lower == upper
    a = credentials_key(ORIGIN, CIMultiDict(), URL_.with_query(api_key="a"), NAMES)
    b = credentials_key(ORIGIN, CIMultiDict(), URL_.with_query(api_key="b"), NAMES)
    plain = credentials_key(ORIGIN, CIMultiDict(), URL_.with_query(page="2"), NAMES)
    assert a != b
    assert plain == credentials_key(ORIGIN, CIMultiDict(), URL_, NAMES)


def test_stop_answer_stops_following_requests_with_the_same_credentials() -> None:
    stops = AccountStops(AccountStop(recheck_interval=10.0))
    k = key("Bearer a")
    assert stops.check(k, 0.0) == Go(recheck=False)
    stop(stops, k, 1.0)
    stopped = stops.check(k, 2.0)
    assert isinstance(stopped, Stopped)
    assert (stopped.status, stopped.code, stopped.recheck_at) == (
        402,
        "BILLING_INSUFFICIENT_CREDITS",
        11.0,
    )
    assert stops.check(key("Bearer b"), 2.0) == Go(recheck=False)


def test_after_the_recheck_interval_exactly_one_request_rechecks() -> None:
    stops = AccountStops(AccountStop(recheck_interval=10.0))
    k = key("Bearer a")
    stop(stops, k, 0.0)
    go = stops.check(k, 10.0)
    assert go == Go(recheck=True)
    assert all(isinstance(stops.check(k, 10.5), Stopped) for _ in range(50))


def test_a_good_recheck_answer_lifts_the_stop() -> None:
    stops = AccountStops(AccountStop(recheck_interval=10.0))
    k = key("Bearer a")
    stop(stops, k, 0.0)
    go = stops.check(k, 10.0)
    assert isinstance(go, Go)
    stops.record(k, go, 10.2, status=200, code=None, detail=None)
    assert stops.check(k, 10.3) == Go(recheck=False)
    assert len(stops) == 0


def test_a_stop_answer_to_the_recheck_renews_the_stop() -> None:
    stops = AccountStops(AccountStop(recheck_interval=10.0))
    k = key("Bearer a")
    stop(stops, k, 0.0)
    go = stops.check(k, 10.0)
    assert isinstance(go, Go)
    stop(stops, k, 10.1, go)
    stopped = stops.check(k, 10.2)
    assert isinstance(stopped, Stopped)
    assert stopped.recheck_at == pytest.approx(20.1)


def test_answer_of_a_request_sent_before_the_stop_does_not_lift_it() -> None:
    stops = AccountStops(AccountStop())
    k = key("Bearer a")
    in_flight = stops.check(k, 0.0)
    assert isinstance(in_flight, Go)
    stop(stops, k, 0.1)
    stops.record(k, in_flight, 0.2, status=200, code=None, detail=None)
    assert isinstance(stops.check(k, 0.3), Stopped)


def test_abandoned_recheck_frees_the_slot_at_once() -> None:
    stops = AccountStops(AccountStop(recheck_interval=10.0))
    k = key("Bearer a")
    stop(stops, k, 0.0)
    go = stops.check(k, 10.0)
    assert isinstance(go, Go)
    stops.abandon(k, go)
    assert stops.check(k, 10.1) == Go(recheck=True)


def test_a_slow_recheck_keeps_the_one_slot_until_it_ends() -> None:
    # A recheck slower than the interval (a long generation) must not let a second one through.
    stops = AccountStops(AccountStop(recheck_interval=10.0))
    k = key("Bearer a")
    stop(stops, k, 0.0)
    assert stops.check(k, 10.0) == Go(recheck=True)
    assert isinstance(stops.check(k, 25.0), Stopped)
    assert isinstance(stops.check(k, 10.0 + RECHECK_STALE - 0.1), Stopped)
    # Only a recheck whose end was never seen (its task died) frees the slot, much later.
    assert stops.check(k, 10.0 + RECHECK_STALE) == Go(recheck=True)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "RATE_LIMITED"),
        (403, "AUTH_ADMIN_ROLE_REQUIRED"),
        (422, "VALIDATION_ERROR"),
        (401, None),
        (503, "DISPATCH_TIMEOUT"),
    ],
)
def test_other_answers_do_not_stop_the_account(status: int, code: str | None) -> None:
    stops = AccountStops(AccountStop())
    k = key("Bearer a")
    stops.record(k, Go(recheck=False), 0.0, status=status, code=code, detail=None)
    assert stops.check(k, 0.1) == Go(recheck=False)


@pytest.mark.parametrize(
    "code",
    ["AUTH_INVALID_SESSION", "AUTH_REQUIRED", "AUTH_SESSION_EXPIRED", "AUTH_USER_UNAVAILABLE"],
)
def test_every_401_auth_code_stops_the_account(code: str) -> None:
    stops = AccountStops(AccountStop())
    k = key("Bearer a")
    stops.record(k, Go(recheck=False), 0.0, status=401, code=code, detail=None)
    assert isinstance(stops.check(k, 0.1), Stopped)


def test_memory_is_bounded_oldest_stop_forgotten_first() -> None:
    stops = AccountStops(AccountStop())
    first = key("Bearer 0")
    for i in range(MAX_STOPPED + 5):
        stop(stops, key(f"Bearer {i}"), 0.0)
    assert len(stops) == MAX_STOPPED
    assert stops.check(first, 0.1) == Go(recheck=False)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"recheck_interval": 0}, ValueError),
        ({"recheck_interval": float("inf")}, ValueError),
        ({"recheck_interval": "10"}, TypeError),
        ({"codes": "AUTH_REQUIRED"}, TypeError),
        ({"codes": {""}}, TypeError),
        ({"credential_headers": "Authorization"}, TypeError),
        ({"recheck_interval": 10**400}, ValueError),
        ({"recheck_interval": 86401}, ValueError),
        ({"credential_headers": ("Bad Header\n",)}, ValueError),
    ],
)
def test_bad_account_stop_settings_are_rejected(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match="AccountStop"):
        AccountStop(**kwargs)  # type: ignore[arg-type]


def test_custom_codes_are_kept_as_a_frozenset() -> None:
    settings = AccountStop(codes={"MY_QUOTA_EXCEEDED"})  # type: ignore[arg-type]
    assert settings.codes == frozenset({"MY_QUOTA_EXCEEDED"})


def test_what_the_redaction_hides_is_part_of_the_credentials() -> None:
    redaction = Redaction(params=("sid",), paths=(r"/bot([^/]+)/",))
    a = credentials_key(ORIGIN, CIMultiDict(), URL_.with_query(sid="A"), NAMES, redaction)
    b = credentials_key(ORIGIN, CIMultiDict(), URL_.with_query(sid="B"), NAMES, redaction)
    assert a != b
    bot_a = credentials_key(ORIGIN, CIMultiDict(), URL(ORIGIN + "/botA/send"), NAMES, redaction)
    bot_b = credentials_key(ORIGIN, CIMultiDict(), URL(ORIGIN + "/botB/send"), NAMES, redaction)
    assert bot_a != bot_b
