"""End to end: a real ClientSession with the middleware against the emulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
import structlog
from aiohttp import web

from resilience import (
    ApiError,
    Backoff,
    CodeTable,
    DeadlineExceeded,
    ErrorSpec,
    LocalStore,
    ResilienceMiddleware,
    wrap,
)
from resilience.testing import Emulator, Fault
from tests.conftest import Events, acquired, attempts, local, middleware

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.005, ready_after=0.03)]


# ------------------------------------------------------------------ 2. classification


async def test_retryable_code_is_retried_until_success(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("UPSTREAM_GENERATION_ERROR"), times=2)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["job"] == "a"
    assert emu.stats.requests == 3
    assert [e["outcome"] for e in attempts(logs)] == ["retry", "retry", "ok"]


@pytest.mark.parametrize(
    "code",
    ["UPSTREAM_GENERATION_SERVICE_ERROR", "GENERATION_CAPACITY_EXCEEDED", "VALIDATION_ERROR"],
)
async def test_non_retryable_code_is_sent_once(emu: Emulator, code: str, logs: Events) -> None:
    emu.inject(Fault.code(code), times=3)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            body = await resp.json()  # the caller can still read the envelope
    assert body["code"] == code
    assert emu.stats.requests == 1
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"], event["code"]) == ("fail", "not_retryable", code)
    assert event["log_level"] == "warning"


async def test_custom_table_can_make_a_code_retryable(emu: Emulator) -> None:
    table = CodeTable.default().with_overrides(GENERATION_CAPACITY_EXCEEDED=True)
    emu.inject(Fault.code("GENERATION_CAPACITY_EXCEEDED"), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(codes=table),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    assert emu.stats.requests == 2


async def test_custom_code_of_another_api(emu: Emulator) -> None:
    table = CodeTable([ErrorSpec("TRY_LATER", 418, retryable=True)])
    emu.inject(Fault.code("TRY_LATER", status=418), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(codes=table),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    ("fault", "retried"),
    [
        (Fault.html(502), True),
        (Fault.empty(503), True),
        (Fault.malformed_json(503), True),
        (Fault.malformed_json(400), False),
        (Fault.chunked(503, "GENERATION_CAPACITY_EXCEEDED"), False),
        (Fault.gzip(503, "GENERATION_CAPACITY_EXCEEDED"), False),
        (Fault.gzip(502, "UPSTREAM_GENERATION_ERROR"), True),
    ],
)
async def test_odd_bodies_classify_by_envelope_or_status(
    emu: Emulator, fault: Fault, retried: bool
) -> None:
    emu.inject(fault, times=1)
    keyed = {"Idempotency-Key": "k"}  # safe to resend: only the classification is tested here
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}, headers=keyed) as resp:
            text = await resp.text()  # the caller's read never breaks
            assert (resp.status == 200) is retried
            if not retried:
                assert resp.status == fault.http_status
                if fault.error_code:
                    assert json.loads(text)["code"] == fault.error_code
        assert acquired(s) == 0
    assert emu.stats.requests == (2 if retried else 1)


@pytest.mark.parametrize(
    ("fault", "resent"),
    [
        (Fault.html(502), False),  # a gateway's page: the generation may have run
        (Fault.empty(500), False),
        (Fault.status(504, b"gateway timeout"), False),
        (Fault.empty(503), True),  # unavailable: nothing ran
        (Fault.code("UPSTREAM_GENERATION_ERROR"), True),  # the table says retry
    ],
)
async def test_keyless_post_is_not_resent_after_a_bare_gateway_error(
    emu: Emulator, fault: Fault, resent: bool, logs: Events
) -> None:
    emu.inject(fault, times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert (resp.status == 200) is resent
    assert emu.stats.requests == (2 if resent else 1)
    if not resent:
        (event,) = attempts(logs)
        assert (event["outcome"], event["reason"]) == ("give_up", "not_idempotent")


async def test_huge_error_body_is_not_buffered_and_caller_reads_it_whole(emu: Emulator) -> None:
    size = 2 * 1024 * 1024
    emu.inject(Fault.big(500, size=size, code="GENERATION_CAPACITY_EXCEEDED"), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(max_attempts=1),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp._body is None  # the classifier did not read it
            body = await resp.read()
    assert len(body) == size
    assert json.loads(body)["code"] == "GENERATION_CAPACITY_EXCEEDED"


async def test_success_bodies_are_never_read_by_the_middleware(emu: Emulator) -> None:
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp._body is None
            assert (await resp.json())["ok"] is True


# ------------------------------------------------------------------ 3. retry decision


async def test_waits_never_exceed_max_delay(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=6)
    mw = middleware(max_attempts=7, backoff=Backoff(0.001, 3, 0.005, "none"))
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    delays = [e["delay"] for e in attempts(logs) if e["delay"] is not None]
    assert delays == [0.001, 0.003, 0.005, 0.005, 0.005, 0.005]


async def test_max_attempts_bounds_failures_and_returns_the_last_response(
    emu: Emulator, logs: Events
) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=10)
    async with aiohttp.ClientSession(middlewares=(middleware(max_attempts=3),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "DISPATCH_TIMEOUT"
            with pytest.raises(aiohttp.ClientResponseError):
                resp.raise_for_status()
    assert emu.stats.requests == 3
    last = attempts(logs)[-1]
    assert (last["outcome"], last["reason"], last["log_level"]) == (
        "give_up",
        "max_attempts",
        "warning",
    )


async def test_retry_after_lifts_the_wait(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT", retry_after_ms=60), times=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    assert loop.time() - start >= 0.06
    assert attempts(logs)[0]["delay"] == pytest.approx(0.06)


async def test_retry_after_beyond_max_elapsed_gives_up_at_once(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT", retry_after=30), times=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession(middlewares=(middleware(max_elapsed=5.0),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 503
    assert loop.time() - start < 1.0
    assert emu.stats.requests == 1
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"]) == ("give_up", "retry_after_beyond_deadline")


async def test_no_wait_runs_past_max_elapsed(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=100)
    mw = middleware(max_attempts=100, max_elapsed=0.15, backoff=Backoff(0.02, 1.5, 0.05, "none"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 503
    assert loop.time() - start < 0.15 + 0.05


# ------------------------------------------------------------------ 4. 425 polling


async def test_not_ready_is_polled_until_done(emu: Emulator, logs: Events) -> None:
    async with aiohttp.ClientSession(middlewares=(middleware(max_attempts=2),)) as s:
        async with s.post(emu.url / "v1/jobs", json={"text": "hi"}) as created:
            job = (await created.json())["id"]
        async with s.get(emu.url / "v1/jobs" / job) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "done"
    polls = [e for e in attempts(logs) if e["outcome"] == "not_ready"]
    assert len(polls) >= 1
    assert all(e["log_level"] == "info" and e["code"] == "GENERATION_NOT_READY" for e in polls)
    assert not any(e["outcome"] in ("give_up", "fail") for e in attempts(logs))


# ------------------------------------------------------------------ 5. transport failures


async def test_reset_is_retried_for_get(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.reset(), times=2)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    events = attempts(logs)
    assert [e["status"] for e in events] == [None, None, 200]
    assert events[0]["error"] in ("ServerDisconnectedError", "ClientOSError")


async def test_reset_post_without_key_is_not_resent(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.reset(), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await s.post(emu.url / "v1/generate", json={"job": "a"})
    assert emu.stats.requests == 1
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"]) == ("give_up", "not_idempotent")


async def test_reset_post_with_idempotency_key_is_resent(emu: Emulator) -> None:
    emu.inject(Fault.reset(), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        headers = {"Idempotency-Key": "k-1"}
        async with s.post(emu.url / "v1/generate", json={"job": "a"}, headers=headers) as resp:
            assert resp.status == 200
    assert emu.stats.idempotency_executions["k-1"] == 1


async def test_give_up_on_reset_does_not_trigger_aiohttps_hidden_retry(emu: Emulator) -> None:
    emu.inject(Fault.reset(), times=10)
    async with aiohttp.ClientSession(middlewares=(middleware(max_attempts=3),)) as s:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await s.get(emu.url / "v1/ping")
        assert emu.stats.requests == 3
        # The guard is one-shot: the next identical request is sent normally.
        emu.clear_faults()
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused_post_is_retried_because_nothing_was_sent(
    logs: Events,
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/generate"
    async with aiohttp.ClientSession(middlewares=(middleware(max_attempts=3),)) as s:
        with pytest.raises(aiohttp.ClientConnectorError):
            await s.post(url, json={"job": "a"})
    events = attempts(logs)
    assert [e["outcome"] for e in events] == ["retry", "retry", "give_up"]
    assert events[-1]["reason"] == "max_attempts"


async def test_per_attempt_socket_timeout_is_retried(emu: Emulator) -> None:
    emu.inject(Fault.slow(0.5), times=1, path="/v1/ping")
    timeout = aiohttp.ClientTimeout(sock_read=0.05)
    async with aiohttp.ClientSession(middlewares=(middleware(),), timeout=timeout) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    assert emu.stats.requests == 2


async def test_total_timeout_stops_at_once(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=100)
    mw = middleware(max_attempts=100, backoff=Backoff(0.05, 1, 0.05, "none"))
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with pytest.raises(asyncio.TimeoutError):
            await s.get(emu.url / "v1/ping", timeout=aiohttp.ClientTimeout(total=0.12))
        sent = emu.stats.requests
        await asyncio.sleep(0.1)
        assert emu.stats.requests == sent <= 3
        assert acquired(s) == 0


async def test_cancellation_stops_at_once(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=100)
    mw = middleware(max_attempts=100, backoff=Backoff(0.05, 1, 0.05, "none"))
    # Sends counted where they are made: the server's count lags them (a loaded machine had
    # a request on the wire at the cancellation that the server counted after it).
    sends = 0

    async def count_send(*_: object) -> None:
        nonlocal sends
        sends += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(count_send)
    async with aiohttp.ClientSession(middlewares=(mw,), trace_configs=[trace]) as s:
        task = asyncio.ensure_future(s.get(emu.url / "v1/ping"))
        await asyncio.sleep(0.08)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sent = sends
        await asyncio.sleep(0.1)
        assert sends == sent  # nothing sent after the cancellation
        assert 0 < emu.stats.requests <= sent  # and the server saw nothing else
        assert mw.store.limiter.in_flight == 0  # type: ignore[attr-defined]


# ------------------------------------------------------------------ 6. request bodies


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": b"\x00bytes\xff" * 100}, b"\x00bytes\xff" * 100),
        ({"data": "text \u00e9"}, "text \u00e9".encode()),
        ({"json": {"a": [1, 2]}}, json.dumps({"a": [1, 2]}).encode()),
        ({"data": {"f": "v", "g": "w"}}, b"f=v&g=w"),
    ],
)
async def test_replayable_bodies_are_resent_intact(
    emu: Emulator, kwargs: dict[str, Any], expected: bytes
) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=2, path="/v1/echo")
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/echo", **kwargs) as resp:
            body = await resp.json()
    assert emu.stats.requests == 3
    assert (body["len"], body["sha256"]) == (len(expected), _sha(expected))


async def test_multipart_form_is_resent_intact(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1, path="/v1/echo")
    form = aiohttp.FormData()
    form.add_field("text", "hello")
    form.add_field("audio", b"RIFF" * 1000, filename="a.wav", content_type="audio/wav")
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/echo", data=form) as resp:
            body = await resp.json()
    assert body["len"] > 4000
    assert emu.stats.requests == 2


async def test_unreplayable_body_is_sent_once(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=2, path="/v1/echo")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"part one,"
        yield b"part two"

    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/echo", data=chunks()) as resp:
            assert resp.status == 503
    assert emu.stats.requests == 1
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"]) == ("give_up", "body_not_replayable")


# ------------------------------------------------------------------ 7. connections


async def test_discarded_responses_do_not_leak_connections(emu: Emulator) -> None:
    emu.inject(Fault.big(500, size=300_000, code="INTERNAL_ERROR"), times=3)
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=3)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),), connector=connector) as s:
        with anyio.fail_after(5):  # a leaked connection would deadlock on limit=1
            keyed = {"Idempotency-Key": "a"}  # a bare 500 is resent only when keyed
            async with s.post(emu.url / "v1/generate", json={"job": "a"}, headers=keyed) as resp:
                assert resp.status == 503
            async with s.post(emu.url / "v1/generate", json={"job": "a2"}) as resp:
                assert resp.status == 200
        async with s.post(emu.url / "v1/generate", json={"job": "b"}) as resp:
            assert resp.status == 200
        assert acquired(s) == 0


# ------------------------------------------------------------------ 8. request ids


async def test_one_request_id_on_every_attempt(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=2)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
        async with s.get(emu.url / "v1/ping", headers={"X-Request-ID": "mine"}) as resp:
            assert resp.status == 200
    ids = emu.stats.request_ids
    assert len(set(ids[:3])) == 1
    assert len(ids[0]) == 32
    assert ids[3] == "mine"
    events = attempts(logs)
    assert {e["request_id"] for e in events[:3]} == {ids[0]}
    assert all(e["server_request_id"].startswith("srv-") for e in events)
    assert len({e["server_request_id"] for e in events}) == 4


# ------------------------------------------------------------------ 9. logs


REQUIRED_FIELDS = {
    "request_id",
    "attempt",
    "method",
    "url",
    "status",
    "code",
    "retryable",
    "outcome",
    "delay",
    "elapsed",
    "server_request_id",
}


async def test_one_event_per_attempt_with_the_documented_fields(
    emu: Emulator, logs: Events
) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
        async with s.post(emu.url / "v1/generate", json={"job": "b"}) as resp:
            assert resp.status == 200
    events = attempts(logs)
    assert len(events) == emu.stats.requests == 3
    for event in events:
        assert event.keys() >= REQUIRED_FIELDS
    assert [(e["attempt"], e["outcome"], e["log_level"]) for e in events] == [
        (1, "retry", "info"),
        (2, "ok", "info"),
        (1, "ok", "debug"),  # a first-attempt success is cheap
    ]
    assert events[0]["retryable"] is True
    assert events[0]["delay"] is not None


async def test_credentials_never_reach_the_logs(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
    url = emu.url.with_user("alice").with_password("hunter2") / "v1/generate"
    url = url.with_query({"api_key": "sk-secret1", "Token": "tok-secret2", "voice": "calm"})
    headers = {
        "Authorization": "Bearer sk-secret3",
        "X-API-Key": "sk-secret4",
        "Cookie": "session=sk-secret5",
    }
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(url, json={"job": "a"}) as resp:  # userinfo becomes Basic auth
            assert resp.status == 200
        async with s.post(url.with_user(None), json={"job": "b"}, headers=headers) as resp:
            assert resp.status == 200
    dumped = json.dumps(logs)
    for secret in ("hunter2", "alice", "sk-secret1", "tok-secret2", "sk-secret3", "sk-secret4",
                   "sk-secret5"):  # fmt: skip
        assert secret not in dumped
    assert "voice=calm" in attempts(logs)[0]["url"]
    # ... while the server did get them.
    assert emu.received[-1].headers["Authorization"] == "Bearer sk-secret3"


async def test_nothing_bound_leaks_into_the_callers_logs(emu: Emulator) -> None:
    structlog.contextvars.clear_contextvars()
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    assert structlog.contextvars.get_contextvars() == {}


# ------------------------------------------------------------------ 10. final outcome


async def test_api_error_option_raises_typed_error(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=5)
    mw = middleware(max_attempts=2, raise_api_errors=True)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with pytest.raises(ApiError) as caught:
            await s.post(emu.url / "v1/generate", json={"job": "a"})
        assert acquired(s) == 0
    error = caught.value
    assert isinstance(error, aiohttp.ClientResponseError)
    assert (error.status, error.error_code, error.retryable, error.attempts) == (
        503,
        "DISPATCH_TIMEOUT",
        True,
        2,
    )
    assert error.detail
    assert len(error.request_id) == 32
    assert error.server_request_id
    assert error.server_request_id.startswith("srv-")


async def test_raise_for_status_session_still_works(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
    emu.inject(Fault.code("VALIDATION_ERROR"), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),), raise_for_status=True) as s:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await s.post(emu.url / "v1/generate", json={"job": "a"})
    assert caught.value.status == 422


# ------------------------------------------------------------------ 11. settings, wrap


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_elapsed": -1.0},
        {"max_elapsed": 0},
        {"max_concurrency": 0},
        {"initial_concurrency": 0},
        {"envelope_cap": -1},
        {"store": LocalStore(), "max_concurrency": 8},  # the store's, not the middleware's
        {"store": LocalStore(), "initial_concurrency": 8},
        {"store": LocalStore(), "retry_budget": None},
    ],
)
def test_bad_settings_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        ResilienceMiddleware(**kwargs)


def test_wrong_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        ResilienceMiddleware(max_attempts=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ResilienceMiddleware(backoff={"initial": 1})  # type: ignore[arg-type]


async def test_wrap_installs_the_middleware_on_an_existing_session(emu: Emulator) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
    async with aiohttp.ClientSession() as s:
        mw = middleware()
        assert wrap(s, mw) is s
        wrap(s, mw)  # twice is a no-op
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    assert emu.stats.requests == 2
    with pytest.raises(RuntimeError, match="closed"):
        wrap(s)


# ------------------------------------------------------------------ review regressions


@pytest.mark.parametrize(
    "fault",
    [
        Fault.code("GENERATION_NOT_READY", retry_after=0),
        Fault.code("GENERATION_CONCURRENCY_EXCEEDED", retry_after_ms=0),
        Fault.retry_after_header("Mon, 01 Jan 2001 00:00:00 GMT", 425, "GENERATION_NOT_READY"),
    ],
)
async def test_zero_retry_after_on_a_throttle_is_no_busy_loop(emu: Emulator, fault: Fault) -> None:
    emu.inject(fault, times=10_000)
    # The schedule says "no wait" too (initial=0): only the 10 ms floor stands in the way.
    mw = middleware(max_elapsed=0.2, backoff=Backoff(initial=0, max_delay=1, jitter="none"))
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status in (425, 429)
    assert emu.stats.requests <= 0.2 / 0.01 + 2  # a 10 ms floor between polls


async def test_a_give_up_on_a_refused_connection_does_not_drop_the_next_request(
    emu: Emulator,
) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/v1/ping"
    async with aiohttp.ClientSession(middlewares=(middleware(max_attempts=2),)) as s:
        with pytest.raises(aiohttp.ClientConnectorError):
            await s.get(url)
        app = web.Application()

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="up")

        app.router.add_get("/v1/ping", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with s.get(url) as resp:  # same task, same method and URL
                assert await resp.text() == "up"
            child = await asyncio.ensure_future(s.get(url))  # a task made afterwards
            assert child.status == 200
            child.release()
        finally:
            await runner.cleanup()


async def test_a_huge_retry_after_closes_the_gate_for_one_deadline_at_most(
    emu: Emulator,
) -> None:
    emu.inject(Fault.code("RATE_LIMITED", retry_after=10**9), times=1)
    mw = middleware(max_elapsed=2.0)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 429  # given up at once: beyond the deadline
        pacer = local(mw).pacer(str(emu.url.origin()))
        assert 2.0 < pacer.gate_wait() <= 3.0
        with pytest.raises(DeadlineExceeded):  # later requests fail fast, unsent
            await s.get(emu.url / "v1/ping")
    assert emu.stats.requests == 1


async def test_the_attempt_on_the_wire_is_logged_when_the_caller_gives_up(
    emu: Emulator, logs: Events
) -> None:
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        with pytest.raises(asyncio.TimeoutError):
            await s.get(
                emu.url / "v1/slow", params={"delay": "1"}, timeout=aiohttp.ClientTimeout(total=0.1)
            )
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"], event["status"]) == ("fail", "timeout", None)


async def test_an_absurd_code_is_cut_short_in_logs(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.status(503, json.dumps({"code": "X" * 20_000}).encode()), times=1)
    async with aiohttp.ClientSession(middlewares=(middleware(),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    assert len(attempts(logs)[0]["code"]) == 100
