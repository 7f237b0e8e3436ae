"""The pytest plugin (entry point ``pytest11``): fixtures for testing code that uses resilience.

Installed with the package; nothing to enable. Fixtures:

- ``resilience_emulator``: the generation API emulator on 127.0.0.1, served from its own thread
  (so it works with any async test runner, or none), stopped after the test. Its settings come
  from the closest ``@pytest.mark.resilience_emulator(**settings)`` mark.
- ``resilience_testing``: test mode (:func:`resilience.testing.set_testing`) for one test: no
  real waits between attempts. Settings from ``@pytest.mark.resilience_testing(attempts=...)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience._testmode import TestMode, set_testing
from resilience.testing._thread import EmulatorThread

__all__: list[str] = []  # the fixtures are requested by name, never imported


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "resilience_emulator(**settings): EmulatorConfig settings of the resilience_emulator "
        "fixture",
    )
    config.addinivalue_line(
        "markers",
        "resilience_testing(attempts=None, waits=False): the test mode of the resilience_testing "
        "fixture",
    )


@pytest.fixture
def resilience_emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorThread]:
    """The emulator, serving at ``resilience_emulator.url`` for the duration of the test."""
    mark = request.node.get_closest_marker("resilience_emulator")
    settings = dict(mark.kwargs) if mark is not None else {}
    with EmulatorThread(**settings) as emulator:
        yield emulator


@pytest.fixture
def resilience_testing(request: pytest.FixtureRequest) -> Iterator[TestMode]:
    """Test mode for the duration of the test: retries happen at once."""
    mark = request.node.get_closest_marker("resilience_testing")
    settings = dict(mark.kwargs) if mark is not None else {}
    with set_testing(True, **settings) as mode:
        assert mode is not None
        yield mode
