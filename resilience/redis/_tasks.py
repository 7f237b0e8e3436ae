"""The store's background tasks on the running loop: named singletons and fire-and-forget."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Tasks"]


class Tasks:
    def __init__(self) -> None:
        self._named: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        """A new event loop: the old loop's tasks are gone with it."""
        self._named.clear()
        self._background.clear()

    def spawn(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background (kept referenced until done)."""
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        body: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        """Run ``body()`` as the task ``name`` unless it runs already on ``loop``."""
        task = self._named.get(name)
        if task is None or task.done() or task.get_loop() is not loop:
            self._named[name] = loop.create_task(body())

    def background(self) -> list[asyncio.Task[None]]:
        return list(self._background)

    async def stop(self, timeout: float) -> None:
        """Cancel the named tasks; wait (bounded) for them and the background ones."""
        named = [t for t in self._named.values() if not t.done()]
        self._named.clear()
        for task in named:
            task.cancel()
        pending = [*named, *self._background]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def forget(self) -> None:
        """Closing on another loop than the tasks': they cannot be awaited from here."""
        self._named.clear()
