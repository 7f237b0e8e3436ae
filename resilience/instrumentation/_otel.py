"""``OpenTelemetryHook``: a CLIENT span per attempt sent, a ``traceparent`` per attempt, metrics.

Spans follow the HTTP client semantic conventions (one span per request sent over the wire,
``http.request.resend_count`` on resends, ``error.type`` a low-cardinality name) and start under
the current context: next to ``opentelemetry-instrumentation-aiohttp-client`` they are children
of its span for the logical request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

from .. import __version__
from .._attempt import AttemptRecord
from .._codes import CodeTable
from ._hooks import AttemptStart
from ._metrics import (
    ATTEMPTS,
    GATE_CLOSURES,
    LIMIT,
    WAIT,
    WAIT_BUCKETS,
    MetricsHook,
    MetricSpec,
    SinkCache,
    missing_extra,
)

try:
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("OpenTelemetryHook", "opentelemetry-api", "otel") from exc

__all__ = ["OpenTelemetryHook"]

SCOPE: Final = "resilience"
"""The instrumentation scope name of the tracer and the meter."""

# The methods the HTTP conventions name; any other is "_OTHER" (its own name goes in
# http.request.method_original).
_KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)


def _attribute_keys(spec: MetricSpec) -> tuple[str, ...]:
    return tuple(f"resilience.{label}" for label in spec.labels)


class _OtelSink:
    """The metrics through an OpenTelemetry meter; attributes are ``resilience.<label>``.

    The counters and the gauge are asynchronous instruments read from plain dicts at collection
    time: an attempt then costs a dict update instead of the SDK's per-measurement attribute
    work (about 10 us each). Waits are a histogram, which has no asynchronous form.
    """

    __slots__ = ("_attempts", "_gates", "_instruments", "_limits", "_wait", "_wait_keys")

    def __init__(self, meter: metrics.Meter) -> None:
        # Cumulative values by label values (in MetricSpec order), read by the callbacks.
        self._attempts: Final[Counter[tuple[str, ...]]] = Counter()
        self._gates: Final[Counter[tuple[str, ...]]] = Counter()
        self._limits: Final[dict[tuple[str, ...], int]] = {}
        self._wait_keys: Final = _attribute_keys(WAIT)
        self._wait: Final = meter.create_histogram(
            WAIT.otel_name,
            WAIT.unit,
            WAIT.description,
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
        self._instruments: Final = (
            meter.create_observable_counter(
                ATTEMPTS.otel_name,
                [_observe(ATTEMPTS, self._attempts)],
                ATTEMPTS.unit,
                ATTEMPTS.description,
            ),
            meter.create_observable_gauge(
                LIMIT.otel_name, [_observe(LIMIT, self._limits)], LIMIT.unit, LIMIT.description
            ),
            meter.create_observable_counter(
                GATE_CLOSURES.otel_name,
                [_observe(GATE_CLOSURES, self._gates)],
                GATE_CLOSURES.unit,
                GATE_CLOSURES.description,
            ),
        )

    def count_attempt(self, origin: str, outcome: str, handling: str, code: str) -> None:
        self._attempts[origin, outcome, handling, code] += 1

    def observe_wait(self, origin: str, kind: str, seconds: float) -> None:
        self._wait.record(seconds, dict(zip(self._wait_keys, (origin, kind), strict=True)))

    def set_limit(self, origin: str, limit: int) -> None:
        self._limits[(origin,)] = limit

    def count_gate_closure(self, origin: str) -> None:
        self._gates[(origin,)] += 1


def _make_sink(provider: MeterProvider) -> _OtelSink:
    return _OtelSink(provider.get_meter(SCOPE, __version__))


_sinks: Final[SinkCache[MeterProvider, _OtelSink]] = SinkCache()


def _observe(
    spec: MetricSpec, values: Mapping[tuple[str, ...], int]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """The callback reporting ``values`` as observations of ``spec``."""
    keys = _attribute_keys(spec)

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        # A copy: collection may run on the reader's thread while the loop updates the dict.
        snapshot = dict(values)
        return [
            Observation(value, dict(zip(keys, labels, strict=True)))
            for labels, value in snapshot.items()
        ]

    return observe


class OpenTelemetryHook(MetricsHook):
    """Trace every attempt and export the attempt metrics through OpenTelemetry (extra ``otel``).

    For each attempt sent: a CLIENT span named after the method, with ``http.request.method``,
    ``url.full`` (redacted), ``server.address``, ``server.port``, ``http.request.resend_count``
    (resends only), ``http.response.status_code``, ``error.type`` (the envelope code, else the
    exception class, else the status for a status >= 400) and ``resilience.request_id``,
    ``resilience.attempt``, ``resilience.handling``, ``resilience.outcome``,
    ``resilience.reason``, ``resilience.delay`` (the wait that follows), ``resilience.waited``,
    ``resilience.limit``. The span's context goes out as the attempt's ``traceparent`` (through
    the global propagator), so each attempt is its own parent on the server side.

    Metrics (attributes ``resilience.<label>``): ``resilience.attempts``,
    ``resilience.wait.duration``, ``resilience.concurrency.limit``, ``resilience.gate.closures``.

    Args:
        tracer_provider: default the global one (``opentelemetry.trace``).
        meter_provider: default the global one (``opentelemetry.metrics``).
        codes: the code table whose codes are metric attribute values (others are ``other``).
        origins: the origins to label as themselves (others are ``other``); default all.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        codes: CodeTable | None = None,
        origins: Collection[str] | None = None,
    ) -> None:
        self._tracer: Final = trace.get_tracer(SCOPE, __version__, tracer_provider)
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        super().__init__(_sinks.get(provider, _make_sink), codes=codes, origins=origins)
        # The span of each attempt in flight, keyed by its start value (identity).
        self._spans: Final[dict[AttemptStart, Span]] = {}

    def __repr__(self) -> str:
        return f"OpenTelemetryHook(tracer={self._tracer!r})"

    def on_attempt_start(self, start: AttemptStart) -> None:
        method = start.method
        attributes: dict[str, AttributeValue] = {
            "url.full": start.url,
            "server.address": start.server_address,
            "server.port": start.server_port,
            "resilience.request_id": start.request_id,
            "resilience.attempt": start.attempt,
            "resilience.waited": start.waited,
            "resilience.limit": start.limit,
        }
        if method in _KNOWN_METHODS:
            attributes["http.request.method"] = method
            name = method
        else:
            attributes["http.request.method"] = "_OTHER"
            attributes["http.request.method_original"] = method
            name = "HTTP"
        if start.resend_count:
            attributes["http.request.resend_count"] = start.resend_count
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        self._spans[start] = span
        propagate.inject(start.headers, context=trace.set_span_in_context(span))

    def on_attempt_end(self, record: AttemptRecord, start: AttemptStart | None) -> None:
        super().on_attempt_end(record, start)
        span = self._spans.pop(start, None) if start is not None else None
        if span is None:
            return  # never sent: no span (the metrics counted it)
        attributes: dict[str, AttributeValue] = {
            "resilience.handling": record.handling,
            "resilience.outcome": record.outcome.value,
        }
        if record.status is not None:
            attributes["http.response.status_code"] = record.status
        if record.reason is not None:
            attributes["resilience.reason"] = record.reason
        if record.delay is not None:
            attributes["resilience.delay"] = record.delay
        if record.server_request_id is not None:
            attributes["resilience.server_request_id"] = record.server_request_id
        error_type = record.code or record.error
        if error_type is None and record.status is not None and record.status >= 400:
            error_type = str(record.status)
        if error_type is not None:
            attributes["error.type"] = error_type
        span.set_attributes(attributes)
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
