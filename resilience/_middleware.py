"""The attempt loop: admit -> send -> classify -> decide -> log -> release -> wait or return.

This module holds no policy of its own: classification lives in ``_classify``, the decision in
``_decide``, limits in the store, the schedule in ``_backoff``.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import anyio
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from ._backoff import Backoff
from ._body import is_replayable
from ._classify import (
    Verdict,
    classify,
    classify_response,
    parse_retry_after,
    server_request_id,
)
from ._codes import CodeTable, Handling
from ._decide import MAX_RETRY_AFTER, MIN_THROTTLE_WAIT, Decision, Progress, decide
from ._errors import ApiError, DeadlineExceeded
from ._events import Outcome, debug_enabled, emit_attempt, redact_url
from ._store import Admission, LocalStore, RetryBudgetSettings, Signal, Store

__all__ = ["ResilienceMiddleware", "Settings"]

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NOT_SENT: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_PERMANENT_TRANSPORT: Final = (aiohttp.ClientConnectorCertificateError, aiohttp.InvalidURL)
_TRANSIENT_TRANSPORT: Final = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
_SIGNALS: Final = {
    Handling.OK: Signal.SUCCESS,
    Handling.CONCURRENCY_LIMIT: Signal.CONCURRENCY,
    Handling.RATE_LIMIT: Signal.RATE,
}

# aiohttp resends an idempotent request once, through the whole middleware chain, when it ends
# in ServerDisconnectedError/ClientOSError. We already retried it: the guard makes that hidden
# retry re-raise at once instead of sending max_attempts more requests.
_GaveUp = tuple[object, str, str, BaseException]  # (task, method, url, exception)
_GAVE_UP: contextvars.ContextVar[_GaveUp | None] = contextvars.ContextVar(
    "resilience_gave_up", default=None
)


_OK: Final = Decision(Outcome.OK)
_OK_VERDICT: Final = Verdict(Handling.OK)  # status and server id are read off the response


def new_request_id() -> str:
    """A random (version 4) UUID as 32 hex digits: ``uuid.uuid4().hex``, without the UUID."""
    n = int.from_bytes(os.urandom(16), "big")
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    return f"{n:032x}"


@dataclass(frozen=True, slots=True)
class Settings:
    """The middleware's settings, validated once. See :class:`ResilienceMiddleware`."""

    max_attempts: int = 5
    max_elapsed: float | None = 60.0
    backoff: Backoff = field(default_factory=Backoff)
    codes: CodeTable = field(default_factory=CodeTable.default)
    raise_api_errors: bool = False
    envelope_cap: int = 64 * 1024
    request_id_header: str = "X-Request-ID"

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        if self.max_elapsed is not None and not (0 < self.max_elapsed < float("inf")):
            raise ValueError(
                f"max_elapsed must be > 0 and finite, or None; got {self.max_elapsed!r}"
            )
        if not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, got {type(self.backoff).__name__}")
        if not isinstance(self.codes, CodeTable):
            raise TypeError(f"codes must be a CodeTable, got {type(self.codes).__name__}")
        if self.envelope_cap < 0:
            raise ValueError(f"envelope_cap must be >= 0, got {self.envelope_cap!r}")
        if not self.request_id_header:
            raise ValueError("request_id_header must not be empty")


