"""The breaker and the account stop through a real ClientSession against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import pytest

from resilience import (
    AccountStop,
    AccountStopped,
    CircuitBreaker,
    CircuitOpen,
    LocalStore,
    Redaction,
    ResilienceMiddleware,
)
from resilience.testing import Emulator, Fault
from tests.conftest import FAST, Events, attempts, middleware

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.0)]

QUICK = CircuitBreaker(
    minimum_throughput=5, break_duration=0.05, max_break_duration=0.2, sampling_duration=5.0
)


async def post(session: aiohttp.ClientSession, emu: Emulator, job: str, **kw: Any) -> int:
    async with session.post(emu.url / "v1/generate", json={"job": job}, **kw) as resp:
        await resp.read()
        return resp.status


async def test_outage_loses_no_job_and_sends_little_into_it(emu: Emulator, logs: Events) -> None:
    emu.start_outage(code="DISPATCH_TIMEOUT")
    mw = middleware(max_attempts=6, max_elapsed=10.0, circuit_breaker=QUICK)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        jobs = [asyncio.ensure_future(post(s, emu, f"j{i}")) for i in range(40)]
        await asyncio.sleep(0.3)  # the outage lasts: breaks of 0.05, 0.1, 0.2 s, one probe each
        into_outage = emu.stats.outage_answers
        emu.end_outage()
        statuses = await asyncio.gather(*jobs)
    assert statuses == [200] * 40
    assert emu.stats.duplicates == 0
    # Five to decide, then one probe per break (0.05 + 0.1 + 0.2 > 0.3 s: three at most).
    assert into_outage <= QUICK.minimum_throughput + 3
    held = [e for e in attempts(logs) if e["outcome"] == "held"]
    assert held
    assert {e["reason"] for e in held} == {"circuit_open"}
    assert all(e["duration"] is None and e["status"] is None for e in held)
    states = [e["state"] for e in logs if e.get("event") == "resilience.circuit"]
    assert states[0] == "open"
    assert states[-1] == "closed"


async def test_request_that_cannot_outlast_the_break_fails_unsent_with_circuit_open(
    emu: Emulator, logs: Events
) -> None:
    emu.start_outage()
    slow_break = CircuitBreaker(minimum_throughput=3, break_duration=5.0, max_break_duration=5.0)
    mw = middleware(max_attempts=1, max_elapsed=1.0, circuit_breaker=slow_break)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        for i in range(3):
            assert await post(s, emu, f"trip{i}") == 503
        sent = emu.stats.requests
        began = time.monotonic()
        with pytest.raises(CircuitOpen) as info:
            await post(s, emu, "late")
        assert time.monotonic() - began < 0.5, "fails at once, not at its deadline"
    assert emu.stats.requests == sent, "not sent"
    error = info.value
    assert isinstance(error, aiohttp.ClientError)
    assert error.origin == str(emu.url.origin())
    assert error.last_code == "DISPATCH_TIMEOUT"
    assert 4.0 < error.retry_in <= 5.0
    assert (error.attempts, error.request_id) == (0, attempts(logs)[-1]["request_id"])
    last = attempts(logs)[-1]
    assert (last["outcome"], last["reason"], last["duration"]) == ("give_up", "circuit_open", None)


async def test_without_a_breaker_every_request_is_sent(emu: Emulator) -> None:
    emu.start_outage()
    mw = middleware(max_attempts=2, max_elapsed=5.0, circuit_breaker=None, retry_budget=None)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        statuses = await asyncio.gather(*(post(s, emu, f"n{i}") for i in range(20)))
    assert statuses == [503] * 20
    assert emu.stats.outage_answers == 40


async def test_connection_resets_count_as_an_outage(emu: Emulator) -> None:
    emu.start_outage(code="reset")
    long_break = CircuitBreaker(minimum_throughput=5, break_duration=5.0)
    mw = middleware(max_attempts=1, max_elapsed=0.5, circuit_breaker=long_break)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        for i in range(long_break.minimum_throughput):
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(s, emu, f"r{i}")
        with pytest.raises(CircuitOpen) as info:
            await post(s, emu, "refused")
    assert info.value.last_code in {"ServerDisconnectedError", "ClientOSError"}


@pytest.mark.parametrize(
    "fault",
    [
        Fault.code("RATE_LIMITED", retry_after=0),
        Fault.code("GENERATION_CONCURRENCY_EXCEEDED"),
        Fault.code("VALIDATION_ERROR"),
        Fault.code("BILLING_INSUFFICIENT_CREDITS"),
        Fault.code("GENERATION_CAPACITY_EXCEEDED"),
    ],
    ids=lambda f: f.error_code,
)
async def test_throttles_and_caller_errors_never_open_the_breaker(
    emu: Emulator, fault: Fault
) -> None:
    emu.inject(fault, times=12)
    mw = middleware(max_attempts=1, max_elapsed=2.0, circuit_breaker=QUICK, account_stop=None)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        for i in range(12):
            with contextlib.suppress(aiohttp.ClientError):  # a paced 429 may meet its deadline
                await post(s, emu, f"c{i}")
        emu.clear_faults()
        assert await post(s, emu, "after") == 200
    store = mw.store
    assert isinstance(store, LocalStore)
    assert store.circuit is not None
    assert store.circuit.rule.state(str(emu.url.origin()))[0].value == "closed"


def test_breaker_settings_go_to_the_store_when_a_store_is_given() -> None:
    with pytest.raises(ValueError, match="circuit_breaker"):
        ResilienceMiddleware(store=LocalStore(), circuit_breaker=None)
    with pytest.raises(TypeError, match="circuit_breaker must be a CircuitBreaker"):
        LocalStore(circuit_breaker={"failure_ratio": 0.5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="account_stop must be an AccountStop"):
        ResilienceMiddleware(account_stop=10.0)  # type: ignore[arg-type]
    assert LocalStore(circuit_breaker=None).circuit is None


# --------------------------------------------------------------------------- account stop


async def test_after_a_402_the_same_credentials_fail_unsent(emu: Emulator, logs: Events) -> None:
    emu.inject(Fault.code("BILLING_INSUFFICIENT_CREDITS"))
    secret = {"Authorization": "Bearer sk-live-0123456789"}
    mw = middleware(account_stop=AccountStop(recheck_interval=60.0))
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        assert await post(s, emu, "first", headers=secret) == 402
        for i in range(100):
            with pytest.raises(AccountStopped) as info:
                await post(s, emu, f"stopped{i}", headers=secret)
        other = {"Authorization": "Bearer sk-live-other"}
        assert await post(s, emu, "other", headers=other) == 200
    assert emu.stats.requests == 2, "101 jobs on the empty account made one request"
    error = info.value
    assert (error.status, error.error_code, error.attempts) == (
        402,
        "BILLING_INSUFFICIENT_CREDITS",
        0,
    )
    assert "not sent" in str(error)
    assert "recheck" in str(error)
    assert 59.0 < error.recheck_in <= 60.0
    stopped = [e for e in attempts(logs) if e["reason"] == "account_stopped"]
    assert len(stopped) == 100
    assert all(e["outcome"] == "fail" and e["duration"] is None for e in stopped)
    assert "sk-live" not in repr(logs)


async def test_one_recheck_after_the_interval_lifts_the_stop(emu: Emulator) -> None:
    emu.inject(Fault.code("AUTH_SESSION_EXPIRED"))
    mw = middleware(account_stop=AccountStop(recheck_interval=0.05))
    headers = {"X-API-Key": "k1"}
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        assert await post(s, emu, "a", headers=headers) == 401
        with pytest.raises(AccountStopped):
            await post(s, emu, "b", headers=headers)
        await asyncio.sleep(0.06)
        statuses = await asyncio.gather(
            *(post(s, emu, f"c{i}", headers=headers) for i in range(5)), return_exceptions=True
        )
        assert statuses.count(200) >= 1
        assert emu.stats.requests <= 1 + 5
        assert await post(s, emu, "d", headers=headers) == 200  # lifted


async def test_account_stop_off_sends_every_request(emu: Emulator) -> None:
    emu.inject(Fault.code("BILLING_INSUFFICIENT_CREDITS"), times=10)
    mw = middleware(account_stop=None)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        statuses = [await post(s, emu, f"x{i}") for i in range(10)]
    assert statuses == [402] * 10
    assert emu.stats.requests == 10


async def test_a_stop_answer_raised_as_api_error_stops_the_next_ones_too(emu: Emulator) -> None:
    emu.inject(Fault.code("AUTH_REQUIRED"))
    mw = ResilienceMiddleware(backoff=FAST, raise_api_errors=True)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with pytest.raises(aiohttp.ClientResponseError) as first:
            await post(s, emu, "a")
        assert not isinstance(first.value, AccountStopped)
        with pytest.raises(AccountStopped):
            await post(s, emu, "b")
    assert emu.stats.requests == 1


async def test_account_stopped_shows_the_url_as_the_redaction_does(emu: Emulator) -> None:
    emu.inject(Fault.code("BILLING_INSUFFICIENT_CREDITS"))
    mw = middleware(redaction=Redaction(params=("sid",)))
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        url = (emu.url / "v1/generate").with_query(sid="TENANT_A_SECRET")
        async with s.post(url, json={"job": "a"}) as resp:
            assert resp.status == 402
        with pytest.raises(AccountStopped) as info:
            await s.post(url, json={"job": "b"})
    assert "TENANT_A_SECRET" not in str(info.value)
    assert "REDACTED" in str(info.value)


async def test_an_inner_middleware_adding_credentials_does_not_split_the_key(
    emu: Emulator,
) -> None:
    """The credentials are read as this middleware sees the request, before inner middlewares
    run: the key is the same when the stop is recorded and when it is checked (documented:
    credentials an inner middleware adds are not told apart)."""

    async def auth(
        req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        req.headers["Authorization"] = "Bearer tenant-a"
        return await handler(req)

    emu.inject(Fault.code("BILLING_INSUFFICIENT_CREDITS"))
    async with aiohttp.ClientSession(middlewares=(middleware(), auth)) as s:
        assert await post(s, emu, "first") == 402
        with pytest.raises(AccountStopped):
            await post(s, emu, "second")
    assert emu.stats.requests == 1
