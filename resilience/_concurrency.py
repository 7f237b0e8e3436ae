"""The adaptive concurrency limit: loss-based AIMD over an in-flight count with FIFO waiters.

A free slot is taken with no await and no event-loop round trip (the common case costs a dict
insert); only a request that finds the limit reached queues, on an anyio ``Event``. Slots
handed to a waiter are reserved until it runs, so a newcomer cannot take them first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import anyio

from ._events import LIMIT_EVENT, emit

__all__ = ["AdaptiveLimiter", "ConcurrencyPermit", "cut_limit", "grow_limit"]


def grow_limit(
    limit: int, *, slow_start: bool, growth: float, in_flight: int, ceiling: int | None
) -> tuple[int, float]:
    """AIMD's additive step for one success: the new (limit, growth).

    The pure rule, also run by the fleet's Lua scripts (``resilience/redis/scripts``): +1 in
    slow start, else +1/limit, only while the limit is used (in flight * 2 >= limit, as
    Netflix's AIMDLimit) and below the ceiling.
    """
    if ceiling is not None and limit >= ceiling:
        return limit, growth
    if in_flight * 2 < limit:
        return limit, growth  # not using what we have: no evidence the server takes more
    if slow_start:
        return limit + 1, growth
    growth += 1.0 / limit
    if growth >= 1.0:
        return limit + 1, 0.0
    return limit, growth


def cut_limit(limit: int, older: int, floor: int = 1) -> int:
    """AIMD's decrease after a plan-limit rejection: to the ``older`` requests in flight when
    the rejected one was sent, at least by one and at most by half (the oldest request may
    reach the server last, and ``older`` then undercounts what the server admitted), never
    below ``floor``."""
    return max(floor, min(limit - 1, max(older, limit // 2)))


@dataclass(slots=True, eq=False)
class ConcurrencyPermit:
    """One slot of the adaptive limiter, held while a request is on the wire."""

    seq: int  # send order, to count what was in flight before this request
    epoch: int  # the limiter's cut counter when the slot was taken
    limit: int  # the limit when the slot was taken (for logs)
    released: bool = False
    releases_seen: int = 0  # the limiter's release counter when its 429 was reported


class AdaptiveLimiter:
    """Loss-based AIMD concurrency limit.

    * Starts at ``initial`` and doubles per round trip while the server accepts (slow start).
    * A ``429 GENERATION_CONCURRENCY_EXCEEDED`` cuts the limit to the number of our requests
      that were already in flight when the rejected one was sent (what the server had
      admitted), at least by one and at most by half; only requests sent after the previous
      cut may cut again, so a burst of 429s from one round trip cuts once.
    * After the first cut, successes grow the limit by one per round trip (``1/limit`` each),
      only while the limit is actually used (in flight * 2 >= limit, as Netflix's AIMDLimit).
    * Never below ``floor`` (>= 1) nor above ``ceiling`` (None: no ceiling).
    """

    def __init__(
        self,
        *,
        ceiling: int | None = None,
        initial: int = 4,
        floor: int = 1,
        name: str = "default",
    ) -> None:
        if floor < 1:
            raise ValueError(f"concurrency floor must be >= 1, got {floor!r}")
        if ceiling is not None and ceiling < floor:
            raise ValueError(f"max_concurrency must be >= {floor}, got {ceiling!r}")
        if initial < floor:
            raise ValueError(f"initial concurrency must be >= {floor}, got {initial!r}")
        self.ceiling = ceiling
        self.floor = floor
        self.name = name
        start = min(initial, ceiling) if ceiling is not None else initial
        self._limit = start
        # Tasks waiting for a slot, first come first served; a slot handed to one is counted
        # in _reserved until that task runs.
        self._waiters: deque[anyio.Event] = deque()
        self._reserved = 0
        self._epoch = 0
        self._seq = 0
        self._slow_start = True
        self._growth = 0.0
        self._in_flight: dict[ConcurrencyPermit, int] = {}
        self._parked: deque[anyio.Event] = deque()
        self._releases = 0

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        return len(self._waiters) + len(self._parked)

    def try_acquire(self) -> ConcurrencyPermit | None:
        """A permit if one is free now and nobody queues before us, else None."""
        if self._waiters or len(self._in_flight) + self._reserved >= self._limit:
            return None
        self._seq = seq = self._seq + 1  # as _admitted(), without the call (the happy path)
        permit = ConcurrencyPermit(seq, self._epoch, self._limit)
        self._in_flight[permit] = seq
        return permit

    async def acquire(self) -> ConcurrencyPermit:
        permit = self.try_acquire()
        if permit is not None:
            return permit
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # handed a slot, then cancelled: pass it on
                self._reserved -= 1
                self._hand_over()
            else:
                self._waiters.remove(event)
            raise
        self._reserved -= 1
        return self._admitted()

    def _admitted(self) -> ConcurrencyPermit:
        self._seq += 1
        permit = ConcurrencyPermit(self._seq, self._epoch, self._limit)
        self._in_flight[permit] = permit.seq
        return permit

    def _hand_over(self) -> None:
        """Give free slots to the longest-waiting tasks."""
        while self._waiters and len(self._in_flight) + self._reserved < self._limit:
            self._reserved += 1
            self._waiters.popleft().set()

    def release(self, permit: ConcurrencyPermit) -> None:
        """Give the slot back; idempotent, safe from sync callbacks and ``finally`` blocks."""
        if permit.released:
            return
        permit.released = True
        self._releases += 1
        self._in_flight.pop(permit, None)
        if self._waiters:
            self._hand_over()
        if self._parked:
            self._parked.popleft().set()

    async def wait_for_release(
        self, timeout: float, since: ConcurrencyPermit | None = None
    ) -> None:
        """Park until some request of ours completes (or ``timeout`` passes).

        A request turned away by the plan limit resends when a slot frees, not on a timer; the
        timeout only covers the case where none of ours is in flight (another client holds
        the plan's slots). With ``since`` (the rejected request's own permit), a completion
        between its 429 being reported and the park counts: no wake-up is missed.
        """
        # Our own release is one of them: any other means a slot freed since we were sent.
        if since is not None and self._releases - since.releases_seen > 1:
            return
        event = anyio.Event()
        self._parked.append(event)
        try:
            with anyio.move_on_after(max(timeout, 0.0)):
                await event.wait()
        finally:
            if not event.is_set():
                self._parked.remove(event)

    def on_success(self, permit: ConcurrencyPermit) -> None:
        limit, self._growth = grow_limit(
            self._limit,
            slow_start=self._slow_start,
            growth=self._growth,
            in_flight=len(self._in_flight),
            ceiling=self.ceiling,
        )
        if limit != self._limit:
            self._set_limit(limit, "slow_start" if self._slow_start else "grow")

    def on_concurrency_exceeded(self, permit: ConcurrencyPermit) -> None:
        # Completions from now on may wake it (see wait_for_release); earlier ones freed slots
        # that others have taken since.
        permit.releases_seen = self._releases
        if permit.epoch != self._epoch:
            return  # sent before the last cut: that cut already accounted for it
        # A snapshot: a connection callback may release a permit while we count.
        older = sum(1 for seq in list(self._in_flight.values()) if seq < permit.seq)
        self._slow_start = False
        self._growth = 0.0
        self._epoch += 1
        self._set_limit(cut_limit(self._limit, older, self.floor), "cut")

    def _set_limit(self, value: int, why: str) -> None:
        value = max(self.floor, value)
        if self.ceiling is not None:
            value = min(self.ceiling, value)
        if value == self._limit:
            return
        old, self._limit = self._limit, value
        if value > old:
            self._hand_over()
        # Cuts matter to an operator; growth happens every round trip and stays at DEBUG.
        emit(
            LIMIT_EVENT,
            "info" if value < old else "debug",
            limiter=self.name,
            old=old,
            new=value,
            why=why,
        )
