"""Quickstart: give an aiohttp session you already have the resilience middleware.

Runs as-is: it starts the fault-injecting emulator on 127.0.0.1, makes the next two requests
fail with a retryable code, and shows the middleware retrying them (one JSON line per attempt
on stdout), then a non-retryable code that is returned at once.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

import aiohttp

import resilience
from resilience.testing import Emulator, Fault


async def main() -> None:
    """Wrap a session, then send two jobs through it: one retried, one not."""
    # Attempt events as JSON lines on stdout. The default level ("info") logs every attempt of
    # a request that needed more than one; level="debug" adds first-attempt successes.
    undo_logging = resilience.configure_logging()
    try:
        async with Emulator() as emu, aiohttp.ClientSession() as session:
            # The common case: wrap the session once; every request through it is covered.
            # (Short waits so that the example is quick; the default starts at 0.5 s.)
            resilience.wrap(session, backoff=resilience.Backoff(initial=0.05, max_delay=1.0))
            url = emu.url / "v1/generate"

            emu.inject(Fault.code("UPSTREAM_GENERATION_ERROR"), times=2)  # retryable, twice
            async with session.post(url, json={"job": "quickstart-1"}) as resp:
                body = await resp.json()
            print(f"job quickstart-1: HTTP {resp.status} {body}")

            emu.inject(Fault.code("BILLING_INSUFFICIENT_CREDITS"))  # not retryable
            async with session.post(url, json={"job": "quickstart-2"}) as resp:
                body = await resp.json()  # the error envelope is still yours to read
            print(f"job quickstart-2: HTTP {resp.status} {body['code']} (not retried)")

            print(f"the emulator received {emu.stats.requests} requests for 2 jobs")
    finally:
        undo_logging()


if __name__ == "__main__":
    asyncio.run(main())
