"""Per-loop connections: the clients and scripts of each event loop, and one Redis call.

redis-py's asyncio connections belong to the loop that opened them, so the store keeps one
``Link`` per running loop and builds a new one (lazily) when it is used from another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript

from ._scripts import Scripts
from ._settings import StoreSettings
from ._source import TROUBLE, Client, Source

__all__ = ["TROUBLE", "Connections", "Link", "Unavailable"]


class Unavailable(Exception):
    """A Redis call failed; the store has switched to local limits."""


@dataclass(slots=True)
class Link:
    """The clients and scripts of one event loop."""

    loop: asyncio.AbstractEventLoop
    client: Client
    waker: Client
    scripts: Scripts


class Connections:
    """Builds each loop's ``Link`` and runs one call under the store's rules.

    ``on_trouble(exc, generation)`` is told of every failed call; ``generation()`` names the
    current connection era, so a failure of a call made before a rejoin is recognised as stale.
    """

    def __init__(
        self,
        source: Source,
        settings: StoreSettings,
        *,
        on_trouble: Callable[[BaseException, int], None],
        generation: Callable[[], int],
    ) -> None:
        self.source = source
        self._settings = settings
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
        client, waker = self.source.build()
        link = Link(loop, client, waker, Scripts.register(client))
        self.current = link
        return link

    def forget(self) -> Link | None:
        """Drop the current link (a new loop, or closing); returns it for closing."""
        link, self.current = self.current, None
        return link

    async def close(self, link: Link) -> None:
        await self.source.close(link.client, link.waker)

    async def reset(self, link: Link) -> None:
        await self.source.reset(link.client, link.waker)

    async def bounded(self, call: Any, extra: float = 0.0) -> Any:
        """Await ``call`` within the source's time limit on one call (plus ``extra``)."""
        bound = self.source.call_bound
        if bound is None:
            return await call
        with anyio.fail_after(bound + extra):
            return await call

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
                return await self.bounded(script(keys=keys, args=args))  # type: ignore[arg-type]
            # Any failure inside redis-py is Redis trouble, not the caller's: a connection torn
            # down under a call can surface as an AttributeError from its internals.
            except Exception as exc:
                stale = (
                    idempotent
                    and attempt == 1
                    and isinstance(exc, redis_errors.ConnectionError)
                    and not isinstance(exc, (redis_errors.TimeoutError, TimeoutError))
                    and time.monotonic() - started < self._settings.redis_timeout / 2
                )
                if stale:
                    with contextlib.suppress(Exception):
                        await self.source.drop_idle(link.client)
                    continue
                self._on_trouble(exc, generation)
                raise Unavailable from exc
        raise AssertionError("unreachable")
