"""The metrics both backends export: names, label sets and the rules that keep labels bounded.

OpenTelemetry and Prometheus each implement :class:`MetricsSink`; :class:`MetricsHook` turns the
hook calls into sink calls, so what is counted, and under which labels, is decided here only.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from .._attempt import AttemptRecord
from .._codes import CodeTable
from ._hooks import AttemptStart, Hook, WaitRecord

__all__ = [
    "ATTEMPTS",
    "GATE_CLOSURES",
    "LIMIT",
    "METRICS",
    "WAIT",
    "WAIT_BUCKETS",
    "LabelRules",
    "MetricSpec",
    "MetricsHook",
    "MetricsSink",
    "SinkCache",
    "missing_extra",
]

OTHER: Final = "other"
"""The label value of a code outside the table, or of an origin outside the configured ones."""
NO_CODE: Final = "none"
"""The ``code`` label of an attempt whose answer had no envelope code (success, transport error,
bare status)."""


def missing_extra(hook: str, package: str, extra: str) -> ImportError:
    """The error a backend's module raises on import when its extra is not installed."""
    return ImportError(f"{hook} needs {package}: pip install 'resilience[{extra}]'")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric, as both backends name it."""

    otel_name: str
    prometheus_name: str  # without the ``_total`` a Prometheus counter adds
    unit: str
    description: str
    labels: tuple[str, ...]


ATTEMPTS: Final = MetricSpec(
    "resilience.attempts",
    "resilience_attempts",
    "{attempt}",
    "Attempts sent or given up before sending, by what the middleware did next",
    ("origin", "outcome", "handling", "code"),
)
WAIT: Final = MetricSpec(
    "resilience.wait.duration",
    "resilience_wait_seconds",
    "s",
    "Seconds waited: queued for admission before an attempt, or between attempts",
    ("origin", "kind"),
)
LIMIT: Final = MetricSpec(
    "resilience.concurrency.limit",
    "resilience_concurrency_limit",
    "{request}",
    "The adaptive concurrency limit, as of the last attempt to the origin",
    ("origin",),
)
GATE_CLOSURES: Final = MetricSpec(
    "resilience.gate.closures",
    "resilience_gate_closures",
    "{closure}",
    "Answers whose Retry-After closed the origin's rate gate",
    ("origin",),
)
METRICS: Final = (ATTEMPTS, WAIT, LIMIT, GATE_CLOSURES)

WAIT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Histogram bucket bounds of ``wait`` (seconds): from a pacing step to a long Retry-After."""

ADMISSION: Final = "admission"
"""The ``kind`` label of the wait queued for admission (gate, pacer, permit) before an attempt;
the other kinds are those of :data:`~resilience.instrumentation.WaitKind`."""


class LabelRules:
    """Bounded label values: codes from the table, origins as configured."""

    __slots__ = ("_codes", "_origins")

    def __init__(self, codes: CodeTable | None, origins: Collection[str] | None) -> None:
        if codes is not None and not isinstance(codes, CodeTable):
            raise TypeError(f"codes must be a CodeTable, got {type(codes).__name__}")
        if isinstance(origins, str):
            raise TypeError("origins must be a collection of origins, not one string")
        self._codes = codes if codes is not None else CodeTable.default()
        self._origins = frozenset(origins) if origins is not None else None

    def code(self, code: str | None) -> str:
        if code is None:
            return NO_CODE
        return code if self._codes.get(code) is not None else OTHER

    def origin(self, origin: str) -> str:
        if self._origins is None or origin in self._origins:
            return origin
        return OTHER


class MetricsSink(Protocol):
    """Where a backend records the metrics; label values come in :class:`MetricSpec` order."""

    def count_attempt(self, origin: str, outcome: str, handling: str, code: str) -> None: ...

    def observe_wait(self, origin: str, kind: str, seconds: float) -> None: ...

    def set_limit(self, origin: str, limit: int) -> None: ...

    def count_gate_closure(self, origin: str) -> None: ...


_K = TypeVar("_K")
_S = TypeVar("_S")


class SinkCache(Generic[_K, _S]):
    """One sink per registry or meter provider, shared by every hook on it: a registry refuses
    a metric name twice, and two sets of asynchronous instruments would report conflicting
    values for the same series."""

    __slots__ = ("_lock", "_sinks")

    def __init__(self) -> None:
        self._sinks: weakref.WeakKeyDictionary[_K, _S] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, key: _K, make: Callable[[_K], _S]) -> _S:
        with self._lock:
            sink = self._sinks.get(key)
            if sink is None:
                sink = self._sinks[key] = make(key)
            return sink


class MetricsHook(Hook):
    """A hook that records :data:`METRICS` into a sink."""

    def __init__(
        self,
        sink: MetricsSink,
        *,
        codes: CodeTable | None = None,
        origins: Collection[str] | None = None,
    ) -> None:
        self._sink = sink
        self._labels = LabelRules(codes, origins)
        self._limits: dict[str, int] = {}  # the limit last set per origin: set only on change

    def on_attempt_end(self, record: AttemptRecord, start: AttemptStart | None) -> None:
        labels, sink = self._labels, self._sink
        origin = labels.origin(record.origin or "")
        sink.count_attempt(origin, record.outcome.value, record.handling, labels.code(record.code))
        sink.observe_wait(origin, ADMISSION, record.waited)
        if self._limits.get(origin) != record.limit:
            self._limits[origin] = record.limit
            sink.set_limit(origin, record.limit)
        if record.gate is not None:
            sink.count_gate_closure(origin)

    def on_wait(self, wait: WaitRecord) -> None:
        if wait.kind != "gate":  # the gate's wait is taken at admission, counted there
            self._sink.observe_wait(self._labels.origin(wait.origin), wait.kind, wait.waited)
