"""The admission handles RedisStore hands out: one admitted attempt each.

``SharedAdmission`` holds a lease in Redis; ``LocalAdmission`` one of the fallback's local
permits. Each knows how to report its answer, release its permit and park after a plan-limit
429, so the store never asks what kind of permit it was given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._events import GATE_EVENT, emit
from .._quota import Quota
from .._store import Admission, Feedback, Signal
from ._connection import Unavailable
from ._leases import Lease

if TYPE_CHECKING:
    from ._store import RedisStore

__all__ = ["LocalAdmission", "SharedAdmission"]

# What a release feeds into the limits: 1 grows the limit, 2 is an answer that hit no limit.
_ANSWERS: Final = {Signal.SUCCESS: 1, Signal.OTHER: 2, Signal.FAILURE: 2}


class SharedAdmission:
    """An attempt admitted by the fleet: a lease in the namespace's permits."""

    __slots__ = ("_answer", "_store", "lease", "limit", "origin", "rate_epoch", "seq")

    def __init__(
        self,
        store: RedisStore,
        origin: str,
        lease: Lease,
        limit: int,
        rate_epoch: int,
        seq: int = 0,
    ) -> None:
        self._store = store
        self.origin = origin
        self.lease = lease
        self.limit = limit
        self.rate_epoch = rate_epoch  # the pacing epoch of the slot it was sent in
        self.seq = seq  # the send's number in the fleet's quota count (0: not counting)
        # What the release feeds in: 0 none, 1 success, 2 another answer; with the quota the
        # answer announced: "answer|seq|remaining|reset_ms|limit|window_ms|aligned_ms|unaligned"
        # (-1: not said; unaligned 0 or 1).
        self._answer: int | str = 0

    @property
    def released(self) -> bool:
        return self.lease.released

    async def report(self, feedback: Feedback) -> None:
        """Feed the answer in; successes ride on the release (no extra round trip). An
        announced quota that is spent holds the fleet until its reset (one round trip, only
        then); the count between answers is this process's alone (see the README)."""
        signal, retry_after = feedback.signal, feedback.gate
        answer = _ANSWERS.get(signal)
        quota = feedback.quota
        spent = quota is not None and quota.remaining == 0 and quota.reset is not None
        if answer is not None:
            self._answer = answer if quota is None else self._with_quota(answer, quota)
            if not spent:
                return
        store = self._store
        kind, spent_quota = (1 if signal is Signal.CONCURRENCY else 2), str(self.seq)
        if answer is not None:
            assert quota is not None
            kind, retry_after, spent_quota = 3, quota.reset, str(self._answer)
        if store._fallback.shared:
            lease = self.lease
            try:
                reply = await store._run(
                    "report",
                    "report",
                    store._keys.limit_keys(self.origin),
                    [kind, lease.id, lease.epoch,
                     -1 if retry_after is None else round(retry_after * 1000, 3),
                     self.rate_epoch, *store._settings.limit_args, spent_quota],
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
        if signal is Signal.RATE or kind == 3:
            # Redis is gone: the server's Retry-After still closes this process's gate.
            pacer = store._fallback.local.pacer(self.origin)
            pacer.on_response(
                rate_limited=kind != 3, retry_after=retry_after, epoch=pacer.epoch, quota=quota
            )

    def _with_quota(self, answer: int, quota: Quota) -> str:
        def ms(seconds: float | None) -> float:
            return -1 if seconds is None else round(seconds * 1000, 3)

        def count(n: int | None) -> int:
            return -1 if n is None else n

        return (
            f"{answer}|{self.seq}|{count(quota.remaining)}|{ms(quota.reset)}"
            f"|{count(quota.limit)}|{ms(quota.window)}|{ms(quota.aligned)}|{int(quota.unaligned)}"
        )

    def succeeded(self) -> bool:
        self._answer = 1  # rides on the release, as report(Feedback(Signal.SUCCESS)) does
        return True

    def release(self) -> None:
        """Return the lease with the next Redis call of this process (sent right away in a
        background task if none is on its way). Synchronous and idempotent."""
        if self.lease.released:
            return
        self.lease.released = True
        answer = self._answer
        if self.seq and isinstance(answer, int):
            # a counted send: its release tells the count it is no longer in flight
            answer = f"{answer}|{self.seq}|-1|-1|-1|-1|-1|0"
        self._store._return_lease(self.lease, self.origin, answer)

    async def wait_for_release(self, timeout: float) -> None:
        """Park until a permit frees anywhere in the fleet, or ``timeout``."""
        store = self._store
        if store._fallback.shared:
            await store._park(max(timeout, 0.0))
        else:  # admitted before a fallback: nothing local to compare with
            await store._fallback.local.limiter.wait_for_release(timeout)


class LocalAdmission:
    """An attempt admitted by the fallback's local limits while Redis was unreachable.

    The local store's own handle, counted while it is in flight: a rejoin adopts it as a lease
    (``adopted``), so the fleet counts it against the shared limit until it is released.
    """

    __slots__ = ("_inner", "_live", "_store", "adopted", "origin")

    def __init__(
        self, store: RedisStore, origin: str, inner: Admission, live: set[LocalAdmission]
    ) -> None:
        self._store = store
        self.origin = origin
        self._inner = inner
        self._live = live
        self.adopted: Lease | None = None
        live.add(self)

    @property
    def limit(self) -> int:
        return self._inner.limit

    async def report(self, feedback: Feedback) -> None:
        await self._inner.report(feedback)

    def succeeded(self) -> bool:
        return self._inner.succeeded()

    def release(self) -> None:
        if self not in self._live:
            return
        self._live.discard(self)
        self._inner.release()
        lease = self.adopted
        if lease is not None and not lease.released:
            lease.released = True
            self._store._return_lease(lease, self.origin, 0)

    async def wait_for_release(self, timeout: float) -> None:
        await self._inner.wait_for_release(timeout)
