"""The command line: ``python -m resilience {demo,backoff,logs}`` (or the ``resilience`` script).

* ``demo``: a batch of jobs through the middleware against the embedded emulator, with a fault
  mix, a progress bar, a JSON-lines attempt log and a summary table (``_demo``, ``_demo_run``).
* ``backoff``: the wait schedule a backoff setting produces, before using it (``_backoff``).
* ``logs``: summarize a structured retry log (``_logs``; the reading is :mod:`resilience.logs`).

Each subcommand is a :class:`~resilience.cli._args.Command`; :func:`main` builds the parser and
turns errors into exit codes, once for all of them. Terminal output needs ``rich`` (the ``cli``
extra); without it these commands print a one-line hint and exit 2 (``logs --json`` works
without it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from resilience.cli._args import PROG, Command, CommandError

__all__ = ["main"]


def _commands() -> tuple[Command, ...]:
    # Imported here: the demo pulls in the emulator, which imports resilience.cli._args.
    from resilience.cli import _backoff, _demo, _logs

    return (_demo.COMMAND, _backoff.COMMAND, _logs.COMMAND)


def _parser() -> argparse.ArgumentParser:
    from resilience import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Resilience middleware for aiohttp: run the demo, preview a backoff schedule, "
            "read a structured retry log."
        ),
    )
    parser.add_argument("--version", action="version", version=f"resilience {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _commands():
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run, parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success; 2 on a usage error (bad option, bad value, ``rich`` missing) or when the
    command cannot go on (an unreadable log, an unwritable log file); 130 on Ctrl-C; ``logs``
    also returns 1 when ``--request`` names no request in the log.
    """
    parser = _parser()
    args: argparse.Namespace | None = None
    try:
        args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
        if extra:  # said by the subcommand's parser, so that its usage line is printed
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return int(args.run(args, args.parser))
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2
    except CommandError as exc:
        prog = args.parser.prog if args is not None else PROG
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
