"""Cancellation and deadlines at every stage of a logical request.

Stages: waiting for a concurrency permit, waiting at the rate gate, in flight, reading the error
envelope, during a wait between attempts (backoff, Retry-After, plan-limit park, 425 poll), and
after the response was returned. For each: no further attempt reaches the server, every permit
and connection comes back, and the caller sees ``CancelledError`` / ``TimeoutError`` unchanged
(or ``DeadlineExceeded`` when the middleware's own ``max_elapsed`` is what ran out).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import anyio
import pytest
from aiohttp import web
from yarl import URL

from resilience import DeadlineExceeded
from resilience.testing import Emulator, Fault
from tests.conftest import Events, assert_baseline, attempts, local, middleware, serve, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002, ready_after=5.0)]

WAIT_MS = 100  # the wait the cancellation interrupts
SETTLE = 0.13  # longer than WAIT_MS: an attempt that should not happen would have happened

CancelMode = Literal["cancel", "client_timeout", "fail_after"]
CANCEL_MODES: tuple[CancelMode, ...] = ("cancel", "client_timeout", "fail_after")


async def fetch(
    session: aiohttp.ClientSession, method: str, url: URL, **kwargs: Any
) -> tuple[int, bytes]:
    async with session.request(method, url, **kwargs) as resp:
        return resp.status, await resp.read()


async def interrupt(
    mode: CancelMode,
    call: Callable[..., Awaitable[Any]],
    ready: Callable[[], bool],
    *,
    after: float = 0.05,
) -> BaseException:
    """Run ``call`` in a task and stop it the ``mode`` way once ``ready()``; return what the caller
    saw. ``client_timeout`` and ``fail_after`` fire ``after`` seconds from the start, so the
    stage must be reached well before that."""
    if mode == "cancel":
        task = asyncio.ensure_future(call())
        await wait_until(ready)
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as cancelled:
            await task
        return cancelled.value
    if mode == "client_timeout":
        task = asyncio.ensure_future(call(timeout=aiohttp.ClientTimeout(total=after)))
    else:

        async def bounded() -> Any:
            with anyio.fail_after(after):
                return await call()

        task = asyncio.ensure_future(bounded())
    await wait_until(ready)
    with pytest.raises((TimeoutError, asyncio.TimeoutError)) as timed_out:
        await task
    return timed_out.value


def assert_unchanged(mode: CancelMode, exc: BaseException) -> None:
    if mode == "cancel":
        assert type(exc) is asyncio.CancelledError
    else:
        # aiohttp's total timeout and anyio's fail_after raise the plain TimeoutError (one class
        # since Python 3.11); the middleware must not turn it into DeadlineExceeded or a
        # ClientError.
        assert type(exc) in (TimeoutError, asyncio.TimeoutError)
        assert not isinstance(exc, (DeadlineExceeded, aiohttp.ClientError))


# ------------------------------------------------------------------ waiting for a permit


@pytest.mark.parametrize("mode", CANCEL_MODES)
async def test_waiting_for_a_permit(emu: Emulator, mode: CancelMode) -> None:
    mw = middleware(max_concurrency=1)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        holder = asyncio.ensure_future(
            fetch(s, "GET", emu.url.with_path("/v1/slow").with_query(delay="0.15"))
        )
        await wait_until(lambda: local(mw).limiter.in_flight == 1)

        def waiter(**kwargs: Any) -> Awaitable[tuple[int, bytes]]:
            return fetch(s, "GET", emu.url / "v1/ping", **kwargs)

        exc = await interrupt(mode, waiter, lambda: local(mw).limiter.waiting == 1)
        assert_unchanged(mode, exc)
        assert local(mw).limiter.waiting == 0
        assert (await holder)[0] == 200
        await asyncio.sleep(0.02)
        assert_baseline(s, mw)
    assert emu.stats.by_path["/v1/ping"] == 0  # the cancelled request was never sent


async def test_no_permit_before_max_elapsed_raises_deadline_exceeded(
    emu: Emulator, logs: Events
) -> None:
    mw = middleware(max_concurrency=1, max_elapsed=0.05)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        holder = asyncio.ensure_future(
            fetch(s, "GET", emu.url.with_path("/v1/slow").with_query(delay="0.15"))
        )
        await wait_until(lambda: local(mw).limiter.in_flight == 1)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            await s.get(emu.url / "v1/ping")
        assert 0.04 <= time.monotonic() - started < 0.15
        assert local(mw).limiter.waiting == 0
        assert (await holder)[0] == 200
        assert_baseline(s, mw)
    assert isinstance(caught.value, TimeoutError)
    assert (caught.value.attempts, caught.value.last_status) == (0, None)
    assert emu.stats.by_path["/v1/ping"] == 0
    unsent = [e for e in attempts(logs) if e["url"].endswith("/v1/ping")]
    assert [(e["outcome"], e["reason"], e["status"]) for e in unsent] == [
        ("give_up", "deadline", None)
    ]


# ------------------------------------------------------------------ waiting at the rate gate


def gate_closed_by(emu: Emulator, ms: int) -> None:
    emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=ms), times=1, path="/v1/ping")


@pytest.mark.parametrize("mode", CANCEL_MODES)
async def test_waiting_at_the_rate_gate(emu: Emulator, mode: CancelMode) -> None:
    """The 429 closed the gate; the retry waits there and is stopped. The gate (0.6 s) and the
    timeouts (0.3 s) leave the first attempt, a new connection, time on a busy machine."""
    gate_closed_by(emu, 600)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        pacer = local(mw).pacer(str(emu.url.origin()))

        def call(**kwargs: Any) -> Awaitable[tuple[int, bytes]]:
            return fetch(s, "GET", emu.url / "v1/ping", **kwargs)

        exc = await interrupt(mode, call, lambda: pacer.turn.locked(), after=0.3)
        assert_unchanged(mode, exc)
        assert not pacer.turn.locked()  # the gate's queue is free again
        await asyncio.sleep(SETTLE)
        assert emu.stats.requests == 1
        assert_baseline(s, mw)
        # The gate reopened and nothing is stuck: the next request goes through.
        with anyio.fail_after(2):
            assert (await fetch(s, "GET", emu.url / "v1/ping"))[0] == 200
        assert_baseline(s, mw)


async def test_queue_behind_the_gate_is_cancelled_whole(emu: Emulator) -> None:
    gate_closed_by(emu, WAIT_MS)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        first = asyncio.ensure_future(fetch(s, "GET", emu.url / "v1/ping"))
        pacer = local(mw).pacer(str(emu.url.origin()))
        await wait_until(lambda: pacer.turn.locked())
        queued = [asyncio.ensure_future(fetch(s, "GET", emu.url / "v1/ping")) for _ in range(5)]
        await asyncio.sleep(0.01)
        for task in (first, *queued):
            task.cancel()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        assert all(type(r) is asyncio.CancelledError for r in results)
        await asyncio.sleep(SETTLE)
        assert emu.stats.requests == 1
        assert not pacer.turn.locked()
        assert_baseline(s, mw)


async def test_gate_closed_past_max_elapsed_raises_deadline_exceeded_at_once(
    emu: Emulator,
) -> None:
    gate_closed_by(emu, 300)
    mw = middleware(max_elapsed=0.1)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        status, _ = await fetch(s, "GET", emu.url / "v1/ping")
        assert status == 429  # Retry-After beyond max_elapsed: given up, returned
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            await s.get(emu.url / "v1/ping")
        assert time.monotonic() - started < 0.05  # no sleeping towards a deadline it cannot meet
        assert caught.value.attempts == 0
        assert_baseline(s, mw)
    assert emu.stats.requests == 1


# ------------------------------------------------------------------ in flight


@pytest.mark.parametrize("mode", CANCEL_MODES)
@pytest.mark.parametrize("keyed", [False, True], ids=["get", "keyed-post"])
async def test_in_flight(emu: Emulator, mode: CancelMode, keyed: bool) -> None:
    """Stopped while the server is working: not resent, even when a resend would be safe."""
    emu.inject(Fault.slow(0.3), times=1)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        if keyed:
            method, url = "POST", emu.url / "v1/generate"
            extra: dict[str, Any] = {"json": {"job": "j"}, "headers": {"Idempotency-Key": "k"}}
        else:
            method, url, extra = "GET", emu.url / "v1/ping", {}

        def call(**kwargs: Any) -> Awaitable[tuple[int, bytes]]:
            return fetch(s, method, url, **extra, **kwargs)

        exc = await interrupt(mode, call, lambda: emu.stats.requests == 1)
        assert_unchanged(mode, exc)
        assert_baseline(s, mw)
        await asyncio.sleep(0.1)
        assert emu.stats.requests == 1


# ------------------------------------------------------------------ reading the envelope


@dataclass
class StallServer:
    """Answers ``status`` with a Content-Length it never completes (until released), then 200s."""

    url: URL
    stalls: int = 1
    status: int = 503
    requests: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def stall() -> AsyncIterator[StallServer]:
    server = StallServer(URL("http://127.0.0.1"))

    async def handler(request: web.Request) -> web.StreamResponse:
        server.requests += 1
        if server.requests > server.stalls:
            return web.json_response({"ok": True})
        resp = web.StreamResponse(status=server.status)
        resp.content_type = "application/json"
        resp.content_length = 200
        await resp.prepare(request)
        await resp.write(b'{"ok": false, "code": "DISP')
        await server.release.wait()
        return resp

    async with serve(handler) as url:
        server.url = url
        try:
            yield server
        finally:
            server.release.set()


@pytest.mark.parametrize("mode", CANCEL_MODES)
async def test_while_reading_the_error_envelope(stall: StallServer, mode: CancelMode) -> None:
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:

        def call(**kwargs: Any) -> Awaitable[tuple[int, bytes]]:
            return fetch(s, "GET", stall.url / "v1/ping", **kwargs)

        exc = await interrupt(mode, call, lambda: stall.requests == 1)
        assert_unchanged(mode, exc)
        assert_baseline(s, mw)
        await asyncio.sleep(0.05)
    assert stall.requests == 1


async def test_stalled_error_body_is_bounded_by_the_per_attempt_timeout(
    stall: StallServer, logs: Events
) -> None:
    """A server cannot hold the permit by never finishing its error body: the read timeout ends
    the classifier's read, the status decides (503: retryable), the next attempt succeeds."""
    mw = middleware()
    timeout = aiohttp.ClientTimeout(sock_read=0.05)
    async with aiohttp.ClientSession(middlewares=(mw,), timeout=timeout) as s:
        with anyio.fail_after(2):
            status, body = await fetch(s, "GET", stall.url / "v1/ping")
        assert (status, body) == (200, b'{"ok": true}')
        assert_baseline(s, mw)
    assert stall.requests == 2
    first = attempts(logs)[0]
    assert (first["status"], first["outcome"]) == (503, "retry")


