"""Faults against the emulator: each has its documented outcome, nothing unexpected escapes, and
the connector and the limiter are back at baseline afterwards.

``tests/test_middleware.py`` proves how the common odd bodies classify and how resets of GET and
POST are handled; where those faults come back here it is for what that file does not check (the
limiter's baseline, the caller's read). New here: bodies that break off, 50 MB bodies, bad
``Retry-After`` values, slow answers against per-attempt timeouts, redirect chains.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from resilience import ApiError, Backoff, RetryBudgetSettings
from resilience.testing import Emulator, Fault
from tests import conftest
from tests.conftest import MB, Events, assert_baseline, attempts, memory_stays_low, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002, ready_after=0.02)]

# jitter="none": the logged delays are exactly the schedule, so tests can name them.
EXACT = Backoff(initial=0.002, multiplier=2, max_delay=0.008, jitter="none")
FIRST_DELAY = 0.002

middleware = functools.partial(conftest.middleware, backoff=EXACT)


# ------------------------------------------------------------------ bodies, one table


@pytest.mark.parametrize(
    ("fault", "retried"),
    [
        pytest.param(Fault.truncated(503, "DISPATCH_TIMEOUT"), True, id="truncated-503"),
        pytest.param(Fault.reset_after_headers(503), True, id="reset-after-headers-503"),
        pytest.param(Fault.malformed_json(503), True, id="malformed-503"),
        pytest.param(Fault.html(502), True, id="html-502"),
        pytest.param(Fault.html(404), False, id="html-404"),
        pytest.param(Fault.empty(503), True, id="empty-503"),
        pytest.param(Fault.empty(401), False, id="empty-401"),
        pytest.param(Fault.chunked(503, "DISPATCH_TIMEOUT"), True, id="chunked-transient"),
        pytest.param(Fault.chunked(503, "BILLING_INSUFFICIENT_CREDITS"), False, id="chunked-fatal"),
        pytest.param(Fault.gzip(502, "UPSTREAM_GENERATION_ERROR"), True, id="gzip-transient"),
        pytest.param(Fault.gzip(503, "VALIDATION_ERROR"), False, id="gzip-fatal"),
        pytest.param(
            Fault.status(503, b"[1, 2]", {"Content-Type": "application/json"}),
            True,
            id="json-not-an-object",
        ),
        pytest.param(
            Fault.status(400, b'{"code": 7}', {"Content-Type": "application/json"}),
            False,
            id="code-not-a-string",
        ),
        pytest.param(
            Fault.status(503, b"\xff\xfe\x00garbage", {"Content-Type": "application/json"}),
            True,
            id="not-utf8",
        ),
    ],
)
async def test_error_body_faults_keep_the_baseline(
    emu: Emulator, fault: Fault, retried: bool
) -> None:
    """Retryable faults end in the next success; the others are the caller's response, readable."""
    emu.inject(fault, times=1, path="/v1/generate")
    mw = middleware()
    keyed = {"Idempotency-Key": "j"}  # resend safety is not what this table tests
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "j"}, headers=keyed) as resp:
            if retried:
                assert resp.status == 200
                assert (await resp.json())["execution"] == 1
            else:
                assert resp.status == fault.http_status
                await resp.read()  # whole, whatever it is
        assert_baseline(s, mw)
    assert emu.stats.requests == (2 if retried else 1)
    assert emu.stats.executions["j"] == (1 if retried else 0)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.truncated(422, "VALIDATION_ERROR"), id="truncated-422"),
        pytest.param(Fault.reset_after_headers(404), id="reset-after-headers-404"),
    ],
)
async def test_broken_non_retryable_error_body_reaches_the_caller_as_payload_error(
    emu: Emulator, fault: Fault, logs: Events
) -> None:
    """The classifier's read broke: the status decides (not retryable) and the caller's own read
    raises the typed ``ClientPayloadError``; nothing is resent."""
    emu.inject(fault, times=1)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == fault.http_status
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert_baseline(s, mw)
    assert emu.stats.requests == 1
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"]) == ("fail", "not_retryable")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_reset_after_headers_of_a_success_is_the_callers_payload_error(
    emu: Emulator, method: str
) -> None:
    """A 2xx body is never read by the middleware, so a connection cut inside it surfaces on the
    caller's read (typed), the request is not resent, and the permit still comes back."""
    path = "/v1/ping" if method == "GET" else "/v1/generate"
    emu.inject(Fault.reset_after_headers(200), times=1, path=path)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        kwargs: dict[str, Any] = {"json": {"job": "j"}} if method == "POST" else {}
        async with s.request(method, emu.url.with_path(path), **kwargs) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert_baseline(s, mw)
    assert emu.stats.requests == 1
    assert emu.stats.generations == 0


