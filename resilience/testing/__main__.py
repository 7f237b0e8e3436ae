"""Run the generation API emulator in the foreground: ``python -m resilience.testing --help``.

Prints ``listening on http://127.0.0.1:PORT`` once serving, then runs until SIGTERM/SIGINT or
``--duration`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from resilience.testing._emulator import Emulator, EmulatorConfig

_T = TypeVar("_T")


def _optional(kind: Callable[[str], _T]) -> Callable[[str], _T | None]:
    def parse(text: str) -> _T | None:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _parser() -> argparse.ArgumentParser:
    d = EmulatorConfig()
    p = argparse.ArgumentParser(
        prog="python -m resilience.testing",
        description="Fault-injecting emulator of the generation API, on 127.0.0.1.",
    )
    p.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free port)")
    p.add_argument(
        "--duration",
        type=float,
        default=3600.0,
        help="stop by itself after this many seconds (default 3600)",
    )
    p.add_argument(
        "--plan-concurrency",
        type=_optional(int),
        default=d.plan_concurrency,
        help="max generations in flight, or 'none' (default none)",
    )
    p.add_argument(
        "--rate-limit",
        type=_optional(float),
        default=d.rate_limit,
        help="requests per second over /v1/*, or 'none' (default none)",
    )
    p.add_argument("--rate-burst", type=int, default=d.rate_burst, help="token bucket size")
    p.add_argument(
        "--generation-time", type=float, default=d.generation_time, help="seconds per generation"
    )
    p.add_argument("--transient-rate", type=float, default=d.transient_rate)
    p.add_argument("--fatal-rate", type=float, default=d.fatal_rate)
    p.add_argument("--reset-rate", type=float, default=d.reset_rate)
    p.add_argument(
        "--ready-after", type=float, default=d.ready_after, help="seconds until a job is ready"
    )
    p.add_argument(
        "--seed", type=_optional(int), default=d.seed, help="random seed, or 'none' (default 0)"
    )
    return p


async def _serve(config: EmulatorConfig, port: int, duration: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        async with Emulator(config, port=port) as emu:
            print(f"listening on {emu.url}", flush=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    except OSError as exc:
        print(f"error: cannot serve on 127.0.0.1:{port}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve, and return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    if not (math.isfinite(args.duration) and args.duration > 0):
        parser.error(f"--duration must be a finite number > 0, got {args.duration}")
    try:
        config = EmulatorConfig(
            plan_concurrency=args.plan_concurrency,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            generation_time=args.generation_time,
            transient_rate=args.transient_rate,
            fatal_rate=args.fatal_rate,
            reset_rate=args.reset_rate,
            ready_after=args.ready_after,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(_serve(config, args.port, args.duration))


if __name__ == "__main__":
    sys.exit(main())
