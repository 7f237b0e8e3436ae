"""``EmulatorThread``: the emulator on its own event loop in a daemon thread.

The pytest fixture serves from here, so it works the same whatever runs the test: a sync test,
anyio, pytest-asyncio or pytest-aiohttp, each with its own loop. Every call reaches the emulator
on its loop, so tests may inspect and steer it from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar

from yarl import URL

from resilience.testing._faults import Fault
from resilience.testing._server import Emulator
from resilience.testing._settings import EmulatorConfig
from resilience.testing._stats import EmulatorStats, Received

__all__ = ["EmulatorThread"]

_T = TypeVar("_T")
_CALL_TIMEOUT: Final = 10.0  # seconds one call may take on the emulator's loop


class EmulatorThread:
    """Serve an :class:`Emulator` from a daemon thread; a sync context manager.

    Takes what ``Emulator`` takes, plus ``duration``: the server stops by itself after that
    many seconds even if :meth:`stop` is never called. ``start_timeout`` bounds the start.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        /,
        *,
        port: int = 0,
        duration: float = 3600.0,
        start_timeout: float = 10.0,
        **settings: Any,
    ) -> None:
        if not (isinstance(duration, int | float) and 0 < duration < float("inf")):
            raise ValueError(f"duration must be a finite number > 0, got {duration!r}")
        self._emulator: Final = Emulator(config, port=port, **settings)
        self._duration = float(duration)
        self._start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._url: URL | None = None

    def __repr__(self) -> str:
        return f"EmulatorThread(url={self._url}, config={self._emulator.config!r})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> URL:
        """Start the thread and wait until the emulator serves; returns its URL."""
        if self._thread is not None:
            raise RuntimeError("the emulator thread is already running")
        started: concurrent.futures.Future[URL] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._serve(started),),
            name="resilience-emulator",
            daemon=True,
        )
        self._thread.start()
        try:
            self._url = started.result(timeout=self._start_timeout)
        except BaseException:
            self.stop()
            raise
        return self._url

    async def _serve(self, started: concurrent.futures.Future[URL]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            url = await self._emulator.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(url)
        try:
            await asyncio.wait_for(self._stop.wait(), self._duration)
        except asyncio.TimeoutError:
            pass  # the duration bound: stop by itself
        finally:
            await self._emulator.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the thread (at most ``timeout`` seconds)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        self._thread = self._loop = self._stop = self._url = None
        if loop is not None and stop is not None and not loop.is_closed():
            # RuntimeError: the loop ended on its own (duration) between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the emulator's API

    def _call(self, fn: Callable[[], _T]) -> _T:
        loop = self._loop
        if loop is None or self._url is None:
            raise RuntimeError("the emulator thread is not running")
        if threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=_CALL_TIMEOUT)

    @property
    def emulator(self) -> Emulator:
        """The emulator itself; touch it only from its own loop (e.g. inside its handlers)."""
        return self._emulator

    @property
    def url(self) -> URL:
        """The base URL, ``http://127.0.0.1:PORT``."""
        if self._url is None:
            raise RuntimeError("the emulator thread is not running")
        return self._url

    @property
    def config(self) -> EmulatorConfig:
        """The current settings."""
        return self._call(lambda: self._emulator.config)

    def configure(self, **changes: Any) -> EmulatorConfig:
        """:meth:`Emulator.configure`, on the emulator's loop."""
        return self._call(lambda: self._emulator.configure(**changes))

    def inject(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """:meth:`Emulator.inject`, on the emulator's loop."""
        self._call(lambda: self._emulator.inject(fault, times, path))

    def clear_faults(self) -> None:
        """:meth:`Emulator.clear_faults`, on the emulator's loop."""
        self._call(self._emulator.clear_faults)

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters, taken on the emulator's loop."""
        return self._call(lambda: self._emulator.stats)

    def reset_stats(self) -> None:
        """:meth:`Emulator.reset_stats`, on the emulator's loop."""
        self._call(self._emulator.reset_stats)

    @property
    def received(self) -> list[Received]:
        """The last 1000 ``/v1/*`` requests, oldest first."""
        return self._call(lambda: self._emulator.received)
