"""The emulator in its own process: ``python -m resilience.testing`` under a context manager."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread
from yarl import URL

from resilience.testing._settings import EmulatorConfig, config_argv, is_int, is_number

__all__ = ["EmulatorProcess"]


class EmulatorProcess:
    """Runs ``python -m resilience.testing`` in a subprocess (for benchmarks that need the server
    in its own process). A context manager, sync or async: entering waits (at most
    ``startup_timeout`` seconds) for the ``listening on URL`` line; exiting sends SIGTERM, then
    kills after 5 s. Drive it with the ``/_emulator/*`` control endpoints."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        /,
        *,
        port: int = 0,
        duration: float = 3600.0,
        startup_timeout: float = 10.0,
        **settings: Any,
    ) -> None:
        base = config if config is not None else EmulatorConfig()
        self.config = replace(base, **settings) if settings else base
        if not (is_int(port) and 0 <= port <= 65535):
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
        if not (is_number(duration) and duration > 0):
            raise ValueError(f"duration must be a number > 0, got {duration!r}")
        self._argv = [
            sys.executable,
            "-m",
            "resilience.testing",
            "--port",
            str(port),
            "--duration",
            repr(float(duration)),
            *config_argv(self.config),
        ]
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._url: URL | None = None

    @property
    def url(self) -> URL:
        """The server's base URL."""
        if self._url is None:
            raise RuntimeError("the emulator process is not running")
        return self._url

    @property
    def pid(self) -> int:
        """The subprocess's pid."""
        if self._proc is None:
            raise RuntimeError("the emulator process is not running")
        return self._proc.pid

    def start(self) -> URL:
        """Start the subprocess and wait for its URL (blocking)."""
        if self._proc is not None:
            raise RuntimeError("the emulator process is already running")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env
        )
        self._proc = proc
        assert proc.stdout is not None
        stdout = proc.stdout
        lines: queue.Queue[bytes] = queue.Queue(maxsize=1)
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self._startup_timeout).decode(errors="replace").strip()
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"the emulator process did not start within {self._startup_timeout:g}s"
            ) from None
        prefix = "listening on "
        if not line.startswith(prefix):
            code = self.stop()
            raise RuntimeError(f"the emulator process failed (exit code {code}): {line!r}")
        self._url = URL(line[len(prefix) :])
        return self._url

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate the subprocess (kill it after ``timeout`` s); returns its exit code."""
        proc, self._proc, self._url = self._proc, None, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmulatorProcess:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)
