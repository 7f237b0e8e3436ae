"""A fleet on one API key: three worker processes share one plan limit through Redis.

The plan allows 4 generations in flight per API key, whichever process sends them. Each worker
gives its middleware a :class:`~resilience.redis.RedisStore` on the same Redis and namespace, so
the three of them never send more than the plan allows. For comparison, the same workers with
an in-process store each send up to three times the plan and are turned away with
``429 GENERATION_CONCURRENCY_EXCEEDED``. (Without ``max_concurrency`` the fleet learns the
limit from the first 429s instead.)

    python examples/fleet.py                              # starts a throwaway redis-server
    python examples/fleet.py --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import aiohttp

from resilience import Backoff, LocalStore, ResilienceMiddleware, Store, configure_logging
from resilience.redis import RedisStore
from resilience.testing import EmulatorProcess

PLAN = 4
WORKERS = 3
JOBS_PER_WORKER = 30


async def work(emulator: str, redis_url: str | None, namespace: str, name: str) -> int:
    """One worker process: its jobs, all at once, through its own middleware and session."""
    undo_logging = configure_logging(level="warning")  # only what goes wrong
    store: Store
    if redis_url is None:
        store = LocalStore(max_concurrency=PLAN)
    else:
        # redis_timeout: generous, so a busy machine does not turn this demo into a fallback
        store = RedisStore.from_url(
            redis_url, namespace=namespace, max_concurrency=PLAN, redis_timeout=2.0
        )
    mw = ResilienceMiddleware(store=store, backoff=Backoff(initial=0.01, max_delay=0.2))
    done = 0
    async with aiohttp.ClientSession(middlewares=(mw,)) as session:

        async def one(n: int) -> None:
            nonlocal done
            async with session.post(f"{emulator}/v1/generate", json={"job": f"{name}-{n}"}) as r:
                await r.read()
                done += r.status == 200

        await asyncio.gather(*(one(n) for n in range(JOBS_PER_WORKER)))
    if isinstance(store, RedisStore):
        await store.aclose()
    undo_logging()
    return done


def worker(emulator: str, redis_url: str | None, namespace: str, name: str) -> int:
    """The entry point of a worker process."""
    return asyncio.run(work(emulator, redis_url, namespace, name))


def control(base: str, what: str) -> dict[str, Any]:
    """The emulator's control endpoints: ``stats`` or ``reset``."""
    method = "GET" if what == "stats" else "POST"
    request = urllib.request.Request(f"{base}/_emulator/{what}", method=method, data=b"")
    with urllib.request.urlopen(request, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def run_fleet(base: str, redis_url: str | None) -> None:
    """Three processes at once; then what the server saw."""
    control(base, "reset")
    namespace = f"example-{uuid.uuid4().hex[:8]}"  # a fresh key for this run
    with ProcessPoolExecutor(WORKERS, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(worker, base, redis_url, namespace, f"w{n}") for n in range(WORKERS)]
        done = sum(f.result() for f in futures)
    stats = control(base, "stats")
    jobs = WORKERS * JOBS_PER_WORKER
    label = "one RedisStore namespace" if redis_url else "a LocalStore per process"
    print(
        f"{label:<24}: {done} of {jobs} jobs done, max in flight {stats['max_in_flight']} "
        f"of plan {PLAN}, {stats['requests'] / jobs:.2f} attempts per job, "
        f"plan-limit 429s: {stats['by_code'].get('GENERATION_CONCURRENCY_EXCEEDED', 0)}"
    )


@contextlib.contextmanager
def local_redis() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server, or --redis")
    with socket.socket() as sock:  # --port 0 would disable TCP: pick a free port ourselves
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--redis", help="Redis URL (default: start a throwaway redis-server)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        redis_url = args.redis or stack.enter_context(local_redis())
        emulator = stack.enter_context(EmulatorProcess(plan_concurrency=PLAN, generation_time=0.02))
        run_fleet(str(emulator.url), redis_url)
        run_fleet(str(emulator.url), None)


if __name__ == "__main__":
    main()