# ------------------------------------------------------------------ waits between attempts


# Long enough that the first attempt (a new connection) answers before the interruption at
# BETWEEN_AFTER even on a busy machine; BETWEEN_SETTLE outlasts what is left of the wait.
BETWEEN_MS, BETWEEN_AFTER, BETWEEN_SETTLE = 600, 0.3, 0.4
WAIT_FAULTS = {
    "retry-after": Fault.code("DISPATCH_TIMEOUT", retry_after_ms=BETWEEN_MS),
    "plan-limit-park": Fault.code("GENERATION_CONCURRENCY_EXCEEDED", retry_after_ms=BETWEEN_MS),
    "poll": Fault.code("GENERATION_NOT_READY", retry_after_ms=BETWEEN_MS),
}


@pytest.mark.parametrize("mode", CANCEL_MODES)
@pytest.mark.parametrize("wait", sorted(WAIT_FAULTS))
async def test_during_a_wait_between_attempts(
    emu: Emulator, mode: CancelMode, wait: str, logs: Events
) -> None:
    emu.inject(WAIT_FAULTS[wait], times=1, path="/v1/generate")
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:

        def call(**kwargs: Any) -> Awaitable[tuple[int, bytes]]:
            headers = {"Idempotency-Key": "k"}
            return fetch(
                s, "POST", emu.url / "v1/generate", json={"job": "j"}, headers=headers, **kwargs
            )

        exc = await interrupt(mode, call, lambda: len(attempts(logs)) == 1, after=BETWEEN_AFTER)
        assert_unchanged(mode, exc)
        assert attempts(logs)[0]["delay"] == pytest.approx(BETWEEN_MS / 1000)
        assert_baseline(s, mw)
        await asyncio.sleep(BETWEEN_SETTLE)
        assert emu.stats.requests == 1
        assert_baseline(s, mw)
    assert emu.stats.generations == 0


# ------------------------------------------------------------------ after the response returned


@pytest.mark.parametrize("mode", CANCEL_MODES)
async def test_while_the_caller_reads_the_returned_body(
    stall: StallServer, mode: CancelMode
) -> None:
    """The returned response holds its permit until its body is done; a caller stopped mid-read
    gives both the permit and the connection back."""
    stall.status = 200
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        holding = asyncio.Event()

        async def call(**kwargs: Any) -> bytes:
            async with s.get(stall.url / "v1/ping", **kwargs) as resp:
                holding.set()
                return await resp.read()

        exc = await interrupt(
            mode, call, lambda: holding.is_set() and local(mw).limiter.in_flight == 1
        )
        assert_unchanged(mode, exc)
        assert_baseline(s, mw)
    assert stall.requests == 1