@pytest.mark.parametrize(
    ("method", "headers", "outcome"),
    [
        pytest.param("GET", {}, 200, id="get"),
        pytest.param("POST", {}, aiohttp.ServerDisconnectedError, id="keyless-post"),
        pytest.param("POST", {"Idempotency-Key": "k-1"}, 200, id="keyed-post"),
    ],
)
async def test_reset_before_headers_keeps_the_baseline(
    emu: Emulator, method: str, headers: dict[str, str], outcome: int | type[BaseException]
) -> None:
    path = "/v1/ping" if method == "GET" else "/v1/generate"
    emu.inject(Fault.reset(), times=2, path=path)
    mw = middleware()
    kwargs: dict[str, Any] = {"json": {"job": "j"}} if method == "POST" else {}
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        url = emu.url.with_path(path)
        if isinstance(outcome, int):
            async with s.request(method, url, headers=headers, **kwargs) as resp:
                assert resp.status == outcome
            assert emu.stats.requests == 3
        else:
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
                await s.request(method, url, headers=headers, **kwargs)
            assert emu.stats.requests == 1
        assert_baseline(s, mw)
    assert emu.stats.duplicates == 0
    assert all(n == 1 for n in emu.stats.idempotency_executions.values())


# ------------------------------------------------------------------ 50 MB


async def test_50mb_retryable_error_body_is_dropped_unread(emu: Emulator) -> None:
    """A known length above the envelope cap is classified by status (500: retryable) and the
    connection closed rather than downloaded; memory stays far below the body's size."""
    emu.inject(Fault.big(500, size=50 * MB, code="GENERATION_CAPACITY_EXCEEDED"), times=2)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with memory_stays_low():
            keyed = {"Idempotency-Key": "j"}  # a bare 500 is resent only when keyed
            async with s.post(emu.url / "v1/generate", json={"job": "j"}, headers=keyed) as resp:
                assert resp.status == 200
        assert_baseline(s, mw)
    assert emu.stats.requests == 3


async def test_50mb_final_error_body_is_streamed_by_the_caller(emu: Emulator) -> None:
    """The final 50 MB error is left on the stream for the caller, who reads it whole in chunks
    with low memory; its permit lasts until the body is read."""
    size = 50 * MB
    emu.inject(Fault.big(500, size=size, code="GENERATION_CAPACITY_EXCEEDED"), times=1)
    mw = middleware(max_attempts=1)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with memory_stays_low():
            async with s.post(emu.url / "v1/generate", json={"job": "j"}) as resp:
                assert resp.status == 500
                assert resp._body is None  # the middleware did not buffer it
                assert mw.store.limiter.in_flight == 1  # type: ignore[attr-defined]
                head = await resp.content.read(100)
                total = len(head)
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    total += len(chunk)
        assert_baseline(s, mw)
    assert total == size
    assert head.startswith(b'{"ok": false, "code": "GENERATION_CAPACITY_EXCEEDED"')


async def test_50mb_final_error_body_left_unread_releases_everything(emu: Emulator) -> None:
    emu.inject(Fault.big(503, size=50 * MB), times=1)
    mw = middleware(max_attempts=1)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 503
        assert_baseline(s, mw)
        async with s.get(emu.url / "v1/ping") as resp:  # the pool still works
            assert resp.status == 200
        assert_baseline(s, mw)