class ResilienceMiddleware:
    """An aiohttp client middleware that retries what the code table says is retryable.

    Pass it to ``aiohttp.ClientSession(middlewares=(mw,))`` or use :func:`resilience.wrap`.
    One instance may serve many sessions; they then share its concurrency limit, rate gates
    and retry budget.

    Args:
        max_attempts: attempts per logical request that may end in a failure, the first
            included. Throttles (429) and polls (425) do not count while ``max_elapsed`` bounds
            them.
        max_elapsed: seconds across all attempts and waits of one logical request; no wait
            runs past it. ``None``: no bound (throttles and polls then count as attempts).
        backoff: the wait schedule between retries.
        max_concurrency: ceiling of the adaptive concurrency limit; ``None``: no ceiling.
        initial_concurrency: where the adaptive limit starts (it doubles per round trip until
            the server pushes back).
        retry_budget: the share of traffic retries may add; ``None`` disables the budget.
        store: where limits live; default a new :class:`LocalStore`. Pass one store to several
            middlewares to share limits, or a ``resilience.redis.RedisStore`` for a fleet.
        codes: the error-code table; default the generation API's published table.
        raise_api_errors: raise :class:`ApiError` for a final status >= 400 instead of
            returning the response.
        envelope_cap: largest error body (decoded bytes) read for classification.
        request_id_header: the header carrying the logical request's ID.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        max_elapsed: float | None = 60.0,
        backoff: Backoff | None = None,
        max_concurrency: int | None = None,
        initial_concurrency: int = 4,
        retry_budget: RetryBudgetSettings | None = RetryBudgetSettings(),  # noqa: B008
        store: Store | None = None,
        codes: CodeTable | None = None,
        raise_api_errors: bool = False,
        envelope_cap: int = 64 * 1024,
        request_id_header: str = "X-Request-ID",
    ) -> None:
        self.settings: Final = Settings(
            max_attempts=max_attempts,
            max_elapsed=max_elapsed,
            backoff=backoff if backoff is not None else Backoff(),
            codes=codes if codes is not None else CodeTable.default(),
            raise_api_errors=raise_api_errors,
            envelope_cap=envelope_cap,
            request_id_header=request_id_header,
        )
        if store is None:
            store = LocalStore(
                max_concurrency=max_concurrency,
                initial_concurrency=initial_concurrency,
                retry_budget=retry_budget,
            )
        elif (
            max_concurrency is not None
            or initial_concurrency != 4
            or retry_budget != RetryBudgetSettings()
        ):
            raise ValueError(
                "with store=..., give max_concurrency, initial_concurrency and retry_budget "
                "to the store, not to the middleware"
            )
        elif not isinstance(store, Store):
            raise TypeError(f"store must implement resilience.Store, got {type(store).__name__}")
        self.store: Final = store
        self._origins: dict[tuple[str, str | None, int | None], str] = {}

    @property
    def concurrency_limit(self) -> int:
        """The adaptive concurrency limit now."""
        return self.store.concurrency_limit

    def __repr__(self) -> str:
        return f"ResilienceMiddleware({self.settings!r}, store={self.store!r})"

    async def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        stale = _GAVE_UP.get()
        if stale is not None:
            _GAVE_UP.set(None)  # one-shot, whatever comes next
            task, method, url, exc = stale
            if task is asyncio.current_task() and method == req.method and url == str(req.url):
                raise exc
        return await _Call(self, req, handler).run()


class _Call:
    """One logical request (one redirect hop) through the loop."""

    __slots__ = (
        "attempt",
        "deadline",
        "delays",
        "failures",
        "handler",
        "idempotent",
        "last_verdict",
        "mw",
        "req",
        "request_id",
        "settings",
        "start",
        "store",
        "throttle_delays",
        "throttle_floor",
        "throttles",
    )

    def __init__(self, mw: ResilienceMiddleware, req: ClientRequest, handler: ClientHandlerType):
        self.mw = mw
        self.settings = mw.settings
        self.store = mw.store
        self.req = req
        self.handler = handler
        self.start = time.monotonic()
        max_elapsed = self.settings.max_elapsed
        self.deadline = self.start + max_elapsed if max_elapsed is not None else None
        self.attempt = 0
        self.failures = 0
        self.throttles = 0
        self.throttle_floor = min(MIN_THROTTLE_WAIT, self.settings.backoff.max_delay)
        # Made on first need: most requests never wait.
        self.delays: Iterator[float] | None = None
        self.throttle_delays: Iterator[float] | None = None
        self.last_verdict: Verdict | None = None
        header = self.settings.request_id_header
        request_id = req.headers.get(header)
        if not request_id:
            request_id = new_request_id()
            req.headers[header] = request_id
        self.request_id = request_id
        self.idempotent = req.method in IDEMPOTENT_METHODS or "Idempotency-Key" in req.headers

    async def run(self) -> ClientResponse:
        store, req = self.store, self.req
        url = req.url
        key = (url.scheme, url.host, url.port)
        origin = self.mw._origins.get(key)
        if origin is None:
            origin = self.mw._origins[key] = str(url.origin())
        await store.deposit_request()
        while True:
            self.attempt += 1
            began = time.monotonic()
            try:
                admission = await store.admit(origin, self.deadline)
            except DeadlineExceeded as exc:
                self._deadline_before_send(exc, began)
            sent_at = time.monotonic()
            waited = sent_at - began
            try:
                resp = await self.handler(req)
            except BaseException as exc:
                store.release(admission)
                await self._after_transport_error(exc, waited, sent_at)
                continue
            try:
                verdict = _OK_VERDICT if resp.status < 400 else await self._classify(resp)
                await store.report(
                    admission, _SIGNALS.get(verdict.handling, Signal.OTHER), self._gate_for(verdict)
                )
                decision = _OK if verdict is _OK_VERDICT else await self._decide(verdict)
            except BaseException:
                resp.close()
                store.release(admission)
                raise
            self._log(verdict, decision, waited, sent_at, resp)
            self.last_verdict = verdict
            if decision.delay is None:
                return self._finish(resp, verdict, admission)
            _discard(resp)
            store.release(admission)
            await self._wait(verdict, decision.delay, admission)

    async def _classify(self, resp: ClientResponse) -> Verdict:
        try:
            return await classify_response(resp, self.settings.codes, self.settings.envelope_cap)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            # The error body broke off mid-read: classify by status alone.
            handling, _, _, _ = classify(resp.status, None, self.settings.codes)
            return Verdict(
                handling,
                status=resp.status,
                retry_after=parse_retry_after(resp.headers),
                server_request_id=server_request_id(resp.headers),
            )

    async def _decide(self, verdict: Verdict) -> Decision:
        handling = verdict.handling
        if handling is Handling.OK:
            return _OK
        # Throttles and polls are the server pacing us: bounded by the deadline, not by
        # max_attempts; with no deadline they count, so nothing can loop forever.
        counts = handling in (Handling.TRANSIENT, Handling.PERMANENT)
        if counts or self.deadline is None:
            self.failures += 1
        if not counts:
            self.throttles += 1
        progress = Progress(
            failures=self.failures,
            max_attempts=self.settings.max_attempts,
            now=time.monotonic(),
            deadline=self.deadline,
            replayable=is_replayable(self.req.body),
            resend_safe=self.idempotent or _answer_says_not_run(verdict),
            throttles=self.throttles,
            throttle_floor=self.throttle_floor,
            # Failures and throttles/polls each walk their own schedule: a run of 429s does
            # not make the next failure's wait long.
            backoff_delay=self._next_delay(throttle=not counts),
        )
        decision = decide(verdict, progress)
        if decision.outcome is Outcome.RETRY and not await self.store.try_retry():
            return Decision(Outcome.GIVE_UP, reason="retry_budget")
        return decision

    def _gate_for(self, verdict: Verdict) -> float | None:
        """How long a Retry-After may close the shared gate: one deadline (plus a second, so
        requests that cannot outlast it fail fast instead of sending at its very end). One
        absurd answer cannot block the origin for longer; then a request probes again."""
        retry_after = verdict.retry_after
        if retry_after is None:
            return None
        return min(retry_after, (self.settings.max_elapsed or MAX_RETRY_AFTER) + 1.0)

    def _next_delay(self, *, throttle: bool) -> float:
        if throttle:
            if self.throttle_delays is None:
                self.throttle_delays = self.settings.backoff.delays()
            return next(self.throttle_delays)
        if self.delays is None:
            self.delays = self.settings.backoff.delays()
        return next(self.delays)

    async def _after_transport_error(
        self, exc: BaseException, waited: float, sent_at: float
    ) -> None:
        """Decide after an exception from ``handler()``; returns to retry, raises to stop."""
        # asyncio.TimeoutError: the builtin on 3.11+, its own class on 3.10 (aiohttp raises it).
        if isinstance(exc, asyncio.TimeoutError) and not isinstance(
            exc, aiohttp.ServerTimeoutError
        ):
            self._log_stopped(exc, waited, sent_at, "timeout")  # the caller's total timeout
            raise exc
        if not isinstance(exc, Exception) or not isinstance(exc, aiohttp.ClientError):
            if isinstance(exc, asyncio.CancelledError):
                self._log_stopped(exc, waited, sent_at, "cancelled")
            raise exc  # cancellation or a bug: never retried
        retryable = isinstance(exc, _TRANSIENT_TRANSPORT) and not isinstance(
            exc, _PERMANENT_TRANSPORT
        )
        verdict = Verdict(
            Handling.TRANSIENT if retryable else Handling.PERMANENT, error=type(exc).__name__
        )
        self.failures += 1
        progress = Progress(
            failures=self.failures,
            max_attempts=self.settings.max_attempts,
            now=time.monotonic(),
            deadline=self.deadline,
            replayable=is_replayable(self.req.body),
            resend_safe=self.idempotent or isinstance(exc, _NOT_SENT),
            backoff_delay=self._next_delay(throttle=False),
        )
        decision = decide(verdict, progress)
        if decision.outcome is Outcome.RETRY and not await self.store.try_retry():
            decision = Decision(Outcome.GIVE_UP, reason="retry_budget")
        self._log(verdict, decision, waited, sent_at)
        self.last_verdict = verdict
        if decision.delay is None:
            if _aiohttp_will_resend(self.req, exc):
                _GAVE_UP.set((asyncio.current_task(), self.req.method, str(self.req.url), exc))
            raise exc
        await self._wait(verdict, decision.delay, None)

    def _log_stopped(self, exc: BaseException, waited: float, sent_at: float, reason: str) -> None:
        verdict = Verdict(Handling.PERMANENT, error=type(exc).__name__)
        self._log(verdict, Decision(Outcome.FAIL, reason=reason), waited, sent_at)

    async def _wait(self, verdict: Verdict, delay: float, admission: Admission | None) -> None:
        if verdict.handling is Handling.CONCURRENCY_LIMIT and admission is not None:
            await self.store.wait_for_release(admission, delay)
        elif verdict.handling is Handling.RATE_LIMIT and verdict.retry_after is not None:
            pass  # the store's gate holds every request to this origin until then
        else:
            await anyio.sleep(delay)
        # A body writer may still be running from the attempt we dropped: let it settle before
        # the payload is rewound and written again.
        await self.req.close()

    def _finish(
        self, resp: ClientResponse, verdict: Verdict, admission: Admission
    ) -> ClientResponse:
        """Return the final response; its permit lasts until its body is read or released."""
        connection = resp.connection
        if connection is None:
            self.store.release(admission)
        else:
            store = self.store
            connection.add_callback(lambda: store.release(admission))
        if self.settings.raise_api_errors and resp.status >= 400:
            error = ApiError(
                resp.request_info,
                resp.history,
                status=resp.status,
                code=verdict.code,
                detail=verdict.detail,
                retryable=verdict.retryable,
                request_id=self.request_id,
                attempts=self.attempt,
                server_request_id=verdict.server_request_id,
                headers=resp.headers,
            )
            resp.release()
            raise error
        return resp

    def _deadline_before_send(self, exc: DeadlineExceeded, began: float) -> None:
        """No permit or open gate before max_elapsed: log the unsent attempt, raise."""
        verdict = Verdict(Handling.TRANSIENT, error=type(exc).__name__)
        waited = time.monotonic() - began
        self._log(verdict, Decision(Outcome.GIVE_UP, reason="deadline"), waited, None)
        last = self.last_verdict
        exc.request_id = self.request_id
        exc.attempts = self.attempt - 1
        exc.last_status = last.status if last is not None else None
        exc.last_code = (last.code or last.error) if last is not None else None
        raise exc

    def _log(
        self,
        verdict: Verdict,
        decision: Decision,
        waited: float,
        sent_at: float | None,
        resp: ClientResponse | None = None,
    ) -> None:
        first_ok = self.attempt == 1 and decision.outcome is Outcome.OK
        if first_ok and not debug_enabled():
            return  # the common case costs nothing when DEBUG is filtered
        now = time.monotonic()
        req = self.req
        fields = {
            "request_id": self.request_id,
            "method": req.method,
            "url": redact_url(req.url),
            "attempt": self.attempt,
            "status": verdict.status if resp is None else resp.status,
            "code": verdict.code,
            "handling": verdict.handling.value,
            "retryable": verdict.retryable,
            "reason": decision.reason,
            "delay": round(decision.delay, 6) if decision.delay is not None else None,
            "elapsed": round(now - self.start, 6),
            "duration": round(now - sent_at, 6) if sent_at is not None else None,
            "waited": round(waited, 6),
            "server_request_id": verdict.server_request_id
            or (server_request_id(resp.headers) if resp is not None else None),
            "error": verdict.error,
            "limit": self.store.concurrency_limit,
        }
        emit_attempt(fields, decision.outcome, first_ok=first_ok)


# Statuses whose bare answer (no envelope from the table) says the request did not run: a
# gateway's 500/502/504 may hide a generation that did, so a keyless POST is not resent then.
_NOT_RUN_STATUSES: Final = frozenset({408, 425, 429, 503})


def _answer_says_not_run(verdict: Verdict) -> bool:
    return verdict.known_code or verdict.status in _NOT_RUN_STATUSES


def _aiohttp_will_resend(req: ClientRequest, exc: BaseException) -> bool:
    """Mirror of aiohttp's own condition for its hidden resend (client.py ``_request``)."""
    if req.method not in IDEMPOTENT_METHODS or isinstance(exc, _NOT_SENT):
        return False
    if not isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError):
        return False
    session = getattr(req, "_session", None)
    return bool(getattr(session, "_retry_connection", False))


def _discard(resp: ClientResponse) -> None:
    """Drop a response we will not return without leaking its connection.

    A body the classifier read whole goes back to the pool with its connection; anything else
    (unread, huge, streaming) is closed rather than downloaded.
    """
    if resp._body is not None:
        resp.release()
    else:
        resp.close()
