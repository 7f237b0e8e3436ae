"""Fallback and rejoin: local, bounded limits while Redis is unreachable, and the probe.

On the first failed call the store switches to a ``LocalStore`` holding this process's share
of the last shared limit (never unlimited against a paid API), logs one WARNING, and probes
Redis with jittered exponential backoff; when a probe succeeds it rejoins with one more.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .._events import STORE_EVENT, emit
from .._store import LocalStore
from ._settings import PROBE_FIRST, StoreSettings

if TYPE_CHECKING:
    from ._admission import LocalAdmission

__all__ = ["Fallback"]


class Fallback:
    """Whether the limits are shared now, and the local limits used while they are not."""

    def __init__(self, settings: StoreSettings, *, namespace: str, where: str, secret: str | None):
        self._settings = settings
        self._namespace = namespace
        self._where = where  # the Redis as it may be logged
        self._secret = secret  # scrubbed from error texts
        self.shared = True
        """False while falling back to local limits."""
        self.generation = 0
        """Bumped on rejoin: failures of calls made before it are stale."""
        self.local = self._local(settings.initial)
        self.live: set[LocalAdmission] = set()
        """The fallback's permits in flight (they still count when the store rejoins)."""
        self.fallbacks = 0
        self.rejoins = 0
        self._down_since = 0.0
        self._probe_delay = PROBE_FIRST  # the probe's backoff when it last rejoined
        self._rejoined_at = -float("inf")

    @staticmethod
    def _local(limit: int) -> LocalStore:
        # One limit for every origin: the fleet's share of the namespace's one plan limit. No
        # breaker here: the store's own (SharedBreakers) falls back to a local one itself.
        return LocalStore(
            max_concurrency=limit,
            initial_concurrency=limit,
            retry_budget=None,
            shared_limit=True,
            circuit_breaker=None,
        )

    def trip(self, exc: BaseException, generation: int, *, limit: int, workers: int) -> bool:
        """Redis failed: switch to local limits (once; True if this call switched)."""
        if not self.shared or generation != self.generation:
            return False
        self.shared = False
        self.fallbacks += 1
        self._down_since = time.monotonic()
        split = max(1, limit // max(1, workers))
        self.local = self._local(split)
        emit(
            STORE_EVENT,
            "warning",
            action="fallback",
            namespace=self._namespace,
            redis=self._where,
            error=self.describe(exc),
            limit=split,
            workers=workers,
        )
        return True

    def describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._secret:
            text = text.replace(self._secret, "REDACTED")
        return text[:300]

    async def probe(
        self, attempt: Callable[[], Awaitable[object]], *, closed: Callable[[], bool]
    ) -> bool:
        """Run ``attempt`` with backoff until it succeeds (True: rejoined) or the store closes."""
        delay = PROBE_FIRST
        max_delay = self._settings.probe_max_delay
        if time.monotonic() - self._rejoined_at < 2 * max_delay + 10:
            # Down again soon after a rejoin (Redis flapping, or answering the probe but not
            # the traffic): go on backing off instead of starting over.
            delay = self._probe_delay
        while not self.shared and not closed():
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, max_delay)
            if closed():
                return False
            try:
                await attempt()
            except Exception:  # any failure (see Connections.run): Redis is still down
                continue
            self.generation += 1
            self.shared = True
            self.rejoins += 1
            self._probe_delay, self._rejoined_at = delay, time.monotonic()
            emit(
                STORE_EVENT,
                "warning",
                action="rejoin",
                namespace=self._namespace,
                redis=self._where,
                down_for=round(time.monotonic() - self._down_since, 3),
            )
            return True
        return False
