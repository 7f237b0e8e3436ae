"""Test helpers: a fault-injecting emulator of the generation API.

Use :class:`Emulator` in-process (an async context manager serving on 127.0.0.1) or
:class:`EmulatorProcess` / ``python -m resilience.testing`` to run it in its own process.

Modules by concern: ``_settings`` (EmulatorConfig and its command-line options), ``_faults``
(scripted faults and how each is served), ``_stats`` (counters), ``_server`` (the aiohttp app),
``_process`` (the subprocess wrapper).
"""

from resilience.testing._faults import Fault, FaultKind
from resilience.testing._process import EmulatorProcess
from resilience.testing._server import Emulator
from resilience.testing._settings import FATAL_CODES, TRANSIENT_CODES, EmulatorConfig
from resilience.testing._stats import EmulatorStats, Received

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
