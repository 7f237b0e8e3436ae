"""The emulator's HTTP server: :class:`Emulator`, serving the generation API on 127.0.0.1.

Everything a resilience layer has to cope with can be produced on demand: the table's error codes
(random or scripted), both kinds of 429, 425 polling, connection resets, truncated, malformed,
huge, chunked and gzip-encoded error bodies, raw ``Retry-After`` values and slow answers. The
server counts what it executed so tests can assert on duplicate executions.

Over 400 lines on purpose: one class whose handlers share the counters, the token bucket and the
queue of injected faults (how each fault is answered lives in ``_faults``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, replace
from types import TracebackType
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from resilience.testing._faults import (
    JSON_TYPE,
    Fault,
    Pending,
    abort,
    error_response,
    ms_header,
    seconds_header,
    serve,
)
from resilience.testing._outage import OUTAGE_RESET, Outage
from resilience.testing._ratelimit import FixedWindow, quota_headers, retry_after_headers
from resilience.testing._settings import (
    FATAL_CODES,
    MAX_DELAY,
    TRANSIENT_CODES,
    EmulatorConfig,
    is_int,
)
from resilience.testing._stats import Counters, EmulatorStats, Received

__all__ = ["HOST", "Emulator"]

HOST: Final = "127.0.0.1"
RECEIVED_LOG_SIZE: Final = 1000
REQUEST_IDS_CAP: Final = 100_000
_MAX_JOBS: Final = 100_000
_MAX_BODY: Final = 64 * 1024 * 1024
_SHUTDOWN_TIMEOUT: Final = 0.25
_PING_BODY: Final = b'{"ok": true}'


class Emulator:
    """The generation API emulator; an async context manager serving on 127.0.0.1.

    >>> async with Emulator(plan_concurrency=2) as emu:  # doctest: +SKIP
    ...     async with session.post(emu.url / "v1/generate", json={"job": "j1"}) as r: ...

    ``config`` and keyword settings (the fields of :class:`EmulatorConfig`) combine, the
    keywords winning. ``port=0`` picks a free port; :attr:`url` tells which.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, /, *, port: int = 0, **settings: Any
    ) -> None:
        if not (is_int(port) and 0 <= port <= 65535):
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
        base = config if config is not None else EmulatorConfig()
        self._config = replace(base, **settings) if settings else base
        self._port = port
        self._runner: web.AppRunner | None = None
        self._url: URL | None = None
        self._rng = random.Random(self._config.seed)
        self._tokens = float(self._config.rate_burst)
        self._stamp = time.monotonic()
        self._pending: deque[Pending] = deque()
        self._seq = 0
        self._job_seq = 0
        self._jobs: dict[str, float] = {}
        self._st = Counters()
        self._received: deque[Received] = deque(maxlen=RECEIVED_LOG_SIZE)
        self._outage = Outage()
        self._window: FixedWindow | None = None

    # ----------------------------------------------------------------- public API

    @property
    def url(self) -> URL:
        """The base URL, ``http://127.0.0.1:PORT`` (append paths with ``/``)."""
        if self._url is None:
            raise RuntimeError("the emulator is not running")
        return self._url

    @property
    def config(self) -> EmulatorConfig:
        """The current settings."""
        return self._config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change settings at runtime (validated: bad values raise ``ValueError``, unknown names
        ``TypeError``). A new ``seed`` reseeds the faults; a new rate limit refills the bucket.
        Returns the new settings."""
        new = replace(self._config, **changes)
        if "seed" in changes:
            self._rng.seed(new.seed)
        if "rate_limit" in changes or "rate_burst" in changes:
            self._tokens = float(new.rate_burst)
            self._stamp = time.monotonic()
        if "outage_for" in changes:
            self._outage.set(new.outage_for, new.outage_code, time.monotonic())
        elif "outage_code" in changes:
            self._outage.code = new.outage_code
        self._config = new
        return new

    def start_outage(
        self, duration: float = math.inf, code: str = "DISPATCH_TIMEOUT"
    ) -> EmulatorConfig:
        """From now on, for ``duration`` seconds (default: until :meth:`end_outage`), answer
        every ``/v1/*`` request with ``code`` (a transient code of the table, or ``"reset"``)."""
        return self.configure(outage_for=duration, outage_code=code)

    def end_outage(self) -> EmulatorConfig:
        """End the outage now (recovery)."""
        return self.configure(outage_for=None)

    @property
    def outage_remaining(self) -> float | None:
        """Seconds the outage still lasts (``inf``: until ended), None when there is none."""
        return self._outage.remaining(time.monotonic())

    def inject(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """Answer the next ``times`` requests to ``path`` (exact, e.g. ``"/v1/generate"``; None:
        any ``/v1/*`` path) with ``fault``. Injected faults come first (before the rate limit and
        random faults) and are consumed in the order injected."""
        if not isinstance(fault, Fault):
            raise TypeError(f"inject takes a Fault, got {type(fault).__name__}")
        if not (is_int(times) and times >= 1):
            raise ValueError(f"times must be an int >= 1, got {times!r}")
        if path is not None and not path.startswith("/v1/"):
            raise ValueError(f"path must be an exact /v1/... path, got {path!r}")
        self._pending.append(Pending(fault, times, path))

    def clear_faults(self) -> None:
        """Drop the injected faults not consumed yet."""
        self._pending.clear()

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters."""
        st = self._st
        return EmulatorStats(
            requests=st.requests,
            by_path=Counter(st.by_path),
            by_code=Counter(st.by_code),
            executions=Counter(st.executions),
            idempotency_executions=Counter(st.idem),
            generations=st.generations,
            max_in_flight=st.max_in_flight,
            in_flight=st.in_flight,
            duplicates=st.duplicates,
            outage_answers=st.outage_answers,
            request_ids=list(st.request_ids),
        )

    def reset_stats(self) -> None:
        """Zero the counters and clear :attr:`received` (settings, jobs and queued faults stay;
        ``max_in_flight`` restarts from the generations in flight now)."""
        self._st = Counters(self._st.in_flight)
        self._received.clear()

    @property
    def received(self) -> list[Received]:
        """The last 1000 ``/v1/*`` requests as ``(method, path, headers)``, oldest first."""
        return list(self._received)

    async def start(self) -> URL:
        """Start serving (what ``async with`` does); returns :attr:`url`."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        runner = web.AppRunner(
            self._make_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        config = self._config
        self._outage.set(config.outage_for, config.outage_code, time.monotonic())
        try:
            await web.TCPSite(runner, HOST, self._port).start()
            port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._url = URL.build(scheme="http", host=HOST, port=port)
        return self._url

    async def stop(self) -> None:
        """Stop serving: in-flight handlers get a short grace period, then are cancelled."""
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- the app

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=_MAX_BODY)
        add = app.router.add_route
        add("POST", "/v1/generate", self._generate)
        add("POST", "/v1/jobs", self._create_job)
        add("GET", "/v1/jobs/{id}", self._get_job)
        add("POST", "/v1/echo", self._echo)
        add("PUT", "/v1/echo", self._echo)
        add("GET", "/v1/ping", self._ping)
        add("GET", r"/v1/redirect/{n:\d{1,6}}", self._redirect)
        add("GET", "/v1/slow", self._slow)
        add("GET", "/_emulator/stats", self._control_stats)
        add("POST", "/_emulator/configure", self._control_configure)
        add("POST", "/_emulator/reset", self._control_reset)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._seq += 1
        rid = f"srv-{self._seq}"
        path = request.path
        if path.startswith("/v1/"):
            resp = await self._serve_api(request, handler, path, rid)
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                resp = self._http_error(exc, record=False)
        if not resp.prepared:
            resp.headers["Request-Id"] = rid
        return resp

    async def _serve_api(
        self, request: web.Request, handler: Handler, path: str, rid: str
    ) -> web.StreamResponse:
        st = self._st
        st.requests += 1
        resource = request.match_info.route.resource
        st.by_path[resource.canonical if resource is not None else path] += 1
        headers = request.headers
        xrid = headers.get("X-Request-ID")
        if xrid is not None and len(st.request_ids) < REQUEST_IDS_CAP:
            st.request_ids.append(xrid)
        self._received.append(Received(request.method, path, headers))

        announced: dict[str, str] = {}  # the fixed window's headers, filled in by the gate
        resp = await self._gate(request, path, rid, announced)
        if resp is None:
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                resp = self._http_error(exc, record=True)
            if resp.status < 400:
                self._st.by_code["ok"] += 1
        if announced and not resp.prepared:
            resp.headers.update(announced)  # the fixed window announces itself on every answer
        return resp

    def _window_for(self, limit: int, seconds: float) -> FixedWindow:
        window = self._window
        if window is None or window.limit != limit or window.window != seconds:
            window = self._window = FixedWindow(limit, seconds)
        return window

    async def _gate(
        self, request: web.Request, path: str, rid: str, announced: dict[str, str]
    ) -> web.StreamResponse | None:
        """The outage, injected faults, the rate limit, random faults; None lets the request in.

        The fixed window's quota headers go into ``announced``, for every answer to carry
        (a dict passed in, not request storage: ``web.RequestKey`` is aiohttp >= 3.14)."""
        outage = self._outage.answer(time.monotonic())
        if outage is not None:
            self._st.outage_answers += 1
            return self._abort(request) if outage == OUTAGE_RESET else self._error(outage)
        if self._pending:
            fault = self._take(path)
            if fault is not None:
                if fault.kind == "slow":
                    # Read the request first: the server has it all, then takes its time.
                    if await self._read(request) is None:
                        return self._gone()
                    await asyncio.sleep(fault.delay)
                    return None
                return await serve(fault, request, rid, self._record)
        config = self._config
        if config.window_limit is not None:
            wall = time.time()
            window = self._window_for(config.window_limit, config.window_seconds)
            admitted, remaining, reset_at = window.admit(wall)
            announced.update(
                quota_headers(
                    config.quota_headers, window.limit, window.window, remaining, reset_at, wall
                )
            )
            if not admitted:
                asked = retry_after_headers(reset_at - wall, config.retry_after_style, wall)
                return self._error("RATE_LIMITED", headers={**announced, **asked})
        rate = config.rate_limit
        if rate is not None:
            now = time.monotonic()
            tokens = min(float(config.rate_burst), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
            else:
                self._tokens = tokens
                wait = (1.0 - tokens) / rate
                return self._error(
                    "RATE_LIMITED", headers=retry_after_headers(wait, config.retry_after_style)
                )
        if config.reset_rate or config.transient_rate or config.fatal_rate:
            draw = self._rng.random()
            if draw < config.reset_rate:
                return self._abort(request)
            draw -= config.reset_rate
            if draw < config.transient_rate:
                return self._error(self._rng.choice(TRANSIENT_CODES))
            draw -= config.transient_rate
            if draw < config.fatal_rate:
                return self._error(self._rng.choice(FATAL_CODES))
        return None

    def _take(self, path: str) -> Fault | None:
        for index, pending in enumerate(self._pending):
            if pending.path is None or pending.path == path:
                pending.remaining -= 1
                if pending.remaining <= 0:
                    del self._pending[index]
                return pending.fault
        return None

    def _error(
        self,
        code: str,
        status: int | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        record: bool = True,
    ) -> web.Response:
        if record:
            self._record(code)
        return error_response(code, status, headers=headers)

    def _http_error(self, exc: web.HTTPException, *, record: bool) -> web.Response:
        if exc.status == 404:
            code = "RESOURCE_NOT_FOUND"
        elif exc.status < 500:
            code = "BAD_REQUEST"
        else:
            code = "INTERNAL_ERROR"
        allow = exc.headers.get("Allow")
        return self._error(
            code, exc.status, headers={"Allow": allow} if allow else None, record=record
        )

    async def _read(self, request: web.Request) -> bytes | None:
        """The request body (cached by aiohttp), or None if the client went away."""
        try:
            return await request.read()
        except ConnectionError:
            return None

    def _gone(self) -> web.Response:
        self._record("disconnected")
        return web.Response(status=499)  # never sent: nobody is listening

    def _record(self, label: str) -> None:
        self._st.by_code[label] += 1

    def _abort(self, request: web.Request) -> web.Response:
        self._record("reset")
        return abort(request)

    # ----------------------------------------------------------------- endpoints

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        raw = await self._read(request)
        if raw is None:
            return self._gone()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return self._error("VALIDATION_ERROR")
        job = payload.get("job")
        if job is not None and not isinstance(job, str):
            return self._error("VALIDATION_ERROR")
        limit = self._config.plan_concurrency
        st = self._st
        if limit is not None and st.in_flight >= limit:
            return self._error("GENERATION_CONCURRENCY_EXCEEDED")
        st.in_flight += 1
        if st.in_flight > st.max_in_flight:
            st.max_in_flight = st.in_flight
        try:
            await asyncio.sleep(self._config.generation_time)
        finally:
            self._st.in_flight -= 1
        st = self._st  # reset_stats() may have swapped it meanwhile
        st.generations += 1
        execution = 1
        if job is not None:
            execution = st.executions[job] + 1
            st.executions[job] = execution
            if execution == 2:
                st.duplicates += 1
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            st.idem[key] += 1
        body = json.dumps({"ok": True, "job": job, "execution": execution}).encode()
        return web.Response(body=body, content_type=JSON_TYPE)

    async def _create_job(self, request: web.Request) -> web.StreamResponse:
        if await self._read(request) is None:
            return self._gone()
        self._job_seq += 1
        job_id = f"job-{self._job_seq}"
        jobs = self._jobs
        jobs[job_id] = time.monotonic() + self._config.ready_after
        if len(jobs) > _MAX_JOBS:
            del jobs[next(iter(jobs))]
        body = json.dumps({"ok": True, "id": job_id}).encode()
        return web.Response(status=202, body=body, content_type=JSON_TYPE)

    async def _get_job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["id"]
        ready_at = self._jobs.get(job_id)
        if ready_at is None:
            return self._error("RESOURCE_NOT_FOUND")
        left = ready_at - time.monotonic()
        if left > 0:
            return self._error(
                "GENERATION_NOT_READY",
                headers={"Retry-After": seconds_header(left), "Retry-After-Ms": ms_header(left)},
            )
        body = json.dumps({"ok": True, "id": job_id, "status": "done"}).encode()
        return web.Response(body=body, content_type=JSON_TYPE)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        raw = await self._read(request)
        if raw is None:
            return self._gone()
        digest = hashlib.sha256(raw).hexdigest()
        body = json.dumps({"ok": True, "len": len(raw), "sha256": digest}).encode()
        return web.Response(body=body, content_type=JSON_TYPE)

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_PING_BODY, content_type=JSON_TYPE)

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if n == 0:
            return await self._ping(request)
        location = "/v1/ping" if n == 1 else f"/v1/redirect/{n - 1}"
        return web.Response(status=302, headers={"Location": location})

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        try:
            delay = float(request.query.get("delay", "0"))
        except ValueError:
            delay = math.nan
        if not (math.isfinite(delay) and 0 <= delay <= MAX_DELAY):
            return self._error("VALIDATION_ERROR")
        await asyncio.sleep(delay)
        return web.Response(
            body=json.dumps({"ok": True, "delay": delay}).encode(), content_type=JSON_TYPE
        )

    # ----------------------------------------------------------------- control surface

    async def _control_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats.as_dict())

    async def _control_configure(self, request: web.Request) -> web.StreamResponse:
        msg = "the body must be a JSON object of settings"
        try:
            changes = json.loads(await request.read())
            config = self.configure(**changes) if isinstance(changes, dict) else None
        except (TypeError, ValueError) as exc:
            msg, config = str(exc), None
        if config is None:
            return web.json_response(
                {"ok": False, "code": "BAD_REQUEST", "detail": msg, "error": msg}, status=400
            )
        return web.json_response({"ok": True, "config": asdict(config)})

    async def _control_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.json_response({"ok": True})
