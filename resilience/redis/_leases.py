"""Leases: the shared permits this process holds, returns and renews.

A permit is a lease in the namespace's ``permits`` set. A finished lease is not returned at
once: it waits in ``releasing`` for the next acquire of this process to carry it (no extra
round trip), and a background flush sends what no acquire took. A lease whose fate is unknown
(a call that failed or was cancelled, a fallback) becomes an orphan, returned once Redis
answers again; every script is idempotent, so returning one twice costs nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ._connection import Unavailable
from ._keys import Keys
from ._settings import StoreSettings

__all__ = ["Lease", "Leases", "Runner"]


class Runner(Protocol):
    """Runs one of the store's scripts by name (see ``RedisStore._run``)."""

    def __call__(
        self,
        kind: str,
        script: str,
        keys: Sequence[str],
        args: Sequence[object],
        *,
        idempotent: bool = True,
    ) -> Awaitable[Any]: ...


class Lease:
    """One shared permit."""

    __slots__ = ("epoch", "id", "local", "released")

    def __init__(self, lease_id: str, epoch: int) -> None:
        self.id = lease_id
        self.epoch = epoch  # the limit's cut counter when the permit was taken
        self.released = False
        # During a fallback, the local permit this request, still in flight, also holds
        self.local: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Lease({self.id!r}, epoch={self.epoch})"


class Leases:
    def __init__(
        self,
        worker: str,
        settings: StoreSettings,
        keys: Keys,
        run: Runner,
        *,
        on_limit: Callable[[int, int, str], None],
        on_workers: Callable[[int], None],
    ) -> None:
        self.worker = worker
        self._ids = itertools.count(1)
        self._settings = settings
        self._keys = keys
        self._run = run
        self._on_limit = on_limit
        self._on_workers = on_workers
        self.held: dict[str, Lease] = {}
        # lease -> (origin, answer), unsent; an answer that announced a quota is a string
        # (see SharedAdmission.report)
        self.releasing: dict[str, tuple[str, int | str]] = {}
        self.orphans: set[str] = set()
        self.flush_pending = False

    def new_id(self) -> str:
        return f"{self.worker}:{next(self._ids)}"

    def grant(self, lease: Lease) -> None:
        self.held[lease.id] = lease

    def finish(self, lease: Lease, origin: str, answer: int | str) -> None:
        """``lease``'s request is over: it waits to be returned with ``answer``."""
        self.held.pop(lease.id, None)
        self.releasing[lease.id] = (origin, answer)

    def orphan(self, *lease_ids: str) -> None:
        self.orphans.update(lease_ids)

    def orphan_unsent(self) -> None:
        """Redis failed: what waited to be returned is now of unknown fate."""
        self.orphans |= self.releasing.keys()
        self.releasing.clear()

    def mark_all_released(self) -> None:
        for lease in self.held.values():
            lease.released = True
            if lease.local is not None:  # and the fallback's permit it held goes back too
                lease.local()
                lease.local = None

    def orphan_everything(self) -> None:
        """Closing: every lease held or waiting goes back as an orphan."""
        self.orphans |= self.held.keys() | self.releasing.keys()
        self.held.clear()
        self.releasing.clear()

    def take_releases(self, origin: str | None) -> list[str | int]:
        """Unsent releases (to ``origin``, or all) as flat (lease, answer) pairs."""
        pairs: list[str | int] = []
        for lease_id, (lease_origin, answer) in list(self.releasing.items()):
            if origin is None or lease_origin == origin:
                del self.releasing[lease_id]
                pairs += (lease_id, answer)
        return pairs

    async def flush(self, shared: Callable[[], bool]) -> None:
        """Send the releases no acquire has carried, one call per origin."""
        self.flush_pending = False
        while self.releasing and shared():
            origin = next(iter(self.releasing.values()))[0]
            await self.release(origin, self.take_releases(origin))

    async def release(self, origin: str, pairs: list[str | int]) -> None:
        try:
            reply = await self._run(
                "release",
                "release",
                self._keys.limit_keys(origin),
                [*self._settings.limit_args, *pairs],
            )
        except BaseException as exc:
            self.orphans.update(str(p) for p in pairs[::2])
            if isinstance(exc, Unavailable):
                return
            raise
        why = "slow_start" if int(reply[3]) == 1 else "grow"
        self._on_limit(int(reply[0]), int(reply[1]), why)

    async def flush_orphans(self) -> None:
        """Return leases whose fate is unknown (a failed or cancelled call, a fallback)."""
        leases = list(self.orphans)
        if leases:
            self.orphans.difference_update(leases)
            await self.release("", [x for lease in leases for x in (lease, 0)])

    def renew_args(self, lease_ids: Sequence[str] = ()) -> list[str | int]:
        s = self._settings
        return [s.lease_ms, self.worker, s.worker_ttl_ms, *lease_ids]

    async def heartbeat(self, shared: Callable[[], bool]) -> None:
        """Renew this process's leases every third of the TTL while it holds any."""
        while shared() and (self.held or self.orphans):
            await asyncio.sleep(self._settings.lease_ttl / 3)
            if not shared():
                return
            if self.orphans:
                await self.flush_orphans()
            held = list(self.held)
            if not held:
                continue
            try:
                reply = await self._run(
                    "renew", "renew", self._keys.renew_keys(), self.renew_args(held)
                )
            except Unavailable:
                return
            self._on_workers(int(reply[1]))
