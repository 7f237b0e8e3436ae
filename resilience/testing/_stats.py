"""What the emulator saw and did: the live counters and their snapshots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Counters", "EmulatorStats", "Received"]


class Received(NamedTuple):
    """One request as received: the headers are the case-insensitive, read-only mapping."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """A snapshot of what the emulator saw and did (``/v1/*`` requests only).

    ``by_code`` counts answers by code: ``"ok"`` for 2xx/3xx, the envelope's code for errors,
    ``"reset"`` for connections cut (also mid-body), ``"HTTP_<status>"`` for raw non-envelope
    errors, ``"disconnected"`` when the client left before its body was read. ``executions``
    counts completed generations per job id, ``idempotency_executions`` per ``Idempotency-Key``;
    ``duplicates`` is the number of job ids executed more than once.
    """

    requests: int
    by_path: Counter[str]
    by_code: Counter[str]
    executions: Counter[str]
    idempotency_executions: Counter[str]
    generations: int
    max_in_flight: int
    in_flight: int
    duplicates: int
    request_ids: list[str]
    outage_answers: int = 0  # requests answered by the outage mode

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything but ``request_ids``."""
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_code": dict(self.by_code),
            "executions": dict(self.executions),
            "idempotency_executions": dict(self.idempotency_executions),
            "generations": self.generations,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "duplicates": self.duplicates,
            "outage_answers": self.outage_answers,
        }


class Counters:
    """The live counters behind :class:`EmulatorStats` (swapped whole by ``reset_stats``)."""

    __slots__ = (
        "by_code",
        "by_path",
        "duplicates",
        "executions",
        "generations",
        "idem",
        "in_flight",
        "max_in_flight",
        "outage_answers",
        "request_ids",
        "requests",
    )

    def __init__(self, in_flight: int = 0) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_code: Counter[str] = Counter()
        self.executions: Counter[str] = Counter()
        self.idem: Counter[str] = Counter()
        self.generations = 0
        self.in_flight = in_flight
        self.max_in_flight = in_flight
        self.duplicates = 0
        self.request_ids: list[str] = []
        self.outage_answers = 0
