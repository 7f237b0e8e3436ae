"""Tuning backoff: look at the schedule a setting produces before you use it, then use it.

``Backoff(...).preview(n)`` computes, without waiting, the nominal wait before each of ``n``
retries, the range jitter can make of it, and the worst-case total. The command line shows the
same table: ``python -m resilience backoff --initial 0.2 --max-delay 5 --retries 6``.

    python examples/tuning_backoff.py
"""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp

from resilience import Backoff, ResilienceMiddleware, configure_logging
from resilience.testing import Emulator, Fault

CANDIDATES = {
    "the default": Backoff(),
    "snappy, capped at 2 s": Backoff(initial=0.1, multiplier=2, max_delay=2.0),
    "patient, never below half": Backoff(initial=1.0, multiplier=3, max_delay=20.0, jitter="equal"),
}


async def run(backoff: Backoff, failures: int) -> list[dict[str, object]]:
    """Send one job that fails ``failures`` times (retryably), return its attempt events."""
    stream = io.StringIO()
    undo = configure_logging(stream)
    try:
        async with Emulator() as emu:
            emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=failures)
            middleware = ResilienceMiddleware(backoff=backoff, max_attempts=failures + 1)
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                url = emu.url / "v1/generate"
                async with session.post(url, json={"job": "tuned"}) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
    finally:
        undo()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def main() -> None:
    """Preview three settings over 5 retries, then run the snappy one against 3 failures."""
    for name, backoff in CANDIDATES.items():
        schedule = backoff.preview(5)
        print(f"== {name}: worst case {schedule.worst_case_total:.1f} s over 5 retries")
        print(schedule)
        print()

    chosen = CANDIDATES["snappy, capped at 2 s"]
    preview = chosen.preview(3)
    events = await run(chosen, failures=3)
    print("== the snappy setting, against a job that fails 3 times before it succeeds")
    for event, step in zip(events, preview.steps, strict=False):
        delay = event["delay"]
        assert isinstance(delay, float)
        print(
            f"retry {step.retry} after {delay:.3f} s (preview: {step.low:.3f} to {step.high:.3f} s)"
        )
        assert step.low <= delay <= step.high
    last = events[-1]
    print(f"outcome {last['outcome']} after {last['attempt']} attempts, {last['elapsed']:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
