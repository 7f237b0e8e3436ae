"""One limiter shared by two sessions: one store per API key, however many sessions use it.

The plan allows 4 generations in flight per API key, across every client using the key. Give
each middleware the same :class:`~resilience.LocalStore` and the sessions share one concurrency
limit (and rate gate, and retry budget): together they never send more than the plan allows.
For comparison, the same traffic with a store per session sends up to twice the plan and is
turned away with ``429 GENERATION_CONCURRENCY_EXCEEDED``. (Several processes share a limit
through ``resilience.redis.RedisStore`` instead.)

    python examples/shared_limiter.py
"""

from __future__ import annotations

import asyncio

import aiohttp

from resilience import Backoff, LocalStore, ResilienceMiddleware, configure_logging
from resilience.testing import Emulator

PLAN = 4
JOBS_PER_SESSION = 40


async def run(shared: bool) -> None:
    """Two sessions, 40 jobs each, at once; one store between them or one each."""
    async with Emulator(plan_concurrency=PLAN, generation_time=0.02) as emu:
        if shared:
            store = LocalStore(max_concurrency=PLAN)
            stores = (store, store)
        else:
            stores = (LocalStore(max_concurrency=PLAN), LocalStore(max_concurrency=PLAN))
        backoff = Backoff(initial=0.01, max_delay=0.2)
        middlewares = [ResilienceMiddleware(store=s, backoff=backoff) for s in stores]
        url = emu.url / "v1/generate"

        async def jobs(session: aiohttp.ClientSession, name: str) -> None:
            async def one(n: int) -> None:
                async with session.post(url, json={"job": f"{name}-{n}"}) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

            await asyncio.gather(*(one(n) for n in range(JOBS_PER_SESSION)))

        async with (
            aiohttp.ClientSession(middlewares=(middlewares[0],)) as a,
            aiohttp.ClientSession(middlewares=(middlewares[1],)) as b,
        ):
            await asyncio.gather(jobs(a, "a"), jobs(b, "b"))

        stats = emu.stats
        rejected = stats.by_code["GENERATION_CONCURRENCY_EXCEEDED"]
        label = "one shared store" if shared else "a store per session"
        limits = " and ".join(str(m.concurrency_limit) for m in middlewares)
        print(
            f"{label:<19}: limits {limits} (same store: {stores[0] is stores[1]}), "
            f"{stats.generations} generations, max in flight {stats.max_in_flight} "
            f"of plan {PLAN}, plan-limit 429s: {rejected}"
        )


async def main() -> None:
    """Run the same traffic with one shared store, then with a store per session."""
    # Log only what goes wrong (give_up, fail): the per-session run throttles a lot.
    undo_logging = configure_logging(level="warning")
    try:
        await run(shared=True)
        await run(shared=False)
    finally:
        undo_logging()


if __name__ == "__main__":
    asyncio.run(main())
