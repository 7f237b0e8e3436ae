"""The fleet's circuit breakers: each origin's window and state in Redis, one probe per fleet.

The rule is ``resilience/_breaker.py``'s, run by ``scripts/breaker_admit.lua`` and
``scripts/breaker_record.lua`` on Redis's clock (``tests/test_breaker_redis.py`` runs one table of
cases through both). The half-open probe is a token with an expiry (``probe_timeout``) owned by
the ticket of the worker that sends it, so 50 processes send one probe, not 50. While Redis is
unreachable each worker uses its own in-process breakers, as the limits do.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .._breaker import Admit, BreakerState, CircuitBreaker, Hold, Pass, Refuse, Tally
from .._circuit import LocalBreakers
from ._connection import Unavailable
from ._keys import Keys

__all__ = ["SHARED_POLL", "SharedBreakers"]

SHARED_POLL: Final = 0.02
"""Seconds a view of the shared state is trusted: while the fleet's breaker is closed (and its
window is not all outage failures), this process admits without asking Redis, and looks again
this often. The
first request held in this process looks as often (the others wait behind it)."""

FLUSH_EVERY: Final = 1.0
"""Successes are counted in Redis in batches, at least this often (and with every failure):
the happy path costs no round trip per request."""

_TALLY_ARG: Final = {Tally.SUCCESS: "s", Tally.FAILURE: "f", Tally.NEUTRAL: "n"}
_UNCOUNTED: Final = ""  # the token of an attempt admitted from the view (not in the flight set)

Run = Callable[[str, str, Sequence[str], Sequence[object]], Awaitable[Any]]
"""Runs one named script: (kind, script, keys, args) -> reply; raises ``Unavailable``."""


@dataclass(slots=True)
class _View:
    """One origin's shared breaker as last seen here, and the successes not yet counted."""

    state: BreakerState = BreakerState.CLOSED
    probe_at: float = 0.0
    last: str | None = None
    epoch: int = 0
    trusted: bool = False  # closed, and its window is not all outage failures
    seen_at: float = -math.inf
    successes: int = 0
    flushed_at: float = field(default_factory=time.monotonic)


