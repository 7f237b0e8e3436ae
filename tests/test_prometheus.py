"""PrometheusHook against a real prometheus-client registry, scraped over HTTP."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from resilience.instrumentation import PrometheusHook
from resilience.testing import Emulator, Fault
from tests.conftest import middleware, serve

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002)]


async def scrape(registry: CollectorRegistry) -> dict[str, list[Sample]]:
    """GET /metrics from a real exposition page; the samples by family name. The page is
    generate_latest's (prometheus_client.aiohttp needs prometheus-client >= 0.24, the floor
    is older)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async with serve(metrics, path="/metrics", method="GET") as base:
        async with aiohttp.ClientSession() as s, s.get(base / "metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


async def test_a_scrape_shows_attempts_waits_the_limit_and_gate_closures(emu: Emulator) -> None:
    registry = CollectorRegistry()
    emu.inject(Fault.code("UPSTREAM_GENERATION_ERROR"))
    emu.inject(Fault.code("RATE_LIMITED", retry_after_ms=10))
    emu.inject(Fault.code("MADE_UP_CODE", status=503))
    mw = middleware(hooks=[PrometheusHook(registry)])
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.post(emu.url / "v1/generate", json={"job": "a"}) as resp:
            assert resp.status == 200
    origin = str(emu.url.origin())

    families = await scrape(registry)
    attempts = {
        (x.labels["outcome"], x.labels["handling"], x.labels["code"]): x.value
        for x in families["resilience_attempts"]
        if x.name == "resilience_attempts_total"
    }
    assert attempts == {
        ("retry", "transient", "UPSTREAM_GENERATION_ERROR"): 1.0,
        ("throttled", "rate_limit", "RATE_LIMITED"): 1.0,
        ("retry", "transient", "other"): 1.0,
        ("ok", "ok", "none"): 1.0,
    }
    assert {x.labels["origin"] for x in families["resilience_attempts"]} == {origin}
    counts = {
        x.labels["kind"]: x.value
        for x in families["resilience_wait_seconds"]
        if x.name == "resilience_wait_seconds_count"
    }
    assert counts == {"admission": 4.0, "sleep": 2.0}
    (limit,) = families["resilience_concurrency_limit"]
    assert limit.labels == {"origin": origin}
    assert limit.value >= 1
    closures = [
        x
        for x in families["resilience_gate_closures"]
        if x.name == "resilience_gate_closures_total"
    ]
    assert [(x.labels, x.value) for x in closures] == [({"origin": origin}, 1.0)]


async def test_origins_outside_the_configured_ones_are_labelled_other(emu: Emulator) -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, origins=["https://api.example.com"])
    async with aiohttp.ClientSession(middlewares=(middleware(hooks=[hook]),)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
    value = registry.get_sample_value(
        "resilience_attempts_total",
        {"origin": "other", "outcome": "ok", "handling": "ok", "code": "none"},
    )
    assert value == 1.0


def test_two_hooks_on_one_registry_share_its_metrics() -> None:
    registry = CollectorRegistry()
    first, second = PrometheusHook(registry), PrometheusHook(registry)
    assert first._sink is second._sink
    assert PrometheusHook(CollectorRegistry())._sink is not first._sink


def test_a_registry_of_the_wrong_type_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="CollectorRegistry"):
        PrometheusHook({})  # type: ignore[arg-type]


def test_one_origin_string_instead_of_a_collection_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="collection"):
        PrometheusHook(CollectorRegistry(), origins="https://api.example.com")
