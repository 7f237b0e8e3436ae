"""``PrometheusHook``: the attempt metrics as prometheus-client counters, a histogram, a gauge."""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from .._codes import CodeTable
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
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("PrometheusHook", "prometheus-client", "prometheus") from exc

__all__ = ["PrometheusHook"]


class _PrometheusSink:
    """The four metrics registered in one registry."""

    __slots__ = ("attempts", "gate_closures", "limit", "wait")

    def __init__(self, registry: CollectorRegistry) -> None:
        def args(spec: MetricSpec) -> tuple[str, str, tuple[str, ...]]:
            return spec.prometheus_name, spec.description, spec.labels

        self.attempts: Final = Counter(*args(ATTEMPTS), registry=registry)
        self.wait: Final = Histogram(*args(WAIT), registry=registry, buckets=WAIT_BUCKETS)
        self.limit: Final = Gauge(*args(LIMIT), registry=registry)
        self.gate_closures: Final = Counter(*args(GATE_CLOSURES), registry=registry)

    def count_attempt(self, origin: str, outcome: str, handling: str, code: str) -> None:
        self.attempts.labels(origin, outcome, handling, code).inc()

    def observe_wait(self, origin: str, kind: str, seconds: float) -> None:
        self.wait.labels(origin, kind).observe(seconds)

    def set_limit(self, origin: str, limit: int) -> None:
        self.limit.labels(origin).set(limit)

    def count_gate_closure(self, origin: str) -> None:
        self.gate_closures.labels(origin).inc()


_sinks: Final[SinkCache[CollectorRegistry, _PrometheusSink]] = SinkCache()


class PrometheusHook(MetricsHook):
    """Export the attempt metrics through prometheus-client (extra ``prometheus``).

    ``resilience_attempts_total{origin,outcome,handling,code}``,
    ``resilience_wait_seconds{origin,kind}`` (histogram),
    ``resilience_concurrency_limit{origin}`` (gauge) and
    ``resilience_gate_closures_total{origin}``.

    Args:
        registry: where the metrics are registered; default prometheus-client's global
            ``REGISTRY``. Several hooks on one registry share one set of metrics.
        codes: the code table whose codes are label values (others are ``other``); default the
            generation API's. Pass the middleware's own table if it has one.
        origins: the origins (``scheme://host:port``) to label as themselves; any other origin
            is ``other``. Default: every origin as it is (bounded by the servers you call).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        codes: CodeTable | None = None,
        origins: Collection[str] | None = None,
    ) -> None:
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"registry must be a prometheus_client CollectorRegistry, got "
                f"{type(registry).__name__}"
            )
        self.registry: Final = registry if registry is not None else REGISTRY
        super().__init__(_sinks.get(self.registry, _PrometheusSink), codes=codes, origins=origins)

    def __repr__(self) -> str:
        return f"PrometheusHook(registry={self.registry!r})"
