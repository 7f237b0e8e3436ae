"""The breaker enforced: requests wait here, unsent and holding no permit, while an origin's
breaker is open; they go out one probe at a time, then gradually (slow start).

The rule is ``_breaker``'s; where its state lives is a :class:`BreakerRule` (this process, or
Redis for a fleet). Waiting requests queue per origin and are woken in order, as many as may
go, so 2,000 held requests cost one wake-up each, not one per state change each.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Protocol

import anyio

from ._breaker import Admit, Breaker, BreakerState, CircuitBreaker, Hold, Pass, Ramp, Refuse, Tally
from ._errors import CircuitOpen, DeadlineExceeded
from ._events import emit
from ._pacing import Clock

__all__ = ["CIRCUIT_EVENT", "BreakerRule", "Circuit", "CircuitTicket", "LocalBreakers"]

CIRCUIT_EVENT: Final = "resilience.circuit"
"""The ``event`` value of the line logged when an origin's breaker changes state."""


class BreakerRule(Protocol):
    """Where the breakers' state lives. Times are this process's ``time.monotonic()``."""

    @property
    def poll(self) -> float | None:
        """How often the first held request asks again by itself (None: state changes only
        here, and every change wakes the waiters)."""
        ...

    async def admit(self, origin: str, deadline: float | None, *, commit: bool) -> Admit:
        """``Breaker.admit``: ``commit=False`` only looks."""
        ...

    async def record(self, origin: str, ticket: Pass, tally: Tally, code: str | None) -> bool:
        """Feed one attempt's end in; True when the state changed."""
        ...

    def abandon(self, origin: str, ticket: Pass) -> bool:
        """The attempt ended unanswered; synchronous (it runs from ``release``)."""
        ...

    def in_process(self, origin: str) -> Breaker | None:
        """``origin``'s breaker when it decides in this process, without an await (the happy
        path asks it directly); None when a shared rule must ask Redis."""
        ...

    def state(self, origin: str) -> tuple[BreakerState, float, str | None]:
        """(state, when it probes, the last failure's code) as last seen here."""
        ...


