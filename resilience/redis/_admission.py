"""The admission handles RedisStore hands out: one admitted attempt each.

``SharedAdmission`` holds a lease in Redis; ``LocalAdmission`` one of the fallback's local
permits. Each knows how to report its answer, release its permit and park after a plan-limit
429, so the store never asks what kind of permit it was given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._concurrency import ConcurrencyPermit
from .._events import GATE_EVENT, emit
from .._store import Admission, LocalStore, Signal
from ._connection import Unavailable
from ._leases import Lease

if TYPE_CHECKING:
    from ._store import RedisStore

__all__ = ["LocalAdmission", "SharedAdmission", "handle_of"]

_ANSWERS: Final = {Signal.SUCCESS: 1, Signal.OTHER: 2}  # what a release feeds into the limits


class SharedAdmission:
    """An attempt admitted by the fleet: a lease in the namespace's permits."""

    __slots__ = ("_answer", "_store", "lease", "limit", "origin", "rate_epoch")

    def __init__(
        self, store: RedisStore, origin: str, lease: Lease, limit: int, rate_epoch: int
    ) -> None:
        self._store = store
        self.origin = origin
        self.lease = lease
        self.limit = limit
        self.rate_epoch = rate_epoch  # the pacing epoch of the slot it was sent in
        self._answer = 0  # what the release feeds in: 0 none, 1 success, 2 another answer

    @property
    def released(self) -> bool:
        return self.lease.released

    async def report(self, signal: Signal, retry_after: float | None) -> None:
        """Feed the answer in; successes ride on the release (no extra round trip)."""
        answer = _ANSWERS.get(signal)
        if answer is not None:
            self._answer = answer
            return
        store = self._store
        if store._fallback.shared:
            lease = self.lease
            try:
                reply = await store._run(
                    "report",
                    "report",
                    store._keys.limit_keys(self.origin),
                    [1 if signal is Signal.CONCURRENCY else 2, lease.id, lease.epoch,
                     -1 if retry_after is None else round(retry_after * 1000, 3),
                     self.rate_epoch, *store._settings.limit_args],
                    idempotent=False,
                )  # fmt: skip
            except Unavailable:
                pass
            else:
                old, new, closed, milli = (int(x) for x in reply)
                store._note_limit(old, new, "cut")
                if closed:
                    emit(
                        GATE_EVENT,
                        "info",
                        origin=self.origin,
                        closed_for=round(retry_after or 0.0, 3),
                        pace=round(milli / 1000, 2) if milli >= 0 else None,
                        namespace=store.namespace,
                    )
                return
        if signal is Signal.RATE:
            # Redis is gone: the server's Retry-After still closes this process's gate.
            pacer = store._fallback.local.pacer(self.origin)
            pacer.on_response(rate_limited=True, retry_after=retry_after, epoch=pacer.epoch)

    def release(self) -> None:
        """Return the lease with the next Redis call of this process (sent right away in a
        background task if none is on its way). Synchronous and idempotent."""
        if self.lease.released:
            return
        self.lease.released = True
        self._store._return_lease(self.lease, self.origin, self._answer)

    async def wait_for_release(self, timeout: float) -> None:
        """Park until a permit frees anywhere in the fleet, or ``timeout``."""
        store = self._store
        if store._fallback.shared:
            await store._park(max(timeout, 0.0))
        else:  # admitted before a fallback: nothing local to compare with
            await store._fallback.local.limiter.wait_for_release(timeout)


class LocalAdmission:
    """An attempt admitted by the fallback's local limits while Redis was unreachable."""

    __slots__ = ("_inner", "_local", "limit", "origin", "rate_epoch")

    def __init__(self, local: LocalStore, inner: Admission) -> None:
        self._local = local
        self._inner = inner
        self.origin = inner.origin
        self.limit = inner.limit
        self.rate_epoch = inner.rate_epoch

    @property
    def released(self) -> bool:
        permit = self._inner.permit
        return isinstance(permit, ConcurrencyPermit) and permit.released

    async def report(self, signal: Signal, retry_after: float | None) -> None:
        await self._local.report(self._inner, signal, retry_after)

    def release(self) -> None:
        self._local.release(self._inner)

    async def wait_for_release(self, timeout: float) -> None:
        await self._local.wait_for_release(self._inner, timeout)


Handle = SharedAdmission | LocalAdmission


def handle_of(admission: Admission) -> Handle:
    """The handle inside an ``Admission`` this store made."""
    handle = admission.permit
    if not isinstance(handle, (SharedAdmission, LocalAdmission)):
        raise TypeError(f"not an admission of a RedisStore: {admission!r}")
    return handle
