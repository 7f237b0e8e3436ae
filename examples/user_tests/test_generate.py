"""An example test of your own code that uses the middleware: copy it into your suite.

``pip install resilience`` brings the pytest plugin (no conftest needed): the
``resilience_emulator`` fixture serves the generation API emulator on 127.0.0.1 for one test,
``resilience_testing`` turns test mode on (retries happen at once, no real sleeps). The tests
below run on anyio's pytest plugin (anyio comes with resilience); the fixtures are plain sync
fixtures, so pytest-asyncio or pytest-aiohttp work the same.

    python -m pytest examples/user_tests -q
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from yarl import URL

from resilience import ResilienceMiddleware
from resilience.testing import EmulatorThread, Fault

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio


# ---- the code under test: yours, here a small client of the generation API -----------------


async def generate(base_url: URL, job: str) -> dict[str, Any]:
    """Run one generation job; the middleware retries what the code table says is retryable."""
    async with (
        aiohttp.ClientSession(middlewares=(ResilienceMiddleware(max_attempts=4),)) as session,
        session.post(base_url / "v1/generate", json={"job": job}) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


# ---- the tests -----------------------------------------------------------------------------


@pytest.mark.resilience_emulator(generation_time=0.0)
async def test_generate_survives_two_upstream_errors(
    resilience_emulator: EmulatorThread, resilience_testing: object
) -> None:
    resilience_emulator.inject(Fault.code("UPSTREAM_GENERATION_ERROR"), times=2)

    body = await generate(resilience_emulator.url, "job-1")

    assert body["ok"] is True
    assert resilience_emulator.stats.requests == 3  # two errors, then the success
    assert resilience_emulator.stats.duplicates == 0


async def test_generate_returns_the_billing_error_without_retrying(
    resilience_emulator: EmulatorThread, resilience_testing: object
) -> None:
    resilience_emulator.inject(Fault.code("BILLING_INSUFFICIENT_CREDITS"))

    body = await generate(resilience_emulator.url, "job-2")

    assert body["code"] == "BILLING_INSUFFICIENT_CREDITS"
    assert resilience_emulator.stats.requests == 1


@pytest.mark.resilience_testing(attempts=2)
async def test_generate_gives_up_after_the_attempts_test_mode_allows(
    resilience_emulator: EmulatorThread, resilience_testing: object
) -> None:
    resilience_emulator.inject(Fault.code("DISPATCH_TIMEOUT"), times=5)

    body = await generate(resilience_emulator.url, "job-3")

    assert body["code"] == "DISPATCH_TIMEOUT"
    assert resilience_emulator.stats.requests == 2  # test mode's attempts=2, not the 4 above
