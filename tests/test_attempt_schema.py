"""The attempt event's fields are declared once (``ATTEMPT_FIELDS``): the emitter writes exactly
those, the table of docs/howto/read-logs.md lists exactly those, and the log reader reads only
those."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from resilience import logs as log_reader
from resilience._events import ATTEMPT_EVENT, ATTEMPT_FIELDS
from resilience.testing import Emulator, Fault
from tests.conftest import Events, attempts, middleware

ROOT = Path(__file__).resolve().parents[1]
CAPTURE_KEYS = {"event", "log_level"}  # added by structlog's capture_logs, not by the middleware


def documented_attempt_table() -> list[str]:
    """The field names in the first column of the attempt-event table (docs/howto/read-logs.md),
    in order."""
    text = (ROOT / "docs" / "howto" / "read-logs.md").read_text(encoding="utf-8")
    table = text.split("| field | type | meaning |\n", 1)[1].split("\n\n", 1)[0]
    names: list[str] = []
    for line in table.splitlines()[1:]:  # after the |---| line
        names += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    return names


def test_the_docs_table_lists_exactly_the_attempt_fields() -> None:
    names = documented_attempt_table()
    assert names[0] == "event"
    assert len(names) == len(set(names)), "a field listed twice"
    assert set(names[1:]) == set(ATTEMPT_FIELDS)


def test_log_reader_reads_only_attempt_fields() -> None:
    assert set(log_reader._READ_FIELDS) <= set(ATTEMPT_FIELDS)
    assert log_reader.ATTEMPT_FIELDS is ATTEMPT_FIELDS


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fault", [None, Fault.code("DISPATCH_TIMEOUT"), Fault.reset()], ids=["ok", "code", "reset"]
)
async def test_every_attempt_event_carries_exactly_the_declared_fields(
    fault: Fault | None, logs: Events
) -> None:
    async with Emulator(generation_time=0.0) as emu:
        if fault is not None:
            emu.inject(fault, path="/v1/generate")
        mw = middleware()
        async with aiohttp.ClientSession(middlewares=(mw,)) as session:
            headers = {"Idempotency-Key": "k-1"}  # a reset POST may be resent with a key
            async with session.post(emu.url / "v1/generate", json={}, headers=headers) as resp:
                assert resp.status == 200
    events = attempts(logs)
    assert len(events) == (1 if fault is None else 2)
    for event in events:
        assert event["event"] == ATTEMPT_EVENT
        assert set(event) - CAPTURE_KEYS == set(ATTEMPT_FIELDS)