# ------------------------------------------------------------------ Retry-After


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("-1", id="negative"),
        pytest.param("-0.5", id="negative-fraction"),
        pytest.param("soon", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("1.5", id="fractional"),
        pytest.param("1e3", id="exponent"),
        pytest.param("0x10", id="hex"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", id="past-date"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", id="past-date-rfc1123"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", id="past-date-rfc850"),
        pytest.param("Sun Nov  6 08:49:37 1994", id="past-date-asctime"),
        pytest.param("0", id="zero"),
    ],
)
async def test_unusable_or_past_retry_after_falls_back_to_the_backoff(
    emu: Emulator, value: str, logs: Events
) -> None:
    """Negative, garbage and fractional values are ignored; a past date means 0. Either way the
    schedule's wait applies and the request succeeds on the next attempt."""
    emu.inject(Fault.retry_after_header(value, status=503, code="DISPATCH_TIMEOUT"), times=1)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "j"}) as resp:
            assert resp.status == 200
        assert_baseline(s, mw)
    first, second = attempts(logs)
    assert (first["outcome"], first["delay"]) == ("retry", FIRST_DELAY)
    assert second["outcome"] == "ok"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("99999", id="huge"),
        pytest.param("3601", id="just-beyond-an-hour"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", id="far-future-date"),
        pytest.param("9" * 400, id="beyond-float"),
    ],
)
@pytest.mark.parametrize("max_elapsed", [5.0, None])
async def test_retry_after_beyond_the_deadline_gives_up_at_once(
    emu: Emulator, value: str, max_elapsed: float | None, logs: Events
) -> None:
    """The response is returned now (``give_up``/``retry_after_beyond_deadline``); without
    ``max_elapsed`` the horizon is MAX_RETRY_AFTER (an hour)."""
    emu.inject(Fault.retry_after_header(value, status=503, code="DISPATCH_TIMEOUT"), times=1)
    mw = middleware(max_elapsed=max_elapsed)
    started = time.monotonic()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "j"}) as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "DISPATCH_TIMEOUT"
        assert_baseline(s, mw)
    assert time.monotonic() - started < 1.0
    assert emu.stats.requests == 1
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"]) == ("give_up", "retry_after_beyond_deadline")


async def test_plan_limit_with_retry_after_zero_is_resent(emu: Emulator, logs: Events) -> None:
    """``Retry-After: 0`` (or a past date) on a plan-limit 429 means "now": with most of
    max_elapsed left the request is resent, not given up for a deadline that is a minute away."""
    emu.inject(Fault.code("GENERATION_CONCURRENCY_EXCEEDED", retry_after=0), times=1)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "j"}) as resp:
            assert resp.status == 200
        assert_baseline(s, mw)
    assert emu.stats.requests == 2
    assert [e["outcome"] for e in attempts(logs)] == ["throttled", "ok"]


# ------------------------------------------------------------------ slow answers


async def test_slow_keyless_post_times_out_once_and_is_not_resent(emu: Emulator) -> None:
    """A per-attempt read timeout after the request was sent is a transport error: a POST without
    an idempotency key is not sent again (the server may be executing it)."""
    emu.inject(Fault.slow(0.15), times=1, path="/v1/generate")
    mw = middleware()
    timeout = aiohttp.ClientTimeout(sock_read=0.03)
    async with aiohttp.ClientSession(middlewares=(mw,), timeout=timeout) as s:
        with pytest.raises(aiohttp.ServerTimeoutError):
            await s.post(emu.url / "v1/generate", json={"job": "j"})
        assert_baseline(s, mw)
        await wait_until(lambda: emu.stats.generations == 1)
    assert emu.stats.requests == 1
    assert emu.stats.executions["j"] == 1


async def test_slow_keyed_post_is_resent_with_the_same_key_and_request_id(emu: Emulator) -> None:
    emu.inject(Fault.slow(0.15), times=1, path="/v1/generate")
    mw = middleware()
    timeout = aiohttp.ClientTimeout(sock_read=0.03)
    headers = {"Idempotency-Key": "k-slow"}
    async with aiohttp.ClientSession(middlewares=(mw,), timeout=timeout) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "j"}, headers=headers) as resp:
            assert resp.status == 200
        assert_baseline(s, mw)
    assert emu.stats.requests == 2
    first, second = emu.received[-2:]
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == "k-slow"
    assert first.headers["X-Request-ID"] == second.headers["X-Request-ID"]


