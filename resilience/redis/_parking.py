"""Parking and wake-ups: this process's waiters for a permit, woken by the fleet's releases.

Every script that frees permits pushes one token per freed permit onto the namespace's wake-up
list (capped at the limit). One task per process (``Parking.waker``) blocks on that list and
hands each token to the longest-waiting local waiter, so waiters wake when a permit frees, not
on a timer; a parked waiter still asks again after ``PARK_POLL`` in case a token was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

__all__ = ["PARK_POLL", "Parking"]

PARK_POLL: Final = 2.0
"""A parked waiter asks Redis again at least this often (seconds), in case of lost wake-ups."""


class _Waiter:
    __slots__ = ("event", "woken")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.woken = False


class Parking:
    """This process's queue of requests waiting for a permit, and what it knows of the fleet."""

    def __init__(self, initial_free: int) -> None:
        self._waiters: deque[_Waiter] = deque()
        self.acquiring = 0
        """Acquire calls on their way to Redis."""
        self.free_hint = initial_free
        """Free permits in the fleet, as last seen."""

    def reset(self) -> None:
        """A new event loop: the old loop's waiters are gone."""
        self._waiters.clear()
        self.acquiring = 0

    def looks_full(self) -> bool:
        """The fleet looked full a moment ago: queue behind this process's waiters."""
        return self.parked() or self.acquiring >= max(1, self.free_hint)

    def parked(self) -> bool:
        return any(not w.event.is_set() for w in self._waiters)

    async def park(self, timeout: float, start_waker: Callable[[], None]) -> None:
        """Wait for a wake-up token (a permit freed somewhere), or ``timeout``."""
        waiter = _Waiter()
        self._waiters.append(waiter)
        start_waker()
        try:
            with anyio.move_on_after(timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.woken:
                self.wake_one()  # cancelled with a wake-up in hand: pass it on
            raise
        finally:
            if not waiter.event.is_set():
                waiter.event.set()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def wake_one(self) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.event.is_set():
                waiter.woken = True
                waiter.event.set()
                return True
        return False

    def wake_all(self) -> None:
        while self.wake_one():
            pass

    def wake_for_room(self, free: int) -> None:
        """A grant saw ``free`` permits left: let as many queued requests ask."""
        self.free_hint = free
        for _ in range(free - self.acquiring):
            if not self.wake_one():
                break

    def release_all(self) -> None:
        """Closing: every waiter goes (and asks again, finding the store closed)."""
        for waiter in self._waiters:
            waiter.event.set()
        self._waiters.clear()

    async def waker(
        self,
        *,
        pop: Callable[[], Awaitable[object]],
        push_back: Callable[[], Awaitable[object]],
        shared: Callable[[], bool],
        count: Callable[[], None],
        on_trouble: Callable[[BaseException], None],
    ) -> None:
        """One blocking pop of the wake-up list at a time, for all of this process's waiters."""
        while shared() and self.parked():
            count()
            try:
                got = await pop()
                if got is not None and not self.wake_one():
                    # Our waiters left meanwhile: give the token back to the fleet.
                    count()
                    await push_back()
            except Exception as exc:  # see Connections.run: all of it is Redis trouble
                on_trouble(exc)
                return
