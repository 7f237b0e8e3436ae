"""Polling: create a job, then GET it until it is ready; the middleware handles the 425s.

``POST /v1/jobs`` answers 202 with a job id; ``GET /v1/jobs/{id}`` answers
``425 GENERATION_NOT_READY`` with ``Retry-After-Ms`` until the job is done, then 200. The
middleware waits as the server asks and polls again, so the caller makes one GET. Polls do
not count toward ``max_attempts``; ``max_elapsed`` bounds how long the middleware keeps polling.

    python examples/polling.py
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from resilience import ResilienceMiddleware, configure_logging
from resilience.testing import Emulator


async def main() -> None:
    """Create a job that takes a second, then wait for it with a single GET."""
    undo_logging = configure_logging()  # one JSON line per poll on stdout
    try:
        async with Emulator(ready_after=1.0) as emu:
            middleware = ResilienceMiddleware(max_elapsed=30.0)
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                async with session.post(emu.url / "v1/jobs", json={"prompt": "a cat"}) as resp:
                    created = await resp.json()
                job_id = created["id"]
                print(f"created {job_id} (HTTP {resp.status})")

                started = time.monotonic()
                async with session.get(emu.url / "v1/jobs" / job_id) as resp:
                    body = await resp.json()
                took = time.monotonic() - started
                polls = emu.stats.by_path["/v1/jobs/{id}"]
                print(f"{job_id}: HTTP {resp.status} {body} after {took:.2f} s and {polls} polls")
    finally:
        undo_logging()


if __name__ == "__main__":
    asyncio.run(main())
