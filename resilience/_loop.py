"""The attempt loop: admit -> send -> classify -> report -> decide -> log -> release -> wait.

The loop executes; it holds no policy. Every rule (what counts, which wait and how long, resend
safety, the budget, the gate's length) is in ``_decide.py``; classification in ``_classify``;
limits behind the store's admission handle (``_store.py``); aiohttp internals in
``_aiohttp_compat``. One request's path reads top to bottom in :meth:`_Call.run`; the first
attempt takes the happy path (``Store.try_admit``, ``Admission.succeeded``) when nothing needs
a wait. Over 400 lines because the loop and the record it logs for every kind of ending are
read together.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Final, cast

import aiohttp
import anyio
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from . import _aiohttp_compat as compat
from . import _testmode
from ._account import AccountGuard, AccountStops, Stopped
from ._attempt import AttemptRecord, Outcome
from ._classify import Verdict, classify, classify_response, parse_retry_after, server_request_id
from ._codes import Handling
from ._decide import (
    ACCOUNT_STOPPED_DECISION,
    CIRCUIT_ENDING,
    CIRCUIT_OPEN_DECISION,
    DEADLINE_DECISION,
    HELD_DECISION,
    OK_DECISION,
    OK_ENDING,
    SUCCESS_FEEDBACK,
    Decision,
    Ending,
    RequestPolicy,
    Wait,
    answer_ending,
    transport_ending,
)
from ._errors import AccountStopped, ApiError, CircuitOpen, DeadlineExceeded
from ._events import debug_enabled, emit_attempt, redact_url
from ._quota import read_quota
from ._store import Admission, Feedback
from .instrumentation._hooks import AttemptStart, WaitKind, WaitRecord

if TYPE_CHECKING:
    from ._middleware import ResilienceMiddleware


__all__ = ["new_request_id"]

# aiohttp resends an idempotent request once, through the whole middleware chain, when it ends
# in ServerDisconnectedError/ClientOSError. We already retried it: the guard makes that hidden
# retry re-raise at once instead of sending max_attempts more requests.
_GaveUp = tuple[object, str, str, BaseException]  # (task, method, url, exception)
_GAVE_UP: contextvars.ContextVar[_GaveUp | None] = contextvars.ContextVar(
    "resilience_gave_up", default=None
)

# The request the outermost resilience middleware of this task is running, so an inner one
# (a library's session wrapped again by the app) passes it through.
_HANDLING: contextvars.ContextVar[ClientRequest | None] = contextvars.ContextVar(
    "resilience_handling", default=None
)


_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_IDS: list[str] = []  # request IDs made ahead: one getrandom() call per 256 requests
# A forked child must not hand out its parent's IDs.
os.register_at_fork(after_in_child=_IDS.clear)


def new_request_id() -> str:
    """A random (version 4) UUID as 32 hex digits: ``uuid.uuid4().hex``, without the UUID."""
    if not _IDS:
        pool = os.urandom(16 * 256).hex()
        _IDS.extend(
            [  # a list, not a generator: no resumption per ID
                # version 4 in the 13th digit, the RFC 4122 variant in the 17th
                f"{pool[i : i + 12]}4{pool[i + 13 : i + 16]}{_VARIANT[pool[i + 16]]}"
                f"{pool[i + 17 : i + 32]}"
                for i in range(0, len(pool), 32)
            ]
        )
    return _IDS.pop()


class _Call:
    """One logical request (one redirect hop) through the loop."""

    __slots__ = (
        "_policy",
        "account",
        "attempt",
        "handler",
        "hooks",
        "mw",
        "origin",
        "req",
        "request_id",
        "start",
        "store",
        "testing",
    )

    def __init__(self, mw: ResilienceMiddleware, req: ClientRequest, handler: ClientHandlerType):
        self.mw = mw
        self.store = mw.store
        self.req = req
        self.handler = handler
        self.start = time.monotonic()
        self.attempt = 0
        header = mw.settings.request_id_header
        request_id = req.headers.get(header)
        if not request_id:
            request_id = new_request_id()
            req.headers[header] = request_id
        self.request_id = request_id
        self.hooks = mw.hooks
        self.origin = ""
        self.testing = _testmode.state.mode
        self._policy: RequestPolicy | None = None  # made on first need: most requests succeed

    @property
    def policy(self) -> RequestPolicy:
        policy = self._policy
        if policy is None:
            settings, testing, req = self.mw.settings, self.testing, self.req
            if testing is not None and testing.attempts is not None:
                settings = replace(settings, max_attempts=testing.attempts)
            policy = self._policy = RequestPolicy(
                settings,
                method=req.method,
                keyed="Idempotency-Key" in req.headers,
                body=req.body,
                start=self.start,
            )
        return policy

    async def run(self) -> ClientResponse:
        token = _HANDLING.set(self.req)  # an inner resilience middleware passes it through
        try:
            store, req = self.store, self.req
            origin = self.origin = self.mw._origin_of(req.url)
            hooks, testing = self.hooks, self.testing
            accounts = self.mw.accounts
            # A copy of the headers as this middleware sees them (the credentials the account
            # stop compares); the guard itself is made only when some account is stopped or an
            # answer stops this one.
            credentials: Mapping[str, str] | None = (
                req.headers.copy() if accounts is not None else None
            )
            account: AccountGuard | None = None
            store.deposit_request()
            first = True
            while True:
                self.attempt += 1
                now = self.start if first else time.monotonic()
                # The happy path: a permit at once, with no await (the breaker closed, the
                # gate open, no pacing, a slot free); else admit() waits for one.
                admission = store.try_admit(origin) if first else None
                first = False
                if admission is None:
                    admission, began, sent_at = await self._admit(origin, now)
                else:
                    began = sent_at = now
                # Checked once the permit is held, just before the send: a stop answer that
                # came while this attempt waited for its permit still stops it.
                if accounts is not None and (account is not None or accounts.stopped):
                    if account is None:
                        account = self._guard(accounts, credentials)
                    if (stopped := account.check(sent_at)) is not None:
                        admission.release()
                        raise self._account_stopped(stopped, began)
                start: AttemptStart | None = None
                resp: ClientResponse | None = None
                error: BaseException | None = None
                ending: Ending = OK_ENDING
                try:
                    if hooks is not None:
                        start = self._start(admission, sent_at - began)
                    resp = await self.handler(req)
                except BaseException as exc:
                    transport = transport_ending(exc)
                    if transport is None:  # not a transport error: a bug or an interrupt
                        admission.release()
                        if account is not None:
                            account.ended(time.monotonic(), None, None, None)
                        self._abandon(start, exc, began, sent_at)
                        raise
                    ending, error = transport, exc
                try:
                    quota = None
                    if resp is not None:
                        if resp.status >= 400:
                            ending = await self._classify(resp)
                        quota = read_quota(resp.headers)
                    if accounts is not None and (account is not None or ending is not OK_ENDING):
                        verdict = ending.verdict
                        status = resp.status if resp is not None else None
                        if account is None and accounts.is_stop(status, verdict.code):
                            account = self._guard(accounts, credentials, sent=True)
                        if account is not None:
                            account.ended(time.monotonic(), status, verdict.code, verdict.detail)
                    feedback: Feedback | None
                    if (
                        ending is OK_ENDING
                        and quota is None
                        and testing is None
                        and admission.succeeded()
                    ):
                        feedback, decision = SUCCESS_FEEDBACK, OK_DECISION
                    else:
                        policy = self.policy
                        feedback = policy.feedback(ending, quota)
                        if testing is not None and feedback is not None:
                            feedback = _testmode.limits_feedback(testing, feedback)
                        if feedback is not None:
                            await admission.report(feedback)
                        decision = await policy.decide(ending, store.try_retry)
                        if testing is not None:
                            decision = _testmode.next_decision(testing, decision)
                except BaseException as exc:
                    if resp is not None:
                        resp.close()
                    admission.release()
                    if account is not None:
                        account.ended(time.monotonic(), None, None, None)
                    if not self._log_cut_off(exc, began, sent_at, resp, start):
                        self._abandon(start, exc, began, sent_at)
                    raise
                self._log(ending, decision, began, sent_at, resp, start, feedback)
                if decision.wait is Wait.NONE:
                    if resp is not None:
                        return self._finish(resp, ending.verdict, admission)
                    admission.release()
                    assert error is not None
                    if compat.aiohttp_will_resend(req, error):
                        _GAVE_UP.set((asyncio.current_task(), req.method, str(req.url), error))
                    raise error
                if resp is not None:
                    _discard(resp)
                admission.release()
                await self._wait(decision, admission)
        finally:
            _HANDLING.reset(token)

    def _guard(
        self, accounts: AccountStops, credentials: Mapping[str, str] | None, *, sent: bool = False
    ) -> AccountGuard:
        assert credentials is not None  # copied whenever the middleware has account stops
        settings = self.mw.settings
        return AccountGuard(
            accounts, self.origin, credentials, self.req.url, settings.redaction, sent=sent
        )

    async def _admit(self, origin: str, began: float) -> tuple[Admission, float, float]:
        """Wait for an admission (the happy path had none): (the handle, when the wait began,
        when it ended). Raises the request's error when none comes in time."""
        policy = self.policy
        try:
            admission = await self.store.admit(origin, policy.deadline)
        except DeadlineExceeded as exc:
            unsent = Ending(Verdict(Handling.TRANSIENT, error=type(exc).__name__))
            self._log(unsent, DEADLINE_DECISION, began, None, None, None, None)
            raise policy.deadline_error(
                exc, request_id=self.request_id, attempts=self.attempt - 1
            ) from None
        except CircuitOpen as exc:
            self._log(CIRCUIT_ENDING, CIRCUIT_OPEN_DECISION, began, None, None, None, None)
            raise policy.circuit_error(
                exc, request_id=self.request_id, attempts=self.attempt - 1
            ) from None
        if getattr(admission, "held", 0.0):  # it waited unsent at the circuit breaker
            self._log(CIRCUIT_ENDING, HELD_DECISION, began, None, None, None, None)
        return admission, began, time.monotonic()

    def _log_cut_off(
        self,
        exc: BaseException,
        began: float,
        sent_at: float,
        resp: ClientResponse | None,
        start: AttemptStart | None,
    ) -> bool:
        """The caller's timeout or cancellation ended the attempt while its error body was
        read: still exactly one event for it, with its status. False for anything else."""
        stopped = transport_ending(exc)
        if resp is None or stopped is None or stopped.stopped is None:
            return False
        cut = Ending(replace(stopped.verdict, status=resp.status), stopped=stopped.stopped)
        decision = Decision(Outcome.FAIL, reason=stopped.stopped)
        self._log(cut, decision, began, sent_at, resp, start, None)
        return True

    async def _classify(self, resp: ClientResponse) -> Ending:
        if resp.status < 400:
            return OK_ENDING
        settings = self.mw.settings
        try:
            verdict = await classify_response(resp, settings.codes, settings.envelope_cap)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            # The error body broke off mid-read: classify by status alone.
            handling, _, _, _ = classify(resp.status, None, settings.codes)
            verdict = Verdict(
                handling,
                status=resp.status,
                retry_after=parse_retry_after(resp.headers),
                server_request_id=server_request_id(resp.headers),
            )
        return answer_ending(verdict)

    async def _wait(self, decision: Decision, admission: Admission) -> None:
        wait, delay = decision.wait, decision.delay
        assert delay is not None
        began = time.monotonic() if self.hooks is not None else 0.0
        try:
            if wait is Wait.PARK:
                await admission.wait_for_release(delay)
            elif wait is Wait.SLEEP:
                await anyio.sleep(delay)
        finally:
            if self.hooks is not None:
                self._waited(decision, time.monotonic() - began)
        # Wait.GATE: the report closed the origin's gate; the next admit waits it out.
        # A body writer may still be running from the attempt we dropped: let it settle before
        # the payload is rewound and written again.
        await self.req.close()

    def _finish(
        self, resp: ClientResponse, verdict: Verdict, admission: Admission
    ) -> ClientResponse:
        """Return the final response; its permit lasts until its body is read or released."""
        connection = resp.connection
        if connection is None:
            admission.release()
        else:
            connection.add_callback(admission.release)
        if self.mw.settings.raise_api_errors and resp.status >= 400:
            error = ApiError(
                resp.request_info,
                resp.history,
                status=resp.status,
                error_code=verdict.code,
                detail=verdict.detail,
                retryable=verdict.retryable,
                request_id=self.request_id,
                attempts=self.attempt,
                server_request_id=verdict.server_request_id,
                headers=resp.headers,
                redaction=self.mw.settings.redaction,
            )
            resp.release()
            raise error
        return resp

    def _account_stopped(self, stopped: Stopped, began: float) -> AccountStopped:
        """Log the unsent attempt; the error to raise (whatever ``raise_api_errors`` says:
        there is no response to return)."""
        verdict = Verdict(Handling.PERMANENT, status=stopped.status, code=stopped.code)
        self._log(Ending(verdict), ACCOUNT_STOPPED_DECISION, began, None, None, None, None)
        return AccountStopped(
            self.req.request_info,
            status=stopped.status,
            error_code=stopped.code,
            detail=stopped.detail,
            request_id=self.request_id,
            age=began - stopped.since,
            recheck_in=max(0.0, stopped.recheck_at - began),
            redaction=self.mw.settings.redaction,
        )

    def _log(
        self,
        ending: Ending,
        decision: Decision,
        began: float,
        sent_at: float | None,
        resp: ClientResponse | None,
        start: AttemptStart | None,
        feedback: Feedback | None,
    ) -> None:
        first_ok = self.attempt == 1 and decision.outcome is Outcome.OK
        logged = not first_ok or debug_enabled()
        if not logged and self.hooks is None:
            return  # the common case costs nothing when DEBUG is filtered and no hook listens
        record = self._record(ending, decision, began, sent_at, resp, feedback, start)
        if logged:
            emit_attempt(record, first_ok=first_ok)
        if self.hooks is not None:
            self.hooks.end(record, start)

    def _record(
        self,
        ending: Ending,
        decision: Decision,
        began: float,
        sent_at: float | None,
        resp: ClientResponse | None,
        feedback: Feedback | None,
        start: AttemptStart | None,
    ) -> AttemptRecord:
        now = time.monotonic()
        req, verdict = self.req, ending.verdict
        return AttemptRecord(
            request_id=self.request_id,
            method=req.method,
            url=start.url if start is not None else redact_url(req.url, self.mw.settings.redaction),
            attempt=self.attempt,
            status=verdict.status if resp is None else resp.status,
            code=verdict.code,
            handling=verdict.handling.value,
            retryable=verdict.retryable,
            outcome=decision.outcome,
            reason=decision.reason,
            delay=round(decision.delay, 6) if decision.delay is not None else None,
            elapsed=round(now - self.start, 6),
            duration=round(now - sent_at, 6) if sent_at is not None else None,
            waited=round((sent_at if sent_at is not None else now) - began, 6),
            server_request_id=verdict.server_request_id
            or (server_request_id(resp.headers) if resp is not None else None),
            error=verdict.error,
            limit=self.mw._limit_now(self.origin),
            origin=self.origin,
            gate=feedback.gate if feedback is not None else None,
        )

    # ---------------------------------------------------------------- hooks (only with hooks)

    def _start(self, admission: Admission, waited: float) -> AttemptStart:
        """Tell the hooks an admitted attempt is about to be sent; they may add headers."""
        assert self.hooks is not None
        req = self.req
        url = req.url
        start = AttemptStart(
            request_id=self.request_id,
            method=req.method,
            url=redact_url(url, self.mw.settings.redaction),
            attempt=self.attempt,
            origin=self.origin,
            server_address=url.host or "",
            server_port=url.port or 0,
            waited=round(waited, 6),
            limit=admission.limit,
            headers=req.headers,
        )
        self.hooks.start(start)
        return start

    def _abandon(
        self, start: AttemptStart | None, exc: BaseException, began: float, sent_at: float
    ) -> None:
        """End, for the hooks, a started attempt the loop does not log: an exception it does
        not handle stopped it (a cancellation while reading an error body, a bug elsewhere)."""
        if start is None or self.hooks is None:
            return
        ending = Ending(Verdict(Handling.PERMANENT, error=type(exc).__name__))
        reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
        stopped = Decision(Outcome.FAIL, reason=reason)
        self.hooks.end(self._record(ending, stopped, began, sent_at, None, None, start), start)

    def _waited(self, decision: Decision, waited: float) -> None:
        assert self.hooks is not None
        assert decision.delay is not None
        self.hooks.wait(
            WaitRecord(
                request_id=self.request_id,
                attempt=self.attempt,
                origin=self.origin,
                kind=cast(WaitKind, decision.wait.value),  # the same names
                outcome=decision.outcome,
                delay=round(decision.delay, 6),  # as the attempt record has it
                waited=round(waited, 6),
            )
        )


def _discard(resp: ClientResponse) -> None:
    """Drop a response we will not return without leaking its connection.

    A body the classifier read whole goes back to the pool with its connection; anything else
    (unread, huge, streaming) is closed rather than downloaded.
    """
    if compat.body_is_cached(resp):
        resp.release()
    else:
        resp.close()
