"""Reading the retry log from Python: write JSON lines, then summarize them.

``configure_logging(path)`` appends resilience's attempt events to a file as JSON lines;
``summarize`` folds such lines (from a file, stdin, or any iterable) into counts per outcome
and per code, in constant memory; ``timeline`` picks out the attempts of one request. The
command line does the same: ``python -m resilience logs PATH``.

    python examples/reading_logs.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import aiohttp

from resilience import Backoff, ResilienceMiddleware, configure_logging
from resilience.logs import summarize, timeline
from resilience.testing import Emulator


async def send_jobs(log_path: Path, jobs: int) -> None:
    """Send ``jobs`` generations through the middleware, logging every attempt to the file."""
    undo = configure_logging(log_path, level="debug")  # debug: first-attempt successes too
    try:
        async with Emulator(transient_rate=0.2, fatal_rate=0.05, seed=7) as emu:
            # The emulator's random 402s stand for one-off faults here, not an empty account:
            # send every request instead of stopping the credentials after the first one.
            middleware = ResilienceMiddleware(
                backoff=Backoff(initial=0.02, max_delay=0.5), account_stop=None
            )
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:

                async def job(n: int) -> None:
                    url = emu.url / "v1/generate"
                    async with session.post(url, json={"job": f"job-{n}"}) as resp:
                        await resp.read()

                await asyncio.gather(*(job(n) for n in range(jobs)))
    finally:
        undo()  # also closes the file


def report(log_path: Path) -> None:
    """Print what the log says: totals, attempts per code, one retried request's timeline."""
    with log_path.open("rb") as lines:
        summary = summarize(lines)
    print(
        f"{summary.requests} requests: {summary.requests_ok} ok, "
        f"{summary.requests_failed} failed, {summary.requests_gave_up} gave up; "
        f"{summary.attempt_events} attempts, {summary.retries} retries, "
        f"{summary.waited:.2f} s of backoff"
    )
    print(f"{'code':<34} {'attempts':>8} {'retried':>8} {'failed':>8}")
    for row in summary.codes:
        print(f"{row.code:<34} {row.attempts:>8} {row.retried:>8} {row.failed:>8}")

    retried = next((r for r in summary.slowest if r.attempts and r.attempts > 1), None)
    if retried is not None and retried.request_id is not None:
        with log_path.open("rb") as lines:
            events = timeline(lines, retried.request_id)
        print(f"timeline of request {retried.request_id}:")
        for event in events:
            what = event.get("code") or event.get("error") or event.get("status")
            print(f"  attempt {event['attempt']}: {what} -> {event['outcome']}")


def main() -> None:
    """Write a log of 60 jobs to a temporary file, then read it back."""
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "attempts.jsonl"
        asyncio.run(send_jobs(log_path, jobs=60))
        with log_path.open(encoding="utf-8") as f:
            print(f"wrote {sum(1 for _ in f)} lines to {log_path.name}")
        report(log_path)


if __name__ == "__main__":
    main()
