"""Run the generation API emulator in the foreground: ``python -m resilience.testing --help``.

Prints ``listening on http://127.0.0.1:PORT`` once serving, then runs until SIGTERM/SIGINT or
``--duration`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from resilience.cli._args import bounded_int, positive_float
from resilience.testing._server import Emulator
from resilience.testing._settings import EmulatorConfig, add_arguments, config_from_args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m resilience.testing",
        description="Fault-injecting emulator of the generation API, on 127.0.0.1.",
    )
    p.add_argument(
        "--port",
        type=bounded_int(0, 65535),
        default=0,
        help="TCP port (default 0: any free port)",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=3600.0,
        help="stop by itself after this many seconds (default 3600)",
    )
    add_arguments(p.add_argument_group("emulator settings"), EmulatorConfig())
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
    try:
        config = config_from_args(args, EmulatorConfig())
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(_serve(config, args.port, args.duration))


if __name__ == "__main__":
    sys.exit(main())
