"""Shared fixtures and helpers: anyio on asyncio, structlog configured so tests can capture events,
the emulator (``emu``, set up by an ``emulator`` mark), the middleware with short waits, the
connection/permit baseline, a memory ceiling, and a bare aiohttp server for answers the emulator
cannot give."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from structlog.testing import LogCapture
from yarl import URL

from resilience import Backoff, ResilienceMiddleware
from resilience._store import LocalStore
from resilience.testing import Emulator
from tests.redis_server import RedisServer

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.JSONRenderer(),
    ],
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    logger_factory=structlog.PrintLoggerFactory(),
    cache_logger_on_first_use=False,
)

Events = list[MutableMapping[str, Any]]
PLUGIN_ENTRY_POINT = "resilience"  # the name under pytest11 in pyproject.toml
PLUGIN_MODULE = "resilience.testing.pytest_plugin"
AIOHTTP_VERSION = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
"""(major, minor): a few behaviours of aiohttp itself differ at the lowest supported version."""
FAST = Backoff(initial=0.001, multiplier=2, max_delay=0.004)
MB = 1024 * 1024
MEMORY_CEILING = 8 * MB  # what "memory stays low" means here: far below one 50 MB body


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "emulator(**settings): the Emulator settings of the `emu` fixture"
    )
    # Our own pytest plugin comes through its pytest11 entry point once the package is
    # installed; load it here when the installed metadata predates it (a stale editable
    # install), so the suite tests this checkout's plugin either way.
    if not config.pluginmanager.has_plugin(PLUGIN_ENTRY_POINT):
        config.pluginmanager.import_plugin(PLUGIN_MODULE)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A redis-server of the module's own, on a free loopback port (the fleet tests')."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def namespace() -> str:
    """A Redis namespace no other test uses."""
    return f"test-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def capture_events() -> Iterator[Events]:
    """Every structlog event logged inside the block, contextvars merged in: what
    ``capture_logs(processors=[merge_contextvars])`` does on structlog >= 25.5, here on any
    structlog the package supports (the lowest-versions run uses 25.1)."""
    capture = LogCapture()
    processors = structlog.get_config()["processors"]
    saved = list(processors)
    processors[:] = [structlog.contextvars.merge_contextvars, capture]  # in place, as it does
    structlog.configure(processors=processors)
    try:
        yield capture.entries
    finally:
        processors[:] = saved
        structlog.configure(processors=processors)


@pytest.fixture
def logs() -> Iterator[Events]:
    """Every structlog event logged during the test, contextvars merged in."""
    with capture_events() as captured:
        yield captured


@pytest.fixture
async def emu(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    """The emulator on 127.0.0.1, with the settings of the closest ``emulator`` mark:
    ``pytestmark = pytest.mark.emulator(generation_time=0.002)`` for a module."""
    mark = request.node.get_closest_marker("emulator")
    async with Emulator(**(mark.kwargs if mark is not None else {})) as emulator:
        yield emulator


def attempts(events: Events) -> Events:
    """Only the per-attempt events."""
    return [e for e in events if e.get("event") == "resilience.attempt"]


def middleware(*, backoff: Backoff = FAST, **settings: Any) -> ResilienceMiddleware:
    """The middleware with waits short enough for tests (``FAST`` unless told otherwise)."""
    return ResilienceMiddleware(backoff=backoff, **settings)


def local(mw: ResilienceMiddleware) -> LocalStore:
    store = mw.store
    assert isinstance(store, LocalStore)
    return store


def acquired(session: aiohttp.ClientSession) -> int:
    """Connections checked out of the pool (private, but the only way to see a leak)."""
    connector = session.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return len(connector._acquired)


def assert_baseline(session: aiohttp.ClientSession, mw: ResilienceMiddleware) -> None:
    """No connection checked out, no permit held, nobody queued or parked for one."""
    assert acquired(session) == 0, "a connection leaked"
    for limiter in (local(mw).limiter, *local(mw)._scopes.values()):  # every origin's limit
        assert limiter.in_flight == 0, "a concurrency permit leaked"
        assert limiter.waiting == 0, "a task is still queued or parked"


@contextlib.contextmanager
def memory_stays_low() -> Iterator[None]:
    """What Python allocates inside the block peaks below ``MEMORY_CEILING``."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_CEILING, f"peak {peak / MB:.1f} MB"


async def wait_until(predicate: Callable[[], bool], limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    path: str = "/{tail:.*}",
    method: str = "*",
) -> AsyncIterator[URL]:
    """``handler`` answering ``method`` on ``path`` at a free port of 127.0.0.1; yields the base
    URL. Release whatever a handler waits on before leaving the block (cleanup gives them 0.1 s)."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield URL.build(scheme="http", host="127.0.0.1", port=int(runner.addresses[0][1]))
    finally:
        await runner.cleanup()
