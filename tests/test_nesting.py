"""One request, one resilience middleware: nesting never multiplies attempts, and one middleware
is never silently shared by two running event loops."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest
from yarl import URL

from resilience import ResilienceMiddleware, wrap
from resilience.testing import Emulator, Fault
from tests.conftest import FAST, Events, assert_baseline, attempts, middleware

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002)]


async def test_wrapping_a_session_twice_is_a_no_op(emu: Emulator) -> None:
    """A helper that wraps whatever session it is given, called twice with settings: one
    middleware, so ``max_attempts=3`` sends 3 requests, not 9."""
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=100)
    async with aiohttp.ClientSession() as s:
        wrap(s, max_attempts=3, backoff=FAST)
        wrap(s, max_attempts=3, backoff=FAST)
        assert sum(isinstance(m, ResilienceMiddleware) for m in s._middlewares) == 1
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 503
    assert emu.stats.requests == 3


@pytest.mark.parametrize("where", ["session", "request"])
async def test_an_inner_resilience_middleware_passes_through(
    emu: Emulator, logs: Events, where: str
) -> None:
    """A library's session with its own middleware, used by an app that adds another: the
    outermost one runs the request (its attempts, its events); the inner one sees the same
    request already handled and passes it through."""
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=100)
    outer, inner = middleware(max_attempts=3), middleware(max_attempts=4)
    chain = (outer, inner)
    session_chain = chain if where == "session" else ()
    async with aiohttp.ClientSession(middlewares=session_chain) as s:
        extra = {"middlewares": chain} if where == "request" else {}
        async with s.get(emu.url / "v1/ping", **extra) as resp:  # type: ignore[arg-type]
            assert resp.status == 503
        assert_baseline(s, outer)
        assert_baseline(s, inner)
    assert emu.stats.requests == 3
    assert [e["attempt"] for e in attempts(logs)] == [1, 2, 3]


async def test_a_request_made_inside_another_is_its_own_logical_request(
    emu: Emulator, logs: Events
) -> None:
    """Pass-through is per request: a middleware between the two that sends a request of its
    own (say, to refresh a token) still gets resilience for it."""
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1, path="/v1/ping")
    mw = middleware()

    async def refresh_token(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType):  # type: ignore[no-untyped-def]
        if req.url.path == "/v1/generate":
            async with aiohttp.ClientSession(middlewares=(mw,)) as side:
                async with side.get(emu.url / "v1/ping") as token:
                    assert token.status == 200  # retried once: it had its own attempts
        return await handler(req)

    async with aiohttp.ClientSession(middlewares=(mw, refresh_token)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "j"}) as resp:
            assert resp.status == 200
    assert emu.stats.by_path["/v1/ping"] == 2


# ------------------------------------------------------------------ two event loops


def _run_in_thread(mw: ResilienceMiddleware, url: URL, started: threading.Event,
                   release: threading.Event, results: list[object]) -> None:  # fmt: skip
    async def main() -> None:
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            async with s.get(url) as resp:
                started.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)
                results.append(resp.status)

    try:
        asyncio.run(main())
    except BaseException as exc:  # reported to the test
        results.append(exc)
        started.set()


async def test_a_second_running_event_loop_gets_a_clear_error(emu: Emulator) -> None:
    """One middleware, two threads each with its own running loop: its limits (anyio
    primitives) belong to one loop, so the second loop's first request is refused with a
    RuntimeError that says what to do, instead of hanging on permits the other loop frees."""
    mw = middleware(max_concurrency=1)
    started, release = threading.Event(), threading.Event()
    results: list[object] = []
    thread = threading.Thread(
        target=_run_in_thread, args=(mw, emu.url / "v1/ping", started, release, results)
    )
    thread.start()
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        assert results == [], results
        async with aiohttp.ClientSession(middlewares=(mw,)) as s:
            with pytest.raises(RuntimeError, match="event loop"):
                await s.get(emu.url / "v1/ping")
    finally:
        release.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
    assert results == [200]


def test_one_middleware_serves_loops_one_after_another() -> None:
    """``asyncio.run()`` twice (a script, a test suite): the first loop is gone, so the second
    may use the middleware; its limits come along."""

    async def once(mw: ResilienceMiddleware) -> int:
        async with Emulator(generation_time=0.001) as emu:
            emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
            async with aiohttp.ClientSession(middlewares=(mw,)) as s:
                async with s.get(emu.url / "v1/ping") as resp:
                    return resp.status

    mw = middleware(max_concurrency=1)
    assert asyncio.run(once(mw)) == 200
    assert asyncio.run(once(mw)) == 200