class LocalBreakers:
    """Breakers in this process, one per origin."""

    poll: Final[float | None] = None

    def __init__(self, settings: CircuitBreaker, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    def breaker(self, origin: str) -> Breaker:
        breaker = self._breakers.get(origin)
        if breaker is None:
            breaker = self._breakers[origin] = Breaker(self.settings)
        return breaker

    async def admit(self, origin: str, deadline: float | None, *, commit: bool) -> Admit:
        return self.breaker(origin).admit(self._clock(), deadline, commit=commit)

    async def record(self, origin: str, ticket: Pass, tally: Tally, code: str | None) -> bool:
        return self.breaker(origin).record(ticket, tally, self._clock(), code)

    def abandon(self, origin: str, ticket: Pass) -> bool:
        return self.breaker(origin).abandon(ticket)

    def in_process(self, origin: str) -> Breaker:
        return self.breaker(origin)

    def state(self, origin: str) -> tuple[BreakerState, float, str | None]:
        breaker = self.breaker(origin)
        return breaker.state, breaker.probe_at, breaker.last_code


@dataclass(slots=True)
class _Origin:
    breaker: Breaker | None  # the rule's breaker when it decides here (the happy path)
    ramp: Ramp = field(default_factory=Ramp)
    waiters: deque[anyio.Event] = field(default_factory=deque)
    state: BreakerState = BreakerState.CLOSED  # as last seen here


@dataclass(slots=True, eq=False)
class CircuitTicket:
    """One attempt the breaker let through; ended exactly once (``report`` or ``abandon``)."""

    origin: str
    place: _Origin  # the origin's state here, looked up once
    decision: Pass
    held: float  # seconds it waited unsent at the breaker (0.0: not held)
    ended: bool = False


class Circuit:
    """Per-origin breakers in front of the limits: hold, refuse, probe, ramp."""

    def __init__(self, rule: BreakerRule, clock: Clock = time.monotonic) -> None:
        self.rule = rule
        self._clock = clock
        self._origins: dict[str, _Origin] = {}

    def _origin(self, origin: str) -> _Origin:
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _Origin(self.rule.in_process(origin))
        return state

    async def enter(self, origin: str, deadline: float | None) -> float:
        """Wait until ``origin``'s breaker would let an attempt go; the seconds waited.

        Nothing is taken: the attempt then waits for its permit and :meth:`commit` decides,
        so a breaker that opened meanwhile still holds it. Raises :class:`CircuitOpen` at once
        when the breaker stays open past ``deadline`` (or when the deadline passes while
        held), :class:`DeadlineExceeded` when the slow start after a recovery (or a suspected
        outage) has no room for it before the deadline.
        """
        here = self._origin(origin)
        began = self._clock()
        waits = 0
        while True:
            decision = await self.rule.admit(origin, deadline, commit=False)
            if isinstance(decision, Pass):
                if decision.probe or here.state is not BreakerState.CLOSED:
                    self._note(origin, here)
                if decision.probe or here.ramp.may_send():
                    if not waits:
                        return 0.0
                    if here.waiters:
                        self._wake(here, 1)  # pass the turn on: the next may fit too
                    return self._clock() - began
                until = math.inf  # ramping: a slot frees when one of ours ends
            elif isinstance(decision, Refuse):
                self._note(origin, here)
                raise self._open_error(origin, decision.probe_at, decision.last_code)
            else:
                self._note(origin, here)
                until = decision.until
            await self._wait(origin, here, until, deadline, front=waits > 0)
            waits += 1

    async def commit(
        self, origin: str, deadline: float | None, held: float
    ) -> CircuitTicket | None:
        """The attempt holds its permit: take its place at the breaker (the probe slot, a
        place in the slow start), or None when it must go back and wait (permit released)."""
        here = self._origin(origin)
        decision = await self.rule.admit(origin, deadline, commit=True)
        if isinstance(decision, Refuse):
            self._note(origin, here)
            raise self._open_error(origin, decision.probe_at, decision.last_code)
        if isinstance(decision, Hold):
            self._note(origin, here)
            return None
        if not decision.probe and not here.ramp.may_send():
            self.rule.abandon(origin, decision)
            return None
        here.ramp.sent()
        return CircuitTicket(origin, here, decision, held)

    async def _wait(
        self,
        origin: str,
        here: _Origin,
        until: float,
        deadline: float | None,
        *,
        front: bool,
    ) -> None:
        now = self._clock()
        if deadline is not None and now >= deadline:
            state, probe_at, last_code = self.rule.state(origin)
            if state is BreakerState.CLOSED:  # held for room (slow start, suspected outage)
                raise DeadlineExceeded("no room at the circuit breaker before max_elapsed")
            raise self._open_error(origin, probe_at, last_code)
        end = min(until, deadline if deadline is not None else math.inf)
        poll = self.rule.poll
        if poll is not None and (front or not here.waiters):
            end = min(end, now + poll)  # the first in line (or back at its head) watches
        event = anyio.Event()
        if front:
            here.waiters.appendleft(event)  # woken before and still no room: keep its place
        else:
            here.waiters.append(event)
        try:
            with anyio.move_on_after(max(0.0, end - now) if math.isfinite(end) else math.inf):
                await event.wait()
        except BaseException:
            if event.is_set():
                self._wake(here, 1)  # woken, then cancelled: the turn goes to the next
            raise
        finally:
            if not event.is_set():
                here.waiters.remove(event)

    def try_pass(self, origin: str) -> CircuitTicket | None:
        """A ticket at once when ``origin``'s breaker is closed, decides here, nobody is held
        and no slow start is on; None: go through :meth:`enter` and :meth:`commit`."""
        here = self._origins.get(origin)
        if (
            here is None
            or (breaker := here.breaker) is None
            or here.waiters
            or here.state is not BreakerState.CLOSED
            or here.ramp.cap is not None  # the slow start after an outage: enter() paces it
        ):
            return None
        now = self._clock()
        decision = breaker.pass_now(now)
        if decision is None:
            admitted = breaker.admit(now, None)
            if not isinstance(admitted, Pass):
                return None  # held (a suspected outage): the slow path
            if admitted.probe:  # the breaker moved on since we looked: not the happy path
                breaker.abandon(admitted)
                return None
            decision = admitted
        here.ramp.sent()
        return CircuitTicket(origin, here, decision, 0.0)

    def report_now(self, ticket: CircuitTicket, tally: Tally, code: str | None) -> bool:
        """:meth:`report` without an await; False when the rule needs one (nothing done)."""
        if ticket.ended:
            return True
        here = ticket.place
        breaker = here.breaker
        if breaker is None:
            return False
        ticket.ended = True
        changed = breaker.record(ticket.decision, tally, self._clock(), code)
        grew = here.ramp.ended(tally)
        if changed or grew:
            self._after(ticket.origin, here, changed=changed, grew=grew)
        return True

    async def report(self, ticket: CircuitTicket, tally: Tally, code: str | None) -> None:
        if ticket.ended:
            return
        ticket.ended = True
        here = ticket.place
        grew = here.ramp.ended(tally)
        changed = await self.rule.record(ticket.origin, ticket.decision, tally, code)
        self._after(ticket.origin, here, changed=changed, grew=grew)

    def abandon(self, ticket: CircuitTicket) -> None:
        """The attempt ended without an answer worth counting; idempotent, synchronous."""
        if ticket.ended:
            return
        ticket.ended = True
        here = ticket.place
        grew = here.ramp.ended(None)
        changed = self.rule.abandon(ticket.origin, ticket.decision)
        self._after(ticket.origin, here, changed=changed, grew=grew)

    def _after(self, origin: str, here: _Origin, *, changed: bool, grew: bool) -> None:
        if changed:
            self._note(origin, here)
            # Opened: every held request looks again (those that cannot outlast the new break
            # fail now). Closed or a probe slot freed: the first in line goes.
            if here.state is BreakerState.OPEN:
                self._wake(here, len(here.waiters))
            else:
                self._wake(here, 1)
        elif grew:
            self._wake(here, 1 if here.ramp.cap is not None else len(here.waiters))

    def _wake(self, here: _Origin, n: int) -> None:
        for _ in range(min(n, len(here.waiters))):
            here.waiters.popleft().set()

    def _note(self, origin: str, here: _Origin) -> None:
        state, probe_at, last_code = self.rule.state(origin)
        if state is here.state:
            return
        if state is BreakerState.CLOSED:
            here.ramp.start()  # recovered: what was held goes out gradually
        here.state = state
        emit(
            CIRCUIT_EVENT,
            "warning" if state is BreakerState.OPEN else "info",
            origin=origin,
            state=state.value,
            probe_in=round(max(0.0, probe_at - self._clock()), 3)
            if state is BreakerState.OPEN
            else None,
            last_code=last_code,
        )

    def _open_error(self, origin: str, probe_at: float, last_code: str | None) -> CircuitOpen:
        return CircuitOpen(
            origin=origin, retry_in=max(0.0, probe_at - self._clock()), last_code=last_code
        )
