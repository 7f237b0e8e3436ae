"""``python -m resilience``: the command line lives in :mod:`resilience.cli`."""

from __future__ import annotations

from resilience.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
