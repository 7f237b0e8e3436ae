"""Per-loop connections: the clients and scripts of each event loop, and one Redis call.

redis-py's asyncio connections belong to the loop that opened them, so the store keeps one
``Link`` per running loop and builds a new one (lazily) when it is used from another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from ._scripts import Scripts
from ._settings import StoreSettings

__all__ = ["TROUBLE", "WAKE_SLICE", "Connections", "Link", "Unavailable"]

WAKE_SLICE: Final = 1.0
"""Longest single BLPOP of the wake-up list (seconds)."""
TROUBLE: Final = (redis_errors.RedisError, OSError)  # OSError covers TimeoutError, ssl errors


class Unavailable(Exception):
    """A Redis call failed; the store has switched to local limits."""


@dataclass(slots=True)
class Link:
    """The clients and scripts of one event loop."""

    loop: asyncio.AbstractEventLoop
    client: Redis
    waker: Redis  # its own small pool: a blocking pop must not hold up the scripts
    scripts: Scripts

    async def disconnect(self) -> None:
        """Close every connection, whatever state Redis is in."""
        for client in (self.client, self.waker):
            with contextlib.suppress(*TROUBLE):
                await client.connection_pool.disconnect()

    async def reset(self) -> None:
        """Close every connection (all suspect: start afresh); Redis errors propagate."""
        for client in (self.client, self.waker):
            await client.connection_pool.disconnect()


class Connections:
    """Builds each loop's ``Link`` and runs one call under the store's rules.

    ``on_trouble(exc, generation)`` is told of every failed call; ``generation()`` names the
    current connection era, so a failure of a call made before a rejoin is recognised as stale.
    """

    def __init__(
        self,
        url: str,
        settings: StoreSettings,
        options: Mapping[str, Any],
        *,
        on_trouble: Callable[[BaseException, int], None],
        generation: Callable[[], int],
    ) -> None:
        self._url = url
        self._settings = settings
        self._options = dict(options)
        self._on_trouble = on_trouble
        self._generation = generation
        self.round_trips: Counter[str] = Counter()
        self.current: Link | None = None

    def count(self, kind: str) -> None:
        self.round_trips[kind] += 1

    def link(self, loop: asyncio.AbstractEventLoop) -> Link:
        """The link of ``loop``, built on first use there."""
        link = self.current
        if link is not None and link.loop is loop:
            return link
        timeout = self._settings.redis_timeout
        common: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            **self._options,
        }
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._settings.max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            **common,
        )
        waker_pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=2,
            timeout=timeout,
            socket_timeout=WAKE_SLICE + timeout,
            **common,
        )
        client = Redis(connection_pool=pool)
        link = Link(loop, client, Redis(connection_pool=waker_pool), Scripts.register(client))
        self.current = link
        return link

    def forget(self) -> Link | None:
        """Drop the current link (a new loop, or closing); returns it for disconnecting."""
        link, self.current = self.current, None
        return link

    async def run(
        self,
        link: Link,
        kind: str,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[object],
        *,
        idempotent: bool = True,
    ) -> Any:
        """One script call; Redis trouble switches to local limits and raises Unavailable.

        A call that fails at once on a dropped connection (Redis restarted, an idle connection
        closed by the server) is repeated once on a fresh connection if the script is safe to
        run twice (acquire, release, renew; not report or budget, which would count twice).
        A call that timed out is never repeated.
        """
        generation = self._generation()
        for attempt in (1, 2) if idempotent else (1,):
            self.round_trips[kind] += 1
            started = time.monotonic()
            try:
                return await script(keys=keys, args=args)  # type: ignore[arg-type]
            except TROUBLE as exc:
                stale = (
                    idempotent
                    and attempt == 1
                    and isinstance(exc, redis_errors.ConnectionError)
                    and not isinstance(exc, (redis_errors.TimeoutError, TimeoutError))
                    and time.monotonic() - started < self._settings.redis_timeout / 2
                )
                if stale:
                    with contextlib.suppress(*TROUBLE):
                        await link.client.connection_pool.disconnect(inuse_connections=False)
                    continue
                self._on_trouble(exc, generation)
                raise Unavailable from exc
        raise AssertionError("unreachable")