async def test_slow_every_time_stops_at_max_attempts(emu: Emulator, logs: Events) -> None:
    """Read timeouts are not among aiohttp's hidden resends, so exactly max_attempts are sent."""
    emu.inject(Fault.slow(0.1), times=10, path="/v1/ping")
    mw = middleware(max_attempts=3)
    timeout = aiohttp.ClientTimeout(sock_read=0.02)
    async with aiohttp.ClientSession(middlewares=(mw,), timeout=timeout) as s:
        with pytest.raises(aiohttp.ServerTimeoutError):
            await s.get(emu.url / "v1/ping")
        assert_baseline(s, mw)
        await asyncio.sleep(0.05)
    assert emu.stats.requests == 3
    assert [e["outcome"] for e in attempts(logs)] == ["retry", "retry", "give_up"]
    assert {e["error"] for e in attempts(logs)} == {"SocketTimeoutError"}  # a ServerTimeoutError


# ------------------------------------------------------------------ redirects


async def test_redirect_chain_runs_the_middleware_once_per_hop(emu: Emulator, logs: Events) -> None:
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/redirect/3") as resp:
            assert resp.status == 200
            assert len(resp.history) == 3
        assert_baseline(s, mw)
    events = attempts(logs)
    assert [e["url"].split("/v1/")[1] for e in events] == [
        "redirect/3",
        "redirect/2",
        "redirect/1",
        "ping",
    ]
    assert {(e["attempt"], e["outcome"], e["status"]) for e in events[:3]} == {(1, "ok", 302)}
    assert emu.stats.requests == 4


async def test_fault_inside_a_redirect_chain_is_retried_at_that_hop(
    emu: Emulator, logs: Events
) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1, path="/v1/redirect/2")
    emu.inject(Fault.reset(), times=1, path="/v1/ping")
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/redirect/3") as resp:
            assert resp.status == 200
        assert_baseline(s, mw)
    hops = [(e["url"].split("/v1/")[1], e["attempt"], e["outcome"]) for e in attempts(logs)]
    assert hops == [
        ("redirect/3", 1, "ok"),
        ("redirect/2", 1, "retry"),
        ("redirect/2", 2, "ok"),
        ("redirect/1", 1, "ok"),
        ("ping", 1, "retry"),
        ("ping", 2, "ok"),
    ]
    assert emu.stats.requests == 6


async def test_too_many_redirects_is_a_typed_error_and_not_retried(emu: Emulator) -> None:
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with pytest.raises(aiohttp.TooManyRedirects):
            await s.get(emu.url / "v1/redirect/50", max_redirects=4)
        assert_baseline(s, mw)
    assert emu.stats.requests == 4


# ------------------------------------------------------------------ many faults, one pool


async def test_every_fault_in_turn_through_one_connection(emu: Emulator) -> None:
    """All the faults above back to back through a single pooled connection: a leak of either
    the connection or a permit would deadlock the next request."""
    faults = [
        Fault.reset(),
        Fault.reset_after_headers(503),
        Fault.truncated(),
        Fault.malformed_json(),
        Fault.html(),
        Fault.empty(),
        Fault.big(500, size=2 * MB),
        Fault.chunked(),
        Fault.gzip(),
        Fault.retry_after_header("garbage", status=503, code="DISPATCH_TIMEOUT"),
        Fault.code("GENERATION_CONCURRENCY_EXCEEDED"),
        Fault.code("GENERATION_NOT_READY", retry_after_ms=1),
    ]
    for fault in faults:
        emu.inject(fault, times=1, path="/v1/ping")
    mw = middleware(max_attempts=len(faults) + 1, max_concurrency=1)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(middlewares=(mw,), connector=connector) as s:
        with anyio.fail_after(10):
            async with s.get(emu.url / "v1/ping") as resp:
                assert resp.status == 200
                assert json.loads(await resp.read()) == {"ok": True}
            async with s.get(emu.url / "v1/ping") as resp:
                assert resp.status == 200
        assert_baseline(s, mw)
    assert emu.stats.requests == len(faults) + 2


