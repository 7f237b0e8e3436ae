"""Where throttling state lives: the ``Store`` seam, its ``Admission`` handle, ``LocalStore``.

One attempt meets the store twice: ``admit()`` (wait at the gate and pacer, take a permit)
hands out an :class:`Admission`, and the attempt's few operations go through that handle
(report what the answer said, release, park until a permit frees), as Netflix
concurrency-limits' ``Limiter.Listener``. The retry budget is the store's, not the attempt's.

Over 400 lines because the seam (the protocols), the in-process store that implements it, its
two handles and the breaker's place in front of them are one contract, read together.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar, runtime_checkable

import anyio
from yarl import URL

from ._breaker import DEFAULT_CIRCUIT_BREAKER, CircuitBreaker, Tally
from ._budget import DEFAULT_RETRY_BUDGET, RetryBudget, RetryBudgetSettings
from ._circuit import BreakerRule, Circuit, CircuitTicket, LocalBreakers
from ._concurrency import AdaptiveLimiter, ConcurrencyPermit
from ._errors import DeadlineExceeded
from ._events import GATE_EVENT, emit
from ._pacing import MAX_RETRY_AFTER, RatePacer
from ._quota import Quota
from ._validate import boolean, show

__all__ = [
    "Admission",
    "CircuitAdmission",
    "LocalStore",
    "RetryBudgetSettings",
    "Signal",
    "Store",
    "admit_through",
    "circuit_of",
]


class Signal(enum.Enum):
    """What a response tells the store."""

    SUCCESS = "success"  # accepted by the server (2xx/3xx)
    CONCURRENCY = "concurrency"  # 429 GENERATION_CONCURRENCY_EXCEEDED
    RATE = "rate"  # 429 RATE_LIMITED
    FAILURE = "failure"  # an outage failure: transport error, transient code, bare 5xx
    OTHER = "other"  # any other answer: the server took it, no limit was hit


@dataclass(frozen=True, slots=True)
class Feedback:
    """What one attempt's answer tells the limits (built by the policy, ``_decide.py``)."""

    signal: Signal
    gate: float | None = None  # seconds the origin's gate closes (Retry-After, capped)
    quota: Quota | None = None  # the rate limit the answer announced (its reset capped)
    code: str | None = None  # a failure's code or transport error (the breaker's last_code)


@runtime_checkable
class Admission(Protocol):
    """The right to send one attempt, and the operations that attempt needs."""

    @property
    def limit(self) -> int:
        """The concurrency limit when the attempt was admitted (for logs)."""
        ...

    async def report(self, feedback: Feedback) -> None:
        """Feed the attempt's answer into the limits (AIMD step, gate, pacing rate)."""
        ...

    def succeeded(self) -> bool:
        """Report a plain success (``report(Feedback(Signal.SUCCESS))``: no quota announced)
        without an await, as concurrency-limits' ``Listener.onSuccess``: the happy path's.
        False when this handle cannot (its answer must travel): then call :meth:`report`."""
        ...

    def release(self) -> None:
        """Return the permit. Synchronous and idempotent: it runs from connection callbacks."""
        ...

    async def wait_for_release(self, timeout: float) -> None:
        """Park after this attempt's plan-limit 429 until one of our requests completes (also
        counting completions while it was in flight), or ``timeout``."""
        ...


@runtime_checkable
class Store(Protocol):
    """The state behind adaptive concurrency, rate gates and pacing, and the retry budget.

    ``LocalStore`` keeps it in this process; ``resilience.redis.RedisStore`` shares it between
    every process using the same Redis namespace. Deadlines are ``time.monotonic()`` values.
    """

    @property
    def concurrency_limit(self) -> int:
        """The current adaptive concurrency limit."""
        ...

    async def admit(self, origin: str, deadline: float | None) -> Admission:
        """Wait at ``origin``'s rate gate and pacer, then for a concurrency permit; the handle
        of the admitted attempt.

        Raises :class:`DeadlineExceeded` without waiting when the gate stays closed past the
        deadline, or when no permit comes before it.
        """
        ...

    def try_admit(self, origin: str) -> Admission | None:
        """The handle at once, without an await, when nothing needs a wait (gate open, no
        pacing, a permit free); None: call :meth:`admit`. As concurrency-limits'
        ``Limiter.acquire()``: the happy path costs no coroutine and no event-loop round trip."""
        ...

    def deposit_request(self) -> None:
        """Count a new logical request in the retry budget."""
        ...

    async def try_retry(self) -> bool:
        """Withdraw one retry from the budget; False when it is spent."""
        ...


