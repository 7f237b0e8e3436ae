"""Property-based tests (hypothesis) of the retry decision and of the real attempt loop.

``decide`` is tested directly (it is pure); the loop is driven end to end by scripts of faults
injected into the emulator, one logical request per example, with a model of what the loop must
do. Each example runs in its own event loop (``anyio.run``), so no function-scoped fixture is
shared across examples.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import anyio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resilience import DeadlineExceeded, Handling, Outcome, ResilienceMiddleware
from resilience._classify import Verdict
from resilience._decide import (
    MAX_RETRY_AFTER,
    MAX_THROTTLES,
    MIN_THROTTLE_WAIT,
    Progress,
    decide,
)
from resilience.testing import Emulator, Fault
from tests.conftest import FAST, assert_baseline, attempts, capture_events, middleware

# ------------------------------------------------------------------ decide(), directly

NOW = 1000.0
GIVE_UP_REASONS = {
    "not_idempotent",
    "body_not_replayable",
    "max_attempts",
    "deadline",
    "retry_after_beyond_deadline",
    "max_throttles",
}
WAITING = {Outcome.RETRY, Outcome.THROTTLED, Outcome.NOT_READY}


@st.composite
def verdicts(draw: st.DrawFn) -> Verdict:
    handling = draw(st.sampled_from(Handling))
    transport = handling in (Handling.TRANSIENT, Handling.PERMANENT) and draw(st.booleans())
    retry_after = None
    if not transport:
        retry_after = draw(
            st.none()
            | st.floats(0, 5, allow_nan=False)
            | st.floats(0, 10 * MAX_RETRY_AFTER, allow_nan=False)
            | st.just(math.inf)
        )
    return Verdict(
        handling,
        status=None if transport else draw(st.integers(400, 599)),
        retry_after=retry_after,
        error="ServerDisconnectedError" if transport else None,
    )


@dataclass(frozen=True)
class Case:
    verdict: Verdict
    progress: Progress
    max_delay: float


@st.composite
def cases(draw: st.DrawFn) -> Case:
    max_delay = draw(st.floats(0, 60, allow_nan=False))
    max_attempts = draw(st.integers(1, 10))
    deadline = draw(st.none() | st.floats(-5, 120, allow_nan=False).map(lambda d: NOW + d))
    progress = Progress(
        failures=draw(st.integers(0, max_attempts + 2)),
        max_attempts=max_attempts,
        now=NOW,
        deadline=deadline,
        replayable=draw(st.booleans()),
        resend_safe=draw(st.booleans()),
        backoff_delay=draw(st.floats(0, max_delay, allow_nan=False)),
        throttles=draw(st.integers(0, 3) | st.just(MAX_THROTTLES)),
        throttle_floor=min(MIN_THROTTLE_WAIT, max_delay),
    )
    return Case(draw(verdicts()), progress, max_delay)


@settings(max_examples=1000, deadline=None)
@given(cases())
def test_decide_invariants(case: Case) -> None:
    verdict, p = case.verdict, case.progress
    d = decide(verdict, p)
    ra = verdict.retry_after

    if verdict.handling is Handling.OK:
        assert (d.outcome, d.delay) == (Outcome.OK, None)
        return
    if verdict.handling is Handling.PERMANENT:  # non-retryable codes are never retried
        assert (d.outcome, d.delay, d.reason) == (Outcome.FAIL, None, "not_retryable")
        return
    if d.delay is None:
        assert d.outcome is Outcome.GIVE_UP
        assert d.reason in GIVE_UP_REASONS
        return

    # From here on the request is sent again after d.delay.
    assert d.outcome in WAITING
    assert p.replayable, "a non-replayable body is never resent"
    assert p.resend_safe, "a request that may have run is never resent unless it is safe"
    assert p.throttles < MAX_THROTTLES, "throttles and polls are bounded too"
    assert p.failures < p.max_attempts, "attempts are bounded by max_attempts"
    assert 0 <= d.delay < math.inf
    if p.deadline is not None:
        assert p.now + d.delay <= p.deadline, "no wait runs past max_elapsed"
    else:
        assert ra is None or ra <= MAX_RETRY_AFTER
    # No wait above max_delay unless Retry-After asked for it (and it fits the deadline).
    assert d.delay <= max(case.max_delay, ra if ra is not None else 0.0)
    if ra is None:
        assert d.delay <= max(p.backoff_delay, p.throttle_floor)
    if verdict.handling is not Handling.TRANSIENT:
        assert d.delay >= p.throttle_floor, "Retry-After: 0 never becomes a busy loop"
    expected = {
        Handling.TRANSIENT: Outcome.RETRY,
        Handling.CONCURRENCY_LIMIT: Outcome.THROTTLED,
        Handling.RATE_LIMIT: Outcome.THROTTLED,
        Handling.NOT_READY: Outcome.NOT_READY,
    }[verdict.handling]
    assert d.outcome is expected


def _plan_limit(retry_after: float | None, backoff_delay: float) -> Case:
    """A plan-limit 429 with a minute left: the edge cases found by this property."""
    progress = Progress(1, 5, NOW, NOW + 60, True, True, backoff_delay, 0, MIN_THROTTLE_WAIT)
    return Case(Verdict(Handling.CONCURRENCY_LIMIT, 429, retry_after=retry_after), progress, 1.0)


@settings(max_examples=1000, deadline=None)
@given(cases())
@example(_plan_limit(retry_after=0.0, backoff_delay=0.5))  # "Retry-After: 0", a past date
@example(_plan_limit(retry_after=None, backoff_delay=0.0))  # Backoff(initial=0), or jitter
def test_decide_retries_whenever_nothing_forbids_it(case: Case) -> None:
    """The other side of the invariants: a retryable failure with attempts, time and a safe,
    replayable body left is retried, and a Retry-After beyond the deadline gives up at once."""
    verdict, p = case.verdict, case.progress
    if not verdict.retryable or not p.replayable or p.failures >= p.max_attempts:
        return
    if not p.resend_safe or p.throttles >= MAX_THROTTLES:
        return
    ra = verdict.retry_after
    d = decide(verdict, p)
    if verdict.handling is Handling.TRANSIENT:
        wanted = max(p.backoff_delay, ra) if ra is not None else p.backoff_delay
    else:  # throttles and polls: the server's time if it named one, never below the floor
        wanted = max(ra if ra else p.backoff_delay, p.throttle_floor)
    if verdict.handling is Handling.CONCURRENCY_LIMIT:
        if p.deadline is None:
            assert (d.delay is None) == (ra is not None and ra > MAX_RETRY_AFTER)
        else:
            remaining = p.deadline - p.now - p.throttle_floor  # the resend starts in time
            assert (d.delay is None) == (remaining <= p.throttle_floor)
            if d.delay is not None:
                assert d.delay == min(wanted, remaining)
        return
    if p.deadline is None:
        beyond = ra is not None and ra > MAX_RETRY_AFTER
        assert (d.delay is None) == beyond
        if beyond:
            assert d.reason == "retry_after_beyond_deadline"
        return
    if p.now + wanted < p.deadline:
        assert d.delay == wanted
    else:
        assert d.delay is None
        beyond = ra is not None and p.now + ra >= p.deadline
        assert d.reason == ("retry_after_beyond_deadline" if beyond else "deadline")


# ------------------------------------------------------------------ the real loop

Kind = Literal["transient", "permanent", "transport", "throttle", "poll"]
RequestKind = Literal["get", "post", "post-keyed", "stream"]


@dataclass(frozen=True)
class Step:
    """One scripted answer: the fault, what the middleware must make of it, its status."""

    name: str
    fault: Fault
    kind: Kind
    retry_after: float = 0.0  # seconds asked for by Retry-After(-Ms), 0 if none

    @property
    def status(self) -> int:
        return self.fault.http_status


PALETTE = (
    Step("503", Fault.code("DISPATCH_TIMEOUT"), "transient"),
    Step("500", Fault.code("INTERNAL_ERROR"), "transient"),
    Step("502-html", Fault.html(502), "transient"),
    Step("503-empty", Fault.empty(503), "transient"),
    Step("503-truncated", Fault.truncated(), "transient"),
    Step("422", Fault.code("VALIDATION_ERROR"), "permanent"),
    Step("402", Fault.code("BILLING_INSUFFICIENT_CREDITS"), "permanent"),
    Step("502-fatal", Fault.code("UPSTREAM_GENERATION_SERVICE_ERROR"), "permanent"),
    Step("404-html", Fault.html(404), "permanent"),
    Step("reset", Fault.reset(), "transport"),
    Step("429-plan", Fault.code("GENERATION_CONCURRENCY_EXCEEDED"), "throttle"),
    Step("425", Fault.code("GENERATION_NOT_READY"), "poll"),
)
PATHS: dict[RequestKind, str] = {
    "get": "/v1/ping",
    "post": "/v1/generate",
    "post-keyed": "/v1/generate",
    "stream": "/v1/echo",
}
SENT_AGAIN = {"retry", "throttled", "not_ready"}
_jobs = itertools.count()


@dataclass
class Expected:
    sent: int
    status: int | None  # the final response's status, or None when an exception is raised
    exception: tuple[type[BaseException], ...] = ()
    broken_body: bool = False  # the final response's body breaks off (the caller's read raises)


def model(script: list[Step], max_attempts: int, bounded: bool, kind: RequestKind) -> Expected:
    """What the loop must do with ``script`` when no deadline interferes."""
    failures = 0
    resend_safe = kind in ("get", "post-keyed")
    for sent, step in enumerate(script, start=1):
        transport = step.kind == "transport"
        final = Expected(sent, None if transport else step.status)
        final.broken_body = step.name == "503-truncated"
        if transport:
            final.exception = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
        if step.kind == "permanent":
            return final
        if step.kind in ("transient", "transport") or not bounded:
            failures += 1
        # A bare gateway 5xx (no envelope from the table) may hide a generation that ran.
        may_have_run = transport or step.name == "502-html"
        if (may_have_run and not resend_safe) or kind == "stream" or failures >= max_attempts:
            return final
    return Expected(len(script) + 1, 200)


@dataclass
class Run:
    status: int | None
    error: BaseException | None
    body_error: BaseException | None
    elapsed: float
    events: list[MutableMapping[str, Any]]
    requests: int
    executions: int
    keyed_executions: list[int]
    duplicates: int


async def _stream() -> AsyncIterator[bytes]:
    yield b"part one,"
    yield b"part two"


async def drive(
    script: list[Step], kind: RequestKind, **mw_settings: Any
) -> tuple[Run, ResilienceMiddleware]:
    mw = middleware(**mw_settings)
    path = PATHS[kind]
    job = f"job-{next(_jobs)}"
    kwargs: dict[str, Any] = {}
    if kind in ("post", "post-keyed"):
        kwargs["json"] = {"job": job}
    if kind == "post-keyed":
        kwargs["headers"] = {"Idempotency-Key": f"key-{job}"}
    if kind == "stream":
        kwargs["data"] = _stream()
    with capture_events() as logs:
        async with Emulator(generation_time=0.0, ready_after=60.0) as emu:
            for step in script:
                emu.inject(step.fault, times=1, path=path)
            status: int | None = None
            error: BaseException | None = None
            body_error: BaseException | None = None
            async with aiohttp.ClientSession(middlewares=(mw,)) as s:
                started = time.monotonic()
                try:
                    with anyio.fail_after(10):
                        async with s.request(
                            kind_method(kind), emu.url.with_path(path), **kwargs
                        ) as r:
                            status = r.status
                            try:
                                await r.read()
                            except aiohttp.ClientPayloadError as exc:
                                body_error = exc
                except (aiohttp.ClientError, DeadlineExceeded) as exc:
                    error = exc
                elapsed = time.monotonic() - started
                assert_baseline(s, mw)
            stats = emu.stats
    return (
        Run(
            status,
            error,
            body_error,
            elapsed,
            attempts(logs),
            stats.requests,
            stats.executions[job],
            list(stats.idempotency_executions.values()),
            stats.duplicates,
        ),
        mw,
    )


def kind_method(kind: RequestKind) -> str:
    return "GET" if kind == "get" else "POST"


def check_common(run: Run, script: list[Step], max_attempts: int, bounded: bool) -> None:
    """What holds for every run, deadline or not."""
    sent = [e for e in run.events if e["duration"] is not None]
    assert len(sent) == run.requests, "one event per request the server saw"
    assert run.duplicates == 0
    assert run.executions <= 1, "a generation is never executed twice"
    assert all(n <= 1 for n in run.keyed_executions)
    # attempts <= max_attempts for failures (all non-OK answers count without max_elapsed)
    counted = [
        e
        for e in sent
        if e["outcome"] != "ok" and (not bounded or e["handling"] in ("transient", "permanent"))
    ]
    assert len(counted) <= max_attempts
    for index, event in enumerate(sent):
        step = script[index] if index < len(script) else None
        last = index == len(sent) - 1
        if not last:
            assert event["outcome"] in SENT_AGAIN
        if step is not None and step.kind == "permanent":
            assert last, "a non-retryable answer is never retried"
            assert (event["outcome"], event["reason"]) == ("fail", "not_retryable")
    # no wait above max_delay unless Retry-After asked for it
    for index, event in enumerate(run.events):
        if event["delay"] is not None:
            asked = script[index].retry_after if index < len(script) else 0.0
            assert event["delay"] <= max(FAST.max_delay, asked) + 1e-6
    if run.error is not None:
        assert run.status is None


steps = st.sampled_from(PALETTE)
request_kinds = st.sampled_from(("get", "post", "post-keyed", "stream"))
_BY_NAME = {step.name: step for step in PALETTE}


def scripted(*names: str) -> list[Step]:
    return [_BY_NAME[name] for name in names]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    script=st.lists(steps, max_size=6),
    kind=request_kinds,
    max_attempts=st.integers(1, 5),
    max_elapsed=st.sampled_from([None, 30.0]),
)
# The cases the policy is about, always run: a keyless POST after a reset, a reset GET given up
# (aiohttp's hidden resend), a stream after a retryable answer, throttles with and without
# max_elapsed, a permanent code after retries.
@example(scripted("503", "reset"), "post", 5, 30.0)
@example(scripted("reset", "reset", "reset"), "get", 2, 30.0)
@example(scripted("reset", "503-truncated"), "post-keyed", 5, None)
@example(scripted("503"), "stream", 5, 30.0)
@example(scripted("429-plan", "425", "429-plan", "503"), "post", 2, 30.0)
@example(scripted("429-plan", "425", "503"), "get", 3, None)
@example(scripted("500", "502-html", "422", "503"), "post", 5, 30.0)
def test_loop_follows_the_model(
    script: list[Step], kind: RequestKind, max_attempts: int, max_elapsed: float | None
) -> None:
    """Exactly the attempts the model allows: bounded by max_attempts, permanent codes sent once,
    unsafe or unreplayable requests never resent; the outcome is a response or a typed error."""
    run, _ = anyio.run(
        lambda: drive(script, kind, max_attempts=max_attempts, max_elapsed=max_elapsed),
        backend="asyncio",
    )
    expected = model(script, max_attempts, max_elapsed is not None, kind)
    assert run.requests == expected.sent
    if expected.exception:
        assert isinstance(run.error, expected.exception), run.error
    else:
        assert run.error is None, run.error
        assert run.status == expected.status
        assert (run.body_error is not None) == expected.broken_body, run.body_error
    if kind == "post":
        assert run.executions == (1 if run.status == 200 else 0)
    if kind == "stream":
        assert run.requests == 1, "a non-replayable body is never resent"
    check_common(run, script, max_attempts, max_elapsed is not None)


@st.composite
def timed_steps(draw: st.DrawFn) -> Step:
    """Answers carrying a Retry-After (0-150 ms), among the plain palette."""
    if draw(st.booleans()):
        return draw(steps)
    ms = draw(st.integers(0, 150))
    timed: list[tuple[str, Kind]] = [
        ("DISPATCH_TIMEOUT", "transient"),
        ("GENERATION_NOT_READY", "poll"),
        ("GENERATION_CONCURRENCY_EXCEEDED", "throttle"),
    ]
    code, kind = draw(st.sampled_from(timed))
    return Step(f"{code}+{ms}ms", Fault.code(code, retry_after_ms=ms), kind, ms / 1000)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    script=st.lists(timed_steps(), max_size=8),
    kind=request_kinds,
    max_attempts=st.integers(1, 8),
    max_elapsed=st.floats(0.02, 0.12),
)
def test_loop_never_waits_past_max_elapsed(
    script: list[Step], kind: RequestKind, max_attempts: int, max_elapsed: float
) -> None:
    """With a tight max_elapsed: total waiting stays below it, a Retry-After beyond it gives up at
    once (the response is returned), and the deadline only ever cuts the model's run short."""
    run, _ = anyio.run(
        lambda: drive(script, kind, max_attempts=max_attempts, max_elapsed=max_elapsed),
        backend="asyncio",
    )
    expected = model(script, max_attempts, True, kind)
    assert run.requests <= expected.sent
    waited = sum(e["delay"] for e in run.events if e["delay"] is not None)
    assert waited <= max_elapsed, "total waiting <= max_elapsed"
    assert run.elapsed < max_elapsed + 1.0
    if run.error is not None:
        allowed: tuple[type[BaseException], ...] = (DeadlineExceeded,)
        if expected.exception:
            allowed += expected.exception
        # The deadline may cut the run short after any attempt (a slow machine reaches it
        # sooner): a transport failure that attempt met is then the error, as with no retry.
        if 0 < run.requests <= len(script) and script[run.requests - 1].kind == "transport":
            allowed += (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
        assert isinstance(run.error, allowed), run.error
    sent = [e for e in run.events if e["duration"] is not None]
    if run.body_error is not None:  # only a truncated final answer breaks the caller's read
        assert run.requests <= len(script)
        assert script[run.requests - 1].name == "503-truncated"
    for index, event in enumerate(sent[: len(script)]):
        step = script[index]
        if step.kind in ("transient", "poll") and step.retry_after >= max_elapsed:
            assert event is sent[-1]
            assert event["outcome"] == "give_up"
            assert event["reason"] in (
                "retry_after_beyond_deadline",
                "max_attempts",
                "body_not_replayable",
            )
    check_common(run, script, max_attempts, True)