class SharedBreakers:
    """A :class:`~resilience._circuit.BreakerRule` whose state is in Redis."""

    poll: Final[float | None] = SHARED_POLL

    def __init__(
        self,
        settings: CircuitBreaker,
        keys: Keys,
        run: Run,
        *,
        shared: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        state_ms: int,
        trust_views: bool = True,
    ) -> None:
        self.settings = settings
        self._trust_views = trust_views  # False: every admit asks Redis (the rule's tests)
        self.local: Final = LocalBreakers(settings)
        """This process's breakers, used while Redis is unreachable."""
        self._keys = keys
        self._run = run
        self._shared = shared
        self._spawn = spawn
        self._worker = uuid.uuid4().hex[:12]
        self._count = itertools.count()
        self._views: dict[str, _View] = {}
        self._peeks: dict[str, asyncio.Lock] = {}
        self._peek_loop: asyncio.AbstractEventLoop | None = None
        self._args = [
            settings.failure_ratio,
            settings.minimum_throughput,
            settings.sampling_duration * 1000,
            settings.break_duration * 1000,
            settings.break_growth,
            settings.max_break_duration * 1000,
            settings.probe_timeout * 1000,
            state_ms,
        ]

    def _view(self, origin: str) -> _View:
        view = self._views.get(origin)
        if view is None:
            view = self._views[origin] = _View()
        return view

    async def admit(self, origin: str, deadline: float | None, *, commit: bool) -> Admit:
        if not self._shared():
            return await self.local.admit(origin, deadline, commit=commit)
        view = self._view(origin)
        # A trusted view (closed, not only failures in the window) admits without a round
        # trip: a look trusts it for SHARED_POLL, a commit (made once the permit is held, just
        # before the send) always, so no round trip comes between a permit and its send.
        if view.trusted and commit:
            return Pass(probe=False, epoch=view.epoch, token=_UNCOUNTED)
        if commit:
            return await self._ask(origin, view, deadline, commit=True)
        answer = self._from_view(view, deadline)
        if answer is not None:
            return answer
        # One look per origin at a time: the others use what it saw (a burst of requests
        # costs one round trip, not one each).
        async with self._peek_lock(origin):
            answer = self._from_view(view, deadline)
            if answer is not None:
                return answer
            return await self._ask(origin, view, deadline, commit=False)

    def _from_view(self, view: _View, deadline: float | None) -> Admit | None:
        """The answer a fresh view gives without Redis, or None when Redis must be asked."""
        if time.monotonic() - view.seen_at >= SHARED_POLL:
            return None
        if view.trusted:
            return Pass(probe=False, epoch=view.epoch, token=_UNCOUNTED)
        if view.state is BreakerState.OPEN and math.isfinite(view.probe_at):
            if deadline is not None and deadline <= view.probe_at:
                return Refuse(view.probe_at, view.last)
            if time.monotonic() < view.probe_at:
                return Hold(view.probe_at)
        return None

    def _peek_lock(self, origin: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._peek_loop is not loop:  # locks of another (maybe finished) loop are no use
            self._peek_loop, self._peeks = loop, {}
        lock = self._peeks.get(origin)
        if lock is None:
            lock = self._peeks[origin] = asyncio.Lock()
        return lock

    async def _ask(
        self, origin: str, view: _View, deadline: float | None, *, commit: bool
    ) -> Admit:
        token = f"{self._worker}:{next(self._count)}"
        now = time.monotonic()
        deadline_in = -1.0 if deadline is None else max(0.0, (deadline - now) * 1000)
        args = [token, deadline_in, self.settings.probe_timeout * 1000, int(commit), *self._args]
        try:
            reply = await self._run(
                "breaker", "breaker_admit", self._keys.breaker_keys(origin), args
            )
        except Unavailable:
            return await self.local.admit(origin, deadline, commit=commit)
        kind, probe, epoch, wait_ms = (int(x) for x in reply[:4])
        now = time.monotonic()
        until = math.inf if wait_ms < 0 else now + wait_ms / 1000
        self._note(view, reply[4], until, reply[5], epoch=epoch)
        view.trusted = self._trust_views and view.state is BreakerState.CLOSED and not int(reply[6])
        if kind == 0:
            return Pass(probe=bool(probe), epoch=epoch, token=token if commit else _UNCOUNTED)
        if kind == 2:
            return Refuse(until, _text(reply[5]))
        return Hold(until)

    async def record(self, origin: str, ticket: Pass, tally: Tally, code: str | None) -> bool:
        if ticket.token is None:  # admitted by the local breakers during a fallback
            return await self.local.record(origin, ticket, tally, code)
        view = self._view(origin)
        if ticket.token == _UNCOUNTED and tally is not Tally.FAILURE:
            if tally is Tally.SUCCESS:
                view.successes += 1
                now = time.monotonic()
                if now - view.flushed_at >= FLUSH_EVERY:
                    # Due from now: the successes ending before this flush runs join it
                    # (a burst of them started one flush each).
                    view.flushed_at = now
                    self._spawn(self._background(origin, ticket, "n"))
            return False
        return await self._record(origin, ticket, _TALLY_ARG[tally], code)

    def abandon(self, origin: str, ticket: Pass) -> bool:
        if ticket.token is None:
            return self.local.abandon(origin, ticket)
        if ticket.token != _UNCOUNTED:
            # Free the probe token (or the place in flight) now, not at its expiry.
            self._spawn(self._background(origin, ticket, "a"))
        return False

    def in_process(self, origin: str) -> None:
        return None  # the fleet's state is in Redis: admit() asks it

    def state(self, origin: str) -> tuple[BreakerState, float, str | None]:
        if not self._shared():
            return self.local.state(origin)
        view = self._view(origin)
        return view.state, view.probe_at, view.last

    async def _background(self, origin: str, ticket: Pass, tally: str) -> None:
        await self._record(origin, ticket, tally, None)

    async def _record(self, origin: str, ticket: Pass, tally: str, code: str | None) -> bool:
        view = self._view(origin)
        successes, view.successes = view.successes, 0
        view.flushed_at = time.monotonic()
        args = [
            ticket.token,
            int(ticket.probe),
            ticket.epoch,
            tally,
            code or "",
            successes,
            *self._args,
        ]
        try:
            reply = await self._run(
                "breaker", "breaker_record", self._keys.breaker_keys(origin), args
            )
        except Unavailable:
            return False
        wait_ms = int(reply[2])
        until = time.monotonic() + wait_ms / 1000 if wait_ms >= 0 else 0.0
        self._note(view, reply[1], until, reply[3], epoch=view.epoch)
        if view.state is not BreakerState.CLOSED or int(reply[4]):
            view.trusted = False  # opened, or nothing but failures so far: ask again
        return bool(int(reply[0]))

    def _note(
        self, view: _View, state: object, probe_at: float, last: object, *, epoch: int
    ) -> None:
        view.state = BreakerState(_text(state) or "closed")
        view.probe_at = probe_at
        view.last = _text(last)
        view.epoch = epoch
        view.seen_at = time.monotonic()


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode()
    return str(value) if value else None
