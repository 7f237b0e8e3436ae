"""Test helpers: a fault-injecting emulator of the generation API.

Use :class:`Emulator` in-process (an async context manager serving on 127.0.0.1) or
:class:`EmulatorProcess` / ``python -m resilience.testing`` to run it in its own process.
"""

from resilience.testing._emulator import (
    FATAL_CODES,
    TRANSIENT_CODES,
    Emulator,
    EmulatorConfig,
    EmulatorProcess,
    EmulatorStats,
    Fault,
    FaultKind,
    Received,
)

__all__ = [
    "FATAL_CODES",
    "TRANSIENT_CODES",
    "Emulator",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorStats",
    "Fault",
    "FaultKind",
    "Received",
]