# ------------------------------------------------------------------ every method, every path


def _fail_once_per_method(fault: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler whose first answer to each method is ``fault`` (a reset before any byte, or
    a gateway's bare 502 page), then 200."""
    seen: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.StreamResponse:
        seen[request.method] += 1
        if seen[request.method] == 1:
            if fault == "reset":
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)  # never written
            return web.Response(status=502, text="<html>Bad Gateway</html>")
        return web.Response(text="ok")

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


@pytest.mark.parametrize("fault", ["reset", "bare-502"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_idempotent_methods_are_resent_after_a_reset_or_a_bare_502(
    method: str, fault: str, logs: Events
) -> None:
    """RFC 9110's idempotent methods may be resent whatever the first attempt did on the server;
    a keyless POST may not (``test_keyless_post_is_not_resent_after_a_bare_gateway_error``)."""
    handler = _fail_once_per_method(fault)
    mw = middleware()
    async with conftest.serve(handler) as base, aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.request(method, base / "v1/thing", data=b"x" * 10) as resp:
            assert resp.status == 200
        assert_baseline(s, mw)
    assert handler.seen[method] == 2  # type: ignore[attr-defined]
    assert [e["outcome"] for e in attempts(logs)] == ["retry", "ok"]


async def test_keyless_post_whose_connect_times_out_is_resent(emu: Emulator, logs: Events) -> None:
    """A connect timeout means nothing was sent, so even a keyless POST is resent. The pool's
    only connection is held by a slow request, so the POST's ``connect`` timeout expires
    waiting for one (aiohttp's ConnectionTimeoutError) until the slow one is done."""
    emu.inject(Fault.slow(0.1), times=1, path="/v1/ping")
    mw = middleware(max_attempts=20, backoff=Backoff(0.02, 1, 0.02, "none"))
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(middlewares=(mw,), connector=connector) as s:
        slow = asyncio.ensure_future(s.get(emu.url / "v1/ping"))
        await wait_until(lambda: emu.stats.in_flight == 1 or emu.stats.requests == 1)
        timeout = aiohttp.ClientTimeout(connect=0.02)
        async with s.post(emu.url / "v1/generate", json={"job": "p"}, timeout=timeout) as resp:
            assert resp.status == 200
        (await slow).release()
        assert_baseline(s, mw)
    assert emu.stats.executions["p"] == 1
    post = [e for e in attempts(logs) if e["method"] == "POST"]
    assert post[0]["error"] == "ConnectionTimeoutError"
    assert post[0]["outcome"] == "retry"
    assert post[-1]["outcome"] == "ok"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a self-signed certificate no client trusts."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_tls_certificate_failure_is_sent_once(
    self_signed: ssl.SSLContext, logs: Events
) -> None:
    """An untrusted certificate will not change on a retry: one attempt, the typed error."""

    async def never(_: web.Request) -> web.Response:
        raise AssertionError("the TLS handshake failed: no request reaches the handler")

    app = web.Application()
    app.router.add_get("/v1/ping", never)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed).start()
        port = int(runner.addresses[0][1])
        mw = middleware(max_attempts=5)
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await s.get(f"https://127.0.0.1:{port}/v1/ping")
            assert_baseline(s, mw)
    finally:
        await runner.cleanup()
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"]) == ("fail", "not_retryable")
    assert event["error"] == "ClientConnectorCertificateError"


# ------------------------------------------------------------------ what the loop counts


async def test_api_error_counts_throttles_and_polls_in_its_attempts(emu: Emulator) -> None:
    emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=1), times=1, path="/v1/generate")
    emu.inject(Fault.code("GENERATION_NOT_READY", retry_after_ms=1), times=1, path="/v1/generate")
    emu.inject(Fault.code("VALIDATION_ERROR"), times=1, path="/v1/generate")
    mw = middleware(raise_api_errors=True)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with pytest.raises(ApiError) as raised:
            await s.post(emu.url / "v1/generate", json={"job": "v"})
        assert_baseline(s, mw)
    assert (raised.value.attempts, raised.value.error_code) == (3, "VALIDATION_ERROR")
    assert emu.stats.requests == 3


