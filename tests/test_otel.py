"""OpenTelemetryHook against the real OpenTelemetry SDK (in-memory exporter and metric reader)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from resilience.instrumentation import OpenTelemetryHook
from resilience.testing import Emulator, Fault
from tests.conftest import middleware

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002)]


class Otel:
    """A tracer provider and a meter provider whose output the test reads back."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.hook = OpenTelemetryHook(self.tracer_provider, self.meter_provider)

    def spans(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def attempt_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if scope(s) == "resilience"]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, point) of every data point of metric ``name``."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            (dict(point.attributes or {}), point)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.close()


def scope(span: ReadableSpan) -> str | None:
    return span.instrumentation_scope.name if span.instrumentation_scope is not None else None


def ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) as a traceparent spells them."""
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def traceparent_span_id(value: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    assert int(flags, 16) & 1
    return trace_id, span_id


async def test_one_client_span_per_attempt_with_http_conventions(otel: Otel, emu: Emulator) -> None:
    emu.inject(Fault.code("UPSTREAM_GENERATION_ERROR"))
    url = emu.url.with_path("/v1/generate").with_query(token="s3cret")
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[otel.hook]),)) as s:
        async with s.post(url, json={"job": "a"}) as resp:
            assert resp.status == 200

    first, second = otel.attempt_spans()
    for span in (first, second):
        assert span.kind is SpanKind.CLIENT
        assert span.name == "POST"
        attrs = span.attributes or {}
        assert attrs["http.request.method"] == "POST"
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["server.port"] == emu.url.port
        assert "s3cret" not in str(attrs["url.full"])
        assert str(attrs["url.full"]).startswith(f"{emu.url}/v1/generate?token=")
    a1, a2 = first.attributes or {}, second.attributes or {}
    assert "http.request.resend_count" not in a1
    assert a2["http.request.resend_count"] == 1
    assert a1["http.response.status_code"] == 502
    assert a1["error.type"] == "UPSTREAM_GENERATION_ERROR"
    assert (a1["resilience.handling"], a1["resilience.outcome"]) == ("transient", "retry")
    assert float(a1["resilience.delay"]) > 0  # type: ignore[arg-type]
    assert first.status.status_code is StatusCode.ERROR
    assert a2["http.response.status_code"] == 200
    assert "error.type" not in a2
    assert a2["resilience.outcome"] == "ok"
    assert second.status.status_code is StatusCode.UNSET
    assert a1["resilience.request_id"] == a2["resilience.request_id"]
    assert (a1["resilience.attempt"], a2["resilience.attempt"]) == (1, 2)


async def test_each_attempt_carries_its_own_traceparent_to_the_server(
    otel: Otel, emu: Emulator
) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=2)
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[otel.hook]),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200

    spans = otel.attempt_spans()
    sent = [traceparent_span_id(r.headers["traceparent"]) for r in emu.received]
    assert len(sent) == len(spans) == 3
    assert sent == [ids(span) for span in spans]
    assert len({span_id for _, span_id in sent}) == 3  # each attempt its own parent


async def test_attempt_spans_are_children_of_the_aiohttp_client_instrumentation_span(
    otel: Otel, emu: Emulator
) -> None:
    emu.inject(Fault.code("DISPATCH_TIMEOUT"))
    trace_config = create_trace_config(tracer_provider=otel.tracer_provider)
    async with aiohttp.ClientSession(
        middlewares=(middleware(hooks=[otel.hook]),), trace_configs=[trace_config]
    ) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200

    (logical,) = [s for s in otel.spans() if scope(s) != "resilience"]
    assert scope(logical) == "opentelemetry.instrumentation.aiohttp_client"
    attempts = otel.attempt_spans()
    assert len(attempts) == 2
    trace_id, logical_id = ids(logical)
    for span in attempts:
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == logical_id
        assert ids(span)[0] == trace_id
    # On the wire each attempt names its own span, not the logical one, as parent.
    sent = [traceparent_span_id(r.headers["traceparent"]) for r in emu.received]
    assert sent == [ids(span) for span in attempts]


async def test_a_transport_error_sets_error_type_to_the_exception_class(
    otel: Otel, emu: Emulator
) -> None:
    emu.inject(Fault.reset())
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[otel.hook]),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    first, _ = otel.attempt_spans()
    attrs = first.attributes or {}
    assert attrs["error.type"] in {"ServerDisconnectedError", "ClientOSError"}
    assert "http.response.status_code" not in attrs
    assert first.status.status_code is StatusCode.ERROR


async def test_metrics_count_attempts_waits_the_limit_and_gate_closures(
    otel: Otel, emu: Emulator
) -> None:
    emu.inject(Fault.code("UPSTREAM_GENERATION_ERROR"))
    emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=10))
    emu.inject(Fault.code("MADE_UP_CODE", status=503))
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[otel.hook]),)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    origin = str(emu.url.origin())

    attempts = {
        (a["resilience.outcome"], a["resilience.handling"], a["resilience.code"]): p.value
        for a, p in otel.points("resilience.attempts")
    }
    assert attempts == {
        ("retry", "transient", "UPSTREAM_GENERATION_ERROR"): 1,
        ("throttled", "rate_limit", "RATE_LIMITED"): 1,
        ("retry", "transient", "other"): 1,  # a code outside the table: bounded label
        ("ok", "ok", "none"): 1,
    }
    assert {a["resilience.origin"] for a, _ in otel.points("resilience.attempts")} == {origin}
    waits = {a["resilience.kind"]: p.count for a, p in otel.points("resilience.wait.duration")}
    assert waits == {"admission": 4, "sleep": 2}  # the gate's wait is inside an admission
    ((limit_attrs, limit),) = otel.points("resilience.concurrency.limit")
    assert limit_attrs == {"resilience.origin": origin}
    assert limit.value >= 1
    ((_, closures),) = otel.points("resilience.gate.closures")
    assert closures.value == 1


def test_the_hook_uses_the_global_providers_by_default() -> None:
    hook = OpenTelemetryHook()
    assert "OpenTelemetryHook" in repr(hook)


async def test_two_hooks_on_one_meter_provider_count_into_the_same_series(
    otel: Otel, emu: Emulator
) -> None:
    second = OpenTelemetryHook(otel.tracer_provider, otel.meter_provider)
    for hook in (otel.hook, second):
        async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]),)) as s:
            async with s.get(emu.url / "v1/ping") as resp:
                assert resp.status == 200
    ((_, point),) = otel.points("resilience.attempts")
    assert point.value == 2
    assert len(otel.attempt_spans()) == 2
