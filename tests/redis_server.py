"""A real ``redis-server`` for the tests, and the worker processes of the fleet tests.

``RedisServer`` starts ``redis-server`` on a free loopback port (``--port 0`` would disable TCP,
so the port is found by binding ``127.0.0.1:0`` first, and the start is retried if another
process takes it meanwhile), waits until it answers PING, and can be killed, restarted on the
same port, paused (SIGSTOP) and resumed. ``tls=True`` serves TLS only, with a throwaway
self-signed certificate made by ``openssl``.

Run as ``python -m tests.redis_server worker|hold ...`` it is one process of a test fleet: see
:func:`main`. Clusters and Sentinels are in ``tests/redis_topologies.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

__all__ = [
    "RedisServer",
    "free_port",
    "holder",
    "redis_server_binary",
    "run_fleet",
]

HOST: Final = "127.0.0.1"
ROOT: Final = Path(__file__).resolve().parents[1]
_START_ATTEMPTS: Final = 5
_READY_TIMEOUT: Final = 10.0


def redis_server_binary() -> str:
    """The path of ``redis-server``; raises with instructions when it is not installed."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not on PATH: the Redis store tests need a real Redis. Install it "
            "with `apt-get install -y redis-server` (.ci/run does this on CI)."
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.2) -> bool:
    """Whether a plaintext Redis answers PING on ``port`` (raw RESP, no client library)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, no persistence; a context manager."""

    def __init__(self, *, tls: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = redis_server_binary()
        self.tls = tls
        self.extra_args = extra_args
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="resilience-redis-")
        self.ca_file: Path | None = None
        if tls:
            self._make_certificate()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``rediss://`` with TLS)."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("redis-server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _make_certificate(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("openssl is not on PATH: needed for the rediss:// test")
        cert = Path(self._dir.name) / "cert.pem"
        key = Path(self._dir.name) / "key.pem"
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.ca_file = cert

    def _argv(self, port: int) -> list[str]:
        argv = [
            self.binary,
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.tls:
            assert self.ca_file is not None
            key = str(Path(self._dir.name) / "key.pem")
            argv += [
                "--port",
                "0",
                "--tls-port",
                str(port),
                "--tls-cert-file",
                str(self.ca_file),
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                str(self.ca_file),
                "--tls-auth-clients",
                "no",
            ]
        else:
            argv += ["--port", str(port)]
        return argv + list(self.extra_args)

    def _ready(self, port: int) -> bool:
        if not self.tls:
            return _ping(port)
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, port: int | None = None) -> None:
        """Start on ``port`` (default: the last port, else a free one); wait for PING."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        fixed = port if port is not None else (self.port or None)
        for _ in range(_START_ATTEMPTS):
            chosen = fixed if fixed is not None else free_port()
            proc = subprocess.Popen(
                self._argv(chosen),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + _READY_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if self._ready(chosen):
                    self._proc, self.port = proc, chosen
                    return
                time.sleep(0.02)
            _stop(proc)
            if fixed is not None:
                # The port we must reuse may linger briefly: try it again.
                time.sleep(0.2)
        raise RuntimeError(f"redis-server did not start after {_START_ATTEMPTS} attempts")

    def kill(self) -> None:
        """SIGKILL the server (its data is gone: it keeps nothing on disk)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()

    def restart(self) -> None:
        """Start again on the same port after :meth:`kill`."""
        self.start(self.port)

    def pause(self) -> None:
        """SIGSTOP: the server hangs, clients time out."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stderr is not None:
        proc.stderr.close()


# --------------------------------------------------------------------------- fleet processes


def _store_options(args: argparse.Namespace) -> dict[str, object]:
    return {
        "namespace": args.namespace,
        "lease_ttl": args.lease_ttl,
        "cluster": args.cluster,
        "redis_timeout": args.redis_timeout,
    }


def run_fleet(
    redis_url: str, emulator: str, namespace: str, *, processes: int, jobs: int, **opts: float
) -> list[dict[str, Any]]:
    """Run ``processes`` worker processes (``jobs`` each) together; their RESULT lines."""
    start_at = time.time() + 2.0  # let every process import and connect first
    argv = [sys.executable, "-m", "tests.redis_server", "worker", "--redis", redis_url,
            "--namespace", namespace, "--emulator", emulator, "--jobs", str(jobs),
            "--start-at", str(start_at),
            *[f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([*argv, "--name", f"w{n}"], cwd=ROOT, stdout=subprocess.PIPE, env=env)
        for n in range(processes)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
        results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    return results


def holder(
    url: str, namespace: str, *, permits: int, lease_ttl: float, cluster: bool = False
) -> subprocess.Popen[bytes]:
    """A process that takes ``permits`` permits, says ``ready N`` and hangs."""
    argv = [sys.executable, "-m", "tests.redis_server", "hold", "--redis", url,
            "--namespace", namespace, "--permits", str(permits),
            "--max-concurrency", str(permits), "--lease-ttl", str(lease_ttl),
            f"--cluster={int(cluster)}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, env=env)


async def _worker(args: argparse.Namespace) -> dict[str, object]:
    """Run ``args.jobs`` generations through the middleware with a shared RedisStore."""
    import aiohttp

    from resilience import ResilienceMiddleware
    from resilience.redis import RedisStore

    store = RedisStore.from_url(
        args.redis,
        max_concurrency=args.max_concurrency,
        initial_concurrency=args.initial_concurrency,
        **_store_options(args),  # type: ignore[arg-type]
    )
    mw = ResilienceMiddleware(max_attempts=5, max_elapsed=60.0, store=store)
    ok = 0
    async with store, aiohttp.ClientSession(middlewares=(mw,)) as session:

        async def job(n: int) -> None:
            nonlocal ok
            payload = {"job": f"{args.name}-{n}"}
            async with session.post(f"{args.emulator}/v1/generate", json=payload) as resp:
                await resp.read()
                ok += resp.status == 200

        # A barrier across processes: start together so the limit is contended at once.
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        await asyncio.gather(*(job(n) for n in range(args.jobs)))
        stats = store.stats()
    return {
        "ok": ok,
        "jobs": args.jobs,
        "round_trips": stats.round_trips,
        "mode": stats.mode,
        "fallbacks": stats.fallbacks,
    }


async def _hold(args: argparse.Namespace) -> None:
    """Take ``args.permits`` permits, say ``ready``, then hang until killed."""
    from resilience.redis import RedisStore

    store = RedisStore.from_url(
        args.redis,
        max_concurrency=args.max_concurrency,
        initial_concurrency=args.max_concurrency,
        **_store_options(args),  # type: ignore[arg-type]
    )
    held = [await store.admit("http://api", None) for _ in range(args.permits)]
    print(f"ready {len(held)}", flush=True)
    await asyncio.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    """``worker``: run jobs, print ``RESULT {json}``; ``hold``: take permits, print ``ready``."""
    parser = argparse.ArgumentParser(prog="python -m tests.redis_server")
    parser.add_argument("mode", choices=("worker", "hold"))
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--emulator", default="")
    parser.add_argument("--name", default=str(os.getpid()))
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--permits", type=int, default=1)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--initial-concurrency", type=int, default=4)
    parser.add_argument("--lease-ttl", type=float, default=30.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--cluster", type=int, default=0, help="1: the URL is a cluster node")
    parser.add_argument("--redis-timeout", type=float, default=0.25)
    args = parser.parse_args(argv)
    if args.mode == "hold":
        asyncio.run(_hold(args))
        return
    print("RESULT " + json.dumps(asyncio.run(_worker(args))), flush=True)


if __name__ == "__main__":
    main()


async def wake_delay(holder_store: Any, waiter_store: Any, origin: str) -> float:
    """Seconds from a release in one store to the wake-up of a request parked in another:
    ``holder_store`` takes the one permit, ``waiter_store``'s request parks behind it (its waker
    listening for wake-ups), then the permit is released. Woken by the release, that is a few
    round trips; by the parked waiter's own poll instead, it is about ``PARK_POLL``."""
    from resilience.redis._parking import PARK_POLL

    held = await holder_store.admit(origin, None)
    admitted = asyncio.Event()
    woke_at = 0.0

    async def wait_for_permit() -> None:
        nonlocal woke_at
        admission = await waiter_store.admit(origin, time.monotonic() + 10)
        woke_at = time.monotonic()
        admitted.set()
        admission.release()

    task = asyncio.create_task(wait_for_permit())
    # Parked, not just asked: a fixed 0.3 s was not always enough for a loaded machine to make
    # a cluster client's first round trip, and a release before the ask is no wake-up at all.
    deadline = time.monotonic() + 20
    while not waiter_store.stats().round_trips.get("wake"):  # the waker pops while one parks
        assert time.monotonic() < deadline, "the waiter never parked"
        await asyncio.sleep(0.005)
    assert not admitted.is_set()
    released_at = time.monotonic()
    held.release()
    await asyncio.wait_for(admitted.wait(), 2 * PARK_POLL)  # a lost wake-up still measures
    await task
    return woke_at - released_at