async def test_each_request_funds_its_own_share_of_retries(emu: Emulator, logs: Events) -> None:
    """The budget is bounded from below as well as above: with no reserve and ``ratio=1`` each
    logical request's deposit pays for exactly one retry of a failure, never two."""
    budget = RetryBudgetSettings(ratio=1.0, min_per_second=0.0, ttl=10.0)
    mw = middleware(retry_budget=budget)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        for job in "abc":  # one failure each: each is retried on its own deposit
            emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1, path="/v1/generate")
            async with s.post(emu.url / "v1/generate", json={"job": job}) as resp:
                assert resp.status == 200
        emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=2, path="/v1/generate")
        async with s.post(emu.url / "v1/generate", json={"job": "d"}) as resp:
            assert resp.status == 503  # its second retry finds the budget spent
        assert_baseline(s, mw)
    last = attempts(logs)[-1]
    assert (last["attempt"], last["outcome"], last["reason"]) == (2, "give_up", "retry_budget")


async def test_throttles_and_failures_walk_separate_schedules(emu: Emulator, logs: Events) -> None:
    """Polls without a Retry-After take the backoff schedule; a failure after them starts its
    own schedule at the first step instead of inheriting the polls' long waits."""
    schedule = Backoff(initial=0.01, multiplier=2, max_delay=1.0, jitter="none")
    for fault in [Fault.code("GENERATION_NOT_READY")] * 3 + [Fault.code("DISPATCH_TIMEOUT")]:
        emu.inject(fault, times=1, path="/v1/ping")
    async with aiohttp.ClientSession(middlewares=(middleware(backoff=schedule),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    events = attempts(logs)
    assert [(e["outcome"], e["delay"]) for e in events] == [
        ("not_ready", 0.01),
        ("not_ready", 0.02),
        ("not_ready", 0.04),
        ("retry", 0.01),
        ("ok", None),
    ]


async def test_an_over_cap_error_body_is_released_before_api_error_is_raised(
    emu: Emulator,
) -> None:
    """The caller never sees the response behind an ApiError, so the middleware must give its
    connection (and permit) back itself, without downloading the body."""
    emu.inject(Fault.big(422, size=2 * MB, code="VALIDATION_ERROR"), times=1)
    mw = middleware(raise_api_errors=True, max_concurrency=1)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with memory_stays_low(), pytest.raises(ApiError) as raised:
            await s.get(emu.url / "v1/ping")
        assert raised.value.status == 422
        assert_baseline(s, mw)
        with anyio.fail_after(5):  # the one permit is free again
            async with s.get(emu.url / "v1/ping") as resp:
                assert resp.status == 200


# ------------------------------------------------------------------ the per-origin gate


@pytest.mark.emulator(generation_time=0.002)
async def test_a_rate_limit_on_one_path_holds_every_path_of_its_origin_only(
    emu: Emulator,
) -> None:
    """The gate belongs to the origin (scheme, host, port): a 429 on /v1/generate holds a GET
    of /v1/ping on the same origin until the Retry-After, while another origin is not held."""
    emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=300), times=1, path="/v1/generate")
    mw = middleware()
    async with Emulator() as other, aiohttp.ClientSession(middlewares=(mw,)) as s:
        first = asyncio.ensure_future(s.post(emu.url / "v1/generate", json={"job": "g"}))
        await wait_until(lambda: emu.stats.by_code["RATE_LIMITED"] == 1)
        closed_at = time.monotonic()
        async with s.get(other.url / "v1/ping") as resp:
            assert resp.status == 200
        other_origin = time.monotonic() - closed_at
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
        same_origin = time.monotonic() - closed_at
        (await first).release()
        assert_baseline(s, mw)
    assert other_origin < 0.2
    assert same_origin >= 0.25
