"""Test helpers: a fault-injecting emulator of the generation API, and test mode.

Use :class:`Emulator` in-process (an async context manager serving on 127.0.0.1),
:class:`EmulatorThread` (the same from its own thread, for any test runner), or
:class:`EmulatorProcess` / ``python -m resilience.testing`` to run it in its own process.
:func:`set_testing` turns waits off in every middleware for users' own suites; the pytest plugin
(``pytest_plugin``, registered under ``pytest11``) has the ``resilience_emulator`` and
``resilience_testing`` fixtures.

Modules by concern: ``_settings`` (EmulatorConfig and its command-line options), ``_faults``
(scripted faults and how each is served), ``_stats`` (counters), ``_server`` (the aiohttp app),
``_process`` (the subprocess wrapper), ``_thread`` (the emulator in its own thread).
"""

from resilience._testmode import TestMode, set_testing, testing_mode
from resilience.testing._faults import Fault, FaultKind
from resilience.testing._process import EmulatorProcess
from resilience.testing._server import Emulator
from resilience.testing._settings import FATAL_CODES, TRANSIENT_CODES, EmulatorConfig
from resilience.testing._stats import EmulatorStats, Received
from resilience.testing._thread import EmulatorThread

__all__ = [
    "FATAL_CODES",
    "TRANSIENT_CODES",
    "Emulator",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorStats",
    "EmulatorThread",
    "Fault",
    "FaultKind",
    "Received",
    "TestMode",
    "set_testing",
    "testing_mode",
]