def check_concurrency(max_concurrency: int | None, initial_concurrency: int) -> None:
    """Validate a store's concurrency settings (shared by every store)."""
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
    ):
        raise TypeError(f"max_concurrency must be an int or None, got {max_concurrency!r}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
    if isinstance(initial_concurrency, bool) or not isinstance(initial_concurrency, int):
        raise TypeError(f"initial_concurrency must be an int, got {initial_concurrency!r}")
    if initial_concurrency < 1:
        raise ValueError(f"initial_concurrency must be >= 1, got {initial_concurrency!r}")


MAX_IDLE_ORIGINS: Final = 1024
"""Origins whose state a store keeps while they are idle (least recently used beyond are
forgotten). An origin with a closed gate, pacing on, or a request in flight is never dropped."""

_EVICTION_SCAN: Final = 32  # oldest entries looked at per new origin: O(1) amortized


class _Origin:
    """One origin's state: its gate and pacer, the limiter of its scope, and how many
    attempts are between ``admit()`` and ``release()`` (they hold this state)."""

    __slots__ = ("limiter", "pacer", "scope", "users")

    def __init__(self, pacer: RatePacer, limiter: AdaptiveLimiter, scope: str) -> None:
        self.pacer = pacer
        self.limiter = limiter
        self.scope = scope
        self.users = 0

    def forgettable(self) -> bool:
        # A closed gate or pacing still matters; so does every attempt holding this state.
        return self.users == 0 and not self.pacer.active


def _origin_key(origin: object) -> str:
    if not isinstance(origin, str):
        raise TypeError(f"limit_groups keys must be origins (str), got {show(origin)}")
    url = URL(origin)
    if not url.absolute or url.scheme not in ("http", "https"):
        raise ValueError(f"limit_groups keys must be origins like 'https://host', got {origin!r}")
    return str(url.origin())


class LocalStore:
    """In-process limits, shared by every middleware (and session) that is given this object.

    Each origin (scheme, host, port) has its own adaptive concurrency limit, rate gate and
    pacer: a plan limit is the API's, so downloads from a storage host neither take its
    permits nor are cut by its 429s. ``limit_groups`` maps the origins of one API (several
    hosts, one plan) to a group name that shares one limit; ``shared_limit=True`` gives every
    origin one limit (0.1's behaviour). ``max_concurrency`` and ``initial_concurrency`` apply
    to each limit. The retry budget is the store's.

    The state of at most ``MAX_IDLE_ORIGINS`` idle origins is kept (least recently used beyond
    are forgotten, and start afresh if they come back); an origin whose gate is closed, whose
    pacing is on or that has a request in flight is never forgotten.
    Each origin also has its own circuit breaker (``circuit_breaker=None``: none).
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        initial_concurrency: int = 4,
        retry_budget: RetryBudgetSettings | None = DEFAULT_RETRY_BUDGET,
        limit_groups: Mapping[str, str] | None = None,
        shared_limit: bool = False,
        circuit_breaker: CircuitBreaker | None = DEFAULT_CIRCUIT_BREAKER,
    ) -> None:
        check_concurrency(max_concurrency, initial_concurrency)
        boolean("shared_limit", shared_limit)
        if limit_groups is not None and not isinstance(limit_groups, Mapping):
            raise TypeError(
                f"limit_groups must be a mapping of origin to name, got {show(limit_groups)}"
            )
        groups: dict[str, str] = {}
        for origin, name in (limit_groups or {}).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"limit_groups values must be non-empty str, got {show(name)}")
            groups[_origin_key(origin)] = "group:" + name
        if shared_limit and groups:
            raise ValueError("give limit_groups or shared_limit=True, not both")
        self._clock = time.monotonic
        self._ceiling, self._initial = max_concurrency, initial_concurrency
        self._groups = groups
        self._shared = shared_limit
        self.limiter = AdaptiveLimiter(ceiling=max_concurrency, initial=initial_concurrency)
        """The limiter of the first origin (or group) this store served: ``concurrency_limit``."""
        self._first_scope: str | None = None
        self._scopes: dict[str, AdaptiveLimiter] = {}
        self._states: OrderedDict[str, _Origin] = OrderedDict()
        self.budget = RetryBudget.from_settings(retry_budget)
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self.circuit = circuit_of(circuit_breaker, LocalBreakers)

    @property
    def concurrency_limit(self) -> int:
        """The limit of the first origin (or group) this store served, usually the API's; see
        :meth:`limit_of` for any other."""
        return self.limiter.limit

    def limit_of(self, origin: str) -> int:
        """The adaptive concurrency limit requests to ``origin`` meet now."""
        state = self._states.get(origin)
        if state is not None:
            return state.limiter.limit
        limiter = self._scopes.get(self._scope_of(origin))
        return limiter.limit if limiter is not None else self._initial_limit()

    def _initial_limit(self) -> int:
        return min(self._initial, self._ceiling or self._initial)

    def _scope_of(self, origin: str) -> str:
        if self._shared:
            return "*"
        return self._groups.get(origin, origin)

    def _state(self, origin: str) -> _Origin:
        state = self._states.get(origin)
        if state is not None:
            self._states.move_to_end(origin)
            return state
        scope = self._scope_of(origin)
        limiter = self._scopes.get(scope)
        if limiter is None:
            if self._first_scope is None:
                self._first_scope, limiter = scope, self.limiter
            else:
                limiter = AdaptiveLimiter(ceiling=self._ceiling, initial=self._initial)
            self._scopes[scope] = limiter
        state = self._states[origin] = _Origin(RatePacer(), limiter, scope)
        if len(self._states) > MAX_IDLE_ORIGINS:
            self._forget_idle()
        return state

    def _forget_idle(self) -> None:
        """Drop the least recently used origins that nothing depends on any more."""
        victims: list[str] = []
        wanted = min(len(self._states) - MAX_IDLE_ORIGINS, _EVICTION_SCAN)
        for origin, state in self._states.items():
            if len(victims) >= wanted:
                break
            if state.forgettable():
                victims.append(origin)
        for origin in victims:
            state = self._states.pop(origin)
            limiter = state.limiter
            if (
                state.scope == origin  # an origin's own scope; groups and "*" stay
                and limiter is not self.limiter
                and limiter.in_flight == 0
                and limiter.waiting == 0
            ):
                del self._scopes[state.scope]

    def pacer(self, origin: str) -> RatePacer:
        """``origin``'s rate gate and pacer."""
        return self._state(origin).pacer

    def _check_loop(self) -> None:
        """The limiter's waiters and the pacers' locks belong to one event loop: a permit freed
        on one loop never wakes a waiter on another. A second loop running at the same time
        is refused at its first request (one after another, as ``asyncio.run()`` twice, is
        fine: the first loop is gone)."""
        loop = asyncio.get_running_loop()
        owner = self._loop() if self._loop is not None else None
        if owner is loop:
            return
        if owner is not None and owner.is_running() and not owner.is_closed():
            raise RuntimeError(
                "this LocalStore (the limits of a ResilienceMiddleware) is in use by another "
                "running event loop; give each event loop (thread) its own middleware, or share "
                "limits across loops and processes with resilience.redis.RedisStore"
            )
        self._loop = weakref.ref(loop)

    async def admit(self, origin: str, deadline: float | None) -> Admission:
        if self.circuit is None:
            return await self._admit(origin, deadline)
        return await admit_through(self.circuit, origin, deadline, self._admit, _with_ticket)

    async def _admit(self, origin: str, deadline: float | None) -> _LocalAdmission:
        self._check_loop()
        state = self._state(origin)
        pacer, limiter = state.pacer, state.limiter
        state.users += 1  # from here to release(): this state may not be forgotten
        try:
            while True:
                seq = await self._wait_turn(pacer, deadline) if pacer.active else None
                permit = await self._acquire(limiter, deadline)
                if seq is None and pacer.active and pacer.delay() <= 0:
                    # Pacing or a quota started while we waited for the permit: take a turn.
                    seq = pacer.take()
                if (seq is not None and pacer.gate_wait() <= 0) or not pacer.active:
                    return _LocalAdmission(self, state, origin, permit, seq)
                # The gate closed, or pacing started, while we waited for the permit: do not
                # send past it; queue at the pacer first.
                if seq is not None:
                    pacer.untake()
                limiter.release(permit)
        except BaseException:
            state.users -= 1
            raise

    async def _wait_turn(self, pacer: RatePacer, deadline: float | None) -> int:
        """Queue at the gate and pacer; each turn's wait uses the rate as it is then. Returns
        the send's sequence number at the pacer."""
        # Without a deadline, a gate closed for longer than MAX_RETRY_AFTER fails fast, as the
        # answer that closed it did (_decide): a server cannot park every later request.
        horizon = deadline if deadline is not None else self._clock() + MAX_RETRY_AFTER
        with anyio.move_on_after(
            deadline - self._clock() if deadline is not None else math.inf
        ) as scope:
            async with pacer.turn:
                while (wait := pacer.delay()) > 0:
                    if self._clock() + wait > horizon:
                        raise DeadlineExceeded(
                            "the rate gate stays closed past the deadline"
                            if deadline is not None
                            else f"the rate gate stays closed for {wait:.0f} s"
                        )
                    await anyio.sleep(wait)
                seq = pacer.take()
        if scope.cancelled_caught:
            raise DeadlineExceeded("no turn at the rate gate before max_elapsed")
        return seq

    async def _acquire(self, limiter: AdaptiveLimiter, deadline: float | None) -> ConcurrencyPermit:
        permit = limiter.try_acquire()
        if permit is not None:
            return permit
        if deadline is None:
            return await limiter.acquire()
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise DeadlineExceeded("no concurrency permit before max_elapsed")
        with anyio.move_on_after(remaining):
            return await limiter.acquire()
        raise DeadlineExceeded("no concurrency permit before max_elapsed")

    def try_admit(self, origin: str) -> Admission | None:
        loop = self._loop
        if loop is None or loop() is not asyncio.get_running_loop():
            return None  # a new loop: admit() checks it
        state = self._states.get(origin)
        if state is None or state.pacer.active:
            return None  # a new origin, or its gate or pacer decides when we may send
        circuit = self.circuit
        ticket = None
        if circuit is not None and (ticket := circuit.try_pass(origin)) is None:
            return None  # the breaker holds, probes or ramps: admit() waits there
        permit = state.limiter.try_acquire()
        if permit is None:
            if circuit is not None and ticket is not None:
                circuit.abandon(ticket)
            return None
        self._states.move_to_end(origin)
        state.users += 1  # from here to release(): this state may not be forgotten
        return _LocalAdmission(self, state, origin, permit, None, ticket)

    def deposit_request(self) -> None:
        if self.budget is not None:
            self.budget.deposit()

    async def try_retry(self) -> bool:
        return self.budget is None or self.budget.try_withdraw()


class _LocalAdmission:
    """A :class:`LocalStore` admission: the permit, the pacing epoch it was sent in and, behind
    a breaker, the breaker's ticket (one object per attempt: no wrapper on the happy path)."""

    __slots__ = (
        "_origin",
        "_permit",
        "_rate_epoch",
        "_released",
        "_seq",
        "_state",
        "_store",
        "_ticket",
    )

    def __init__(
        self,
        store: LocalStore,
        state: _Origin,
        origin: str,
        permit: ConcurrencyPermit,
        seq: int | None = None,
        ticket: CircuitTicket | None = None,
    ) -> None:
        self._store = store
        self._state = state
        self._origin = origin
        self._permit = permit
        self._rate_epoch = state.pacer.epoch
        self._seq = seq  # the send's number at the pacer (None: sent unpaced)
        self._released = False
        self._ticket = ticket

    @property
    def limit(self) -> int:
        return self._permit.limit

    @property
    def held(self) -> float:
        """Seconds it waited unsent at the circuit breaker."""
        return self._ticket.held if self._ticket is not None else 0.0

    def release(self) -> None:
        self._state.limiter.release(self._permit)
        if not self._released:
            self._released = True
            self._state.users -= 1
            if self._seq is not None:  # a paced send ended: it is not in flight any more
                self._state.pacer.forget(self._seq)
        ticket = self._ticket
        if ticket is not None and not ticket.ended:  # reported: nothing left to abandon
            self._circuit().abandon(ticket)

    def _circuit(self) -> Circuit:
        circuit = self._store.circuit
        assert circuit is not None  # a ticket comes from the store's breakers
        return circuit

    def succeeded(self) -> bool:
        # The breaker first: its report is once per ticket (report() would do it otherwise).
        ticket, circuit = self._ticket, self._store.circuit
        if (
            ticket is not None
            and circuit is not None
            and not circuit.report_now(ticket, Tally.SUCCESS, None)
        ):
            return False
        self._state.limiter.on_success(self._permit)
        self._state.pacer.on_response(
            rate_limited=False, retry_after=None, epoch=self._rate_epoch, seq=self._seq
        )
        return True

    async def report(self, feedback: Feedback) -> None:
        signal, limiter = feedback.signal, self._state.limiter
        if signal is Signal.SUCCESS:
            limiter.on_success(self._permit)
        elif signal is Signal.CONCURRENCY:
            limiter.on_concurrency_exceeded(self._permit)
        pacer = self._state.pacer
        closed = pacer.on_response(
            rate_limited=signal is Signal.RATE,
            retry_after=feedback.gate,
            epoch=self._rate_epoch,
            quota=feedback.quota,
            seq=self._seq,
        )
        if closed:
            rate = pacer.rate
            emit(
                GATE_EVENT,
                "info",
                origin=self._origin,
                closed_for=round(pacer.delay(), 3),
                pace=round(rate, 2) if rate is not None and math.isfinite(rate) else None,
            )
        ticket = self._ticket
        if ticket is not None:
            await self._circuit().report(ticket, _TALLIES[signal], feedback.code)

    async def wait_for_release(self, timeout: float) -> None:
        await self._state.limiter.wait_for_release(timeout, since=self._permit)


def _with_ticket(
    inner: _LocalAdmission, circuit: Circuit, ticket: CircuitTicket
) -> _LocalAdmission:
    inner._ticket = ticket
    return inner


# ----------------------------------------------------------------------- the circuit breaker

_TALLIES: Final = {
    Signal.SUCCESS: Tally.SUCCESS,
    Signal.OTHER: Tally.SUCCESS,  # the server answered as designed (a caller error, a poll)
    Signal.FAILURE: Tally.FAILURE,
    Signal.CONCURRENCY: Tally.NEUTRAL,  # throttles are the server pacing us, not an outage
    Signal.RATE: Tally.NEUTRAL,
}


class CircuitAdmission:
    """An admission behind the origin's circuit breaker: the store's own, plus the breaker's
    ticket, reported with the answer and abandoned on a release without one."""

    __slots__ = ("_circuit", "_inner", "_ticket")

    def __init__(self, inner: Admission, circuit: Circuit, ticket: CircuitTicket) -> None:
        self._inner = inner
        self._circuit = circuit
        self._ticket = ticket

    @property
    def limit(self) -> int:
        return self._inner.limit

    @property
    def held(self) -> float:
        return self._ticket.held

    async def report(self, feedback: Feedback) -> None:
        await self._inner.report(feedback)
        await self._circuit.report(self._ticket, _TALLIES[feedback.signal], feedback.code)

    def succeeded(self) -> bool:
        # The breaker first: a shared one cannot record without an await, and then nothing
        # is recorded and report() does both (its breaker report is once per ticket).
        if not self._circuit.report_now(self._ticket, Tally.SUCCESS, None):
            return False
        return self._inner.succeeded()

    def release(self) -> None:
        self._inner.release()
        if not self._ticket.ended:  # reported: nothing left to abandon
            self._circuit.abandon(self._ticket)

    async def wait_for_release(self, timeout: float) -> None:
        await self._inner.wait_for_release(timeout)


_Inner = TypeVar("_Inner", bound=Admission)


async def admit_through(
    circuit: Circuit,
    origin: str,
    deadline: float | None,
    admit: Callable[[str, float | None], Awaitable[_Inner]],
    join: Callable[[_Inner, Circuit, CircuitTicket], Admission] = CircuitAdmission,
) -> Admission:
    """The breaker first (held there, no permit taken), then the store's own admission, then
    the breaker again: one that opened while the attempt waited for its permit still holds it
    (the permit goes back). ``join`` puts the ticket with the store's handle."""
    held = 0.0
    while True:
        held += await circuit.enter(origin, deadline)
        inner = await admit(origin, deadline)
        try:
            ticket = await circuit.commit(origin, deadline, held)
        except BaseException:
            inner.release()
            raise
        if ticket is not None:
            return join(inner, circuit, ticket)
        inner.release()


def circuit_of(
    settings: CircuitBreaker | None, rule: Callable[[CircuitBreaker], BreakerRule]
) -> Circuit | None:
    """A store's breakers from its ``circuit_breaker`` setting (validated here, once)."""
    if settings is None:
        return None
    if not isinstance(settings, CircuitBreaker):
        raise TypeError(
            f"circuit_breaker must be a CircuitBreaker or None, got {type(settings).__name__}"
        )
    return Circuit(rule(settings))
