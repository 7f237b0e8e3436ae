"""A fault-injecting emulator of the generation API, served by ``aiohttp.web`` on 127.0.0.1.

Everything a resilience layer has to cope with can be produced on demand: the table's error codes
(random or scripted), both kinds of 429, 425 polling, connection resets, truncated, malformed,
huge, chunked and gzip-encoded error bodies, raw ``Retry-After`` values and slow answers. The
server counts what it executed so tests can assert on duplicate executions.
"""

from __future__ import annotations

import asyncio
import gzip as _gzip
import hashlib
import json
import math
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, get_args

import anyio.to_thread
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from resilience._codes import CodeTable

__all__ = [
    "FATAL_CODES",
    "TRANSIENT_CODES",
    "Emulator",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorStats",
    "Fault",
    "FaultKind",
    "Received",
]

HOST: Final = "127.0.0.1"

TRANSIENT_CODES: Final[tuple[str, ...]] = (
    "UPSTREAM_GENERATION_ERROR",
    "DISPATCH_TIMEOUT",
    "INTERNAL_ERROR",
    "GENERATION_TIMEOUT",
    "GENERATION_INTERRUPTED",
)
"""Retryable codes drawn by ``transient_rate`` (always answered before any execution)."""

FATAL_CODES: Final[tuple[str, ...]] = (
    "BILLING_INSUFFICIENT_CREDITS",
    "VALIDATION_ERROR",
    "UPSTREAM_GENERATION_SERVICE_ERROR",
    "GENERATION_CAPACITY_EXCEEDED",
)
"""Non-retryable codes drawn by ``fatal_rate`` (answered before any execution)."""

RECEIVED_LOG_SIZE: Final = 1000
REQUEST_IDS_CAP: Final = 100_000
_MAX_JOBS: Final = 100_000
_MAX_BODY: Final = 64 * 1024 * 1024
_MAX_DELAY: Final = 3600.0
_SHUTDOWN_TIMEOUT: Final = 0.25
_CHUNK: Final = 64 * 1024
_PAD: Final = b" " * _CHUNK
_JSON: Final = "application/json"
_TABLE: Final = CodeTable.default()
_PING_BODY: Final = b'{"ok": true}'


# --------------------------------------------------------------------------- configuration


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """The emulator's behaviour. Every field can be changed at runtime with
    :meth:`Emulator.configure`.

    Random faults draw one number per ``/v1/*`` request from ``random.Random(seed)``: with
    probability ``reset_rate`` the connection is reset, with ``transient_rate`` a random code of
    :data:`TRANSIENT_CODES` is answered, with ``fatal_rate`` one of :data:`FATAL_CODES`. All are
    answered before anything executes; the three rates must sum to at most 1.
    """

    plan_concurrency: int | None = None
    """Max generations in flight across all clients; over it ``/v1/generate`` answers 429
    ``GENERATION_CONCURRENCY_EXCEEDED`` at once (no Retry-After). ``None``: unlimited."""
    rate_limit: float | None = None
    """Token-bucket refill rate (requests per second) over all ``/v1/*`` requests; over it
    429 ``RATE_LIMITED`` with ``Retry-After`` and ``Retry-After-Ms``. ``None``: unlimited."""
    rate_burst: int = 10
    """Token-bucket capacity."""
    generation_time: float = 0.05
    """Seconds a generation takes; its plan slot is held that long."""
    transient_rate: float = 0.0
    """Probability of a random retryable failure."""
    fatal_rate: float = 0.0
    """Probability of a random non-retryable failure."""
    reset_rate: float = 0.0
    """Probability that the connection is reset before any response."""
    ready_after: float = 0.2
    """Seconds after ``POST /v1/jobs`` before ``GET /v1/jobs/{id}`` stops answering 425."""
    seed: int | None = 0
    """Seed of the random faults (``None``: unpredictable)."""

    def __post_init__(self) -> None:
        pc = self.plan_concurrency
        if pc is not None and not (_is_int(pc) and pc >= 1):
            raise ValueError(f"plan_concurrency must be None or an int >= 1, got {pc!r}")
        rl = self.rate_limit
        if rl is not None:
            if not (_is_number(rl) and math.isfinite(rl) and rl > 0):
                raise ValueError(f"rate_limit must be None or a finite number > 0, got {rl!r}")
            object.__setattr__(self, "rate_limit", float(rl))
        if not (_is_int(self.rate_burst) and self.rate_burst >= 1):
            raise ValueError(f"rate_burst must be an int >= 1, got {self.rate_burst!r}")
        for name in ("generation_time", "ready_after"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and 0 <= value <= _MAX_DELAY):
                raise ValueError(f"{name} must be a number in [0, {_MAX_DELAY:g}], got {value!r}")
            object.__setattr__(self, name, float(value))
        total = 0.0
        for name in ("transient_rate", "fatal_rate", "reset_rate"):
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
            total += value
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"transient_rate + fatal_rate + reset_rate must be at most 1, got {total:g}"
            )
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be None or an int, got {self.seed!r}")


# --------------------------------------------------------------------------- faults

FaultKind = Literal[
    "code",
    "reset",
    "reset_after_headers",
    "truncated",
    "malformed_json",
    "html",
    "empty",
    "big",
    "chunked",
    "gzip",
    "slow",
    "status",
]
"""What a :class:`Fault` does (its ``kind``); build faults with the ``Fault`` constructors."""
_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))


def _message(code: str) -> str:
    spec = _TABLE.get(code)
    return spec.message if spec is not None and spec.message else code


@lru_cache(maxsize=512)
def _envelope(code: str) -> bytes:
    msg = _message(code)
    return json.dumps({"ok": False, "code": code, "detail": msg, "error": msg}).encode()


def _status_of(code: str, status: int | None) -> int:
    if status is not None:
        return status
    spec = _TABLE.get(code)
    if spec is None:
        raise ValueError(f"unknown code {code!r}: pass status= to inject it")
    return spec.status


def _header_pairs(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple((headers or {}).items())


def _seconds_header(seconds: float) -> str:
    return str(max(0, math.ceil(seconds)))


def _ms_header(seconds: float) -> str:
    return str(max(0, math.ceil(seconds * 1000)))


_HTML_TEMPLATE: Final = (
    "<html>\r\n<head><title>{s}</title></head>\r\n<body>\r\n"
    "<center><h1>{s}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def _html_page(status: int) -> str:
    try:
        title = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        title = str(status)
    return _HTML_TEMPLATE.format(s=title)


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted fault, queued with :meth:`Emulator.inject`. Build it with a constructor:

    ``Fault.code(...)``, ``Fault.reset()``, ``Fault.reset_after_headers()``, ``Fault.truncated()``,
    ``Fault.malformed_json()``, ``Fault.html()``, ``Fault.empty()``, ``Fault.big()``,
    ``Fault.chunked()``, ``Fault.gzip()``, ``Fault.retry_after_header()``, ``Fault.slow()``,
    ``Fault.status()``. None of them executes a generation, except ``slow``, which only delays
    the normal answer.
    """

    kind: FaultKind
    http_status: int = 200
    error_code: str | None = None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if not (_is_int(self.http_status) and 200 <= self.http_status <= 599):
            raise ValueError(f"status must be an int in [200, 599], got {self.http_status!r}")
        if not (_is_number(self.delay) and math.isfinite(self.delay)):
            raise ValueError(f"delay must be a finite number, got {self.delay!r}")
        if not 0 <= self.delay <= _MAX_DELAY:
            raise ValueError(f"delay must be in [0, {_MAX_DELAY:g}], got {self.delay!r}")
        if not (_is_int(self.size) and self.size >= 0):
            raise ValueError(f"size must be an int >= 0, got {self.size!r}")
        if self.kind == "big":
            minimum = len(_envelope(self.error_code or "INTERNAL_ERROR"))
            if self.size < minimum:
                raise ValueError(f"size must be at least {minimum} for this code, got {self.size}")
        for name, value in self.headers:
            if any(c in name or c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} contains a line break or NUL")

    @classmethod
    def code(
        cls,
        code: str,
        *,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        status: int | None = None,
    ) -> Fault:
        """An error envelope for ``code`` with the table's status (or ``status``, required for a
        code not in the table). ``retry_after`` (seconds, sent rounded up) and ``retry_after_ms``
        add the ``Retry-After`` / ``Retry-After-Ms`` headers."""
        headers: list[tuple[str, str]] = []
        if retry_after is not None:
            headers.append(("Retry-After", _seconds_header(retry_after)))
        if retry_after_ms is not None:
            headers.append(("Retry-After-Ms", str(max(0, math.ceil(retry_after_ms)))))
        return cls("code", _status_of(code, status), code, headers=tuple(headers))

    @classmethod
    def reset(cls) -> Fault:
        """Reset the connection before sending anything: the client sees a disconnect."""
        return cls("reset")

    @classmethod
    def reset_after_headers(cls, status: int = 200) -> Fault:
        """Send the headers and part of the body, with a Content-Length larger than what is
        sent, then close: the client gets a payload error while reading."""
        return cls("reset_after_headers", status)

    @classmethod
    def truncated(cls, status: int = 503, code: str = "DISPATCH_TIMEOUT") -> Fault:
        """Like :meth:`reset_after_headers` for an error: half an envelope, then close."""
        return cls("truncated", status, code)

    @classmethod
    def malformed_json(cls, status: int = 503) -> Fault:
        """A body that claims to be JSON and is not."""
        return cls("malformed_json", status)

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """A proxy's HTML error page (``text/html``), no envelope."""
        return cls("html", status)

    @classmethod
    def empty(cls, status: int = 503) -> Fault:
        """No body at all (Content-Length 0)."""
        return cls("empty", status)

    @classmethod
    def big(
        cls, status: int = 500, size: int = 50 * 1024 * 1024, code: str = "INTERNAL_ERROR"
    ) -> Fault:
        """A ``size``-byte error body (a valid envelope padded with JSON whitespace) streamed in
        chunks with a Content-Length, never built in memory."""
        return cls("big", status, code, size=size)

    @classmethod
    def chunked(cls, status: int = 503, code: str = "DISPATCH_TIMEOUT") -> Fault:
        """The envelope sent with chunked transfer encoding (no Content-Length)."""
        return cls("chunked", status, code)

    @classmethod
    def gzip(cls, status: int = 503, code: str = "DISPATCH_TIMEOUT") -> Fault:
        """The envelope gzip-encoded (``Content-Encoding: gzip``)."""
        return cls("gzip", status, code)

    @classmethod
    def retry_after_header(cls, value: str, status: int = 429, code: str = "RATE_LIMITED") -> Fault:
        """An envelope with a raw ``Retry-After`` value: ``"-1"``, ``"garbage"``, ``"1.5"``, an
        HTTP-date..."""
        return cls("code", status, code, headers=(("Retry-After", value),))

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Wait ``delay`` seconds, then serve the request normally (a generation does run)."""
        return cls("slow", delay=delay)

    @classmethod
    def status(
        cls, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Fault:
        """Anything raw: this status, body and headers."""
        return cls("status", status, body=bytes(body), headers=_header_pairs(headers))


class _Pending:
    __slots__ = ("fault", "path", "remaining")

    def __init__(self, fault: Fault, remaining: int, path: str | None) -> None:
        self.fault = fault
        self.remaining = remaining
        self.path = path


# --------------------------------------------------------------------------- statistics


class Received(NamedTuple):
    """One request as received: the headers are the case-insensitive, read-only mapping."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """A snapshot of what the emulator saw and did (``/v1/*`` requests only).

    ``by_code`` counts answers by code: ``"ok"`` for 2xx/3xx, the envelope's code for errors,
    ``"reset"`` for connections cut (also mid-body), ``"HTTP_<status>"`` for raw non-envelope
    errors, ``"disconnected"`` when the client left before its body was read. ``executions``
    counts completed generations per job id, ``idempotency_executions`` per ``Idempotency-Key``;
    ``duplicates`` is the number of job ids executed more than once.
    """

    requests: int
    by_path: Counter[str]
    by_code: Counter[str]
    executions: Counter[str]
    idempotency_executions: Counter[str]
    generations: int
    max_in_flight: int
    in_flight: int
    duplicates: int
    request_ids: list[str]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything but ``request_ids``."""
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_code": dict(self.by_code),
            "executions": dict(self.executions),
            "idempotency_executions": dict(self.idempotency_executions),
            "generations": self.generations,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "duplicates": self.duplicates,
        }


class _Counters:
    __slots__ = (
        "by_code",
        "by_path",
        "duplicates",
        "executions",
        "generations",
        "idem",
        "in_flight",
        "max_in_flight",
        "request_ids",
        "requests",
    )

    def __init__(self, in_flight: int = 0) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_code: Counter[str] = Counter()
        self.executions: Counter[str] = Counter()
        self.idem: Counter[str] = Counter()
        self.generations = 0
        self.in_flight = in_flight
        self.max_in_flight = in_flight
        self.duplicates = 0
        self.request_ids: list[str] = []


# --------------------------------------------------------------------------- the server


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
        if not (_is_int(port) and 0 <= port <= 65535):
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
        base = config if config is not None else EmulatorConfig()
        self._config = replace(base, **settings) if settings else base
        self._port = port
        self._runner: web.AppRunner | None = None
        self._url: URL | None = None
        self._rng = random.Random(self._config.seed)
        self._tokens = float(self._config.rate_burst)
        self._stamp = time.monotonic()
        self._pending: deque[_Pending] = deque()
        self._seq = 0
        self._job_seq = 0
        self._jobs: dict[str, float] = {}
        self._st = _Counters()
        self._received: deque[Received] = deque(maxlen=RECEIVED_LOG_SIZE)

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
        self._config = new
        return new

    def inject(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """Answer the next ``times`` requests to ``path`` (exact, e.g. ``"/v1/generate"``; None:
        any ``/v1/*`` path) with ``fault``. Injected faults come first (before the rate limit and
        random faults) and are consumed in the order injected."""
        if not isinstance(fault, Fault):
            raise TypeError(f"inject takes a Fault, got {type(fault).__name__}")
        if not (_is_int(times) and times >= 1):
            raise ValueError(f"times must be an int >= 1, got {times!r}")
        if path is not None and not path.startswith("/v1/"):
            raise ValueError(f"path must be an exact /v1/... path, got {path!r}")
        self._pending.append(_Pending(fault, times, path))

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
            request_ids=list(st.request_ids),
        )

    def reset_stats(self) -> None:
        """Zero the counters and clear :attr:`received` (settings, jobs and queued faults stay;
        ``max_in_flight`` restarts from the generations in flight now)."""
        self._st = _Counters(self._st.in_flight)
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

        resp = await self._gate(request, path, rid)
        if resp is not None:
            return resp
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            return self._http_error(exc, record=True)
        if resp.status < 400:
            self._st.by_code["ok"] += 1
        return resp

    async def _gate(self, request: web.Request, path: str, rid: str) -> web.StreamResponse | None:
        """Injected faults, then the rate limit, then random faults; None lets the request in."""
        if self._pending:
            fault = self._take(path)
            if fault is not None:
                if fault.kind == "slow":
                    # Read the request first: the server has it all, then takes its time.
                    if await self._read(request) is None:
                        return self._gone()
                    await asyncio.sleep(fault.delay)
                    return None
                return await self._apply(fault, request, rid)
        config = self._config
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
                    "RATE_LIMITED",
                    headers={
                        "Retry-After": str(max(1, math.ceil(wait))),
                        "Retry-After-Ms": str(max(1, math.ceil(wait * 1000))),
                    },
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
        if status is None:
            spec = _TABLE.get(code)
            status = spec.status if spec is not None else 500
        if record:
            self._st.by_code[code] += 1
        return web.Response(
            status=status, body=_envelope(code), content_type=_JSON, headers=headers
        )

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
        transport = request.transport
        if transport is not None:
            transport.abort()
        # Never written: the transport is gone, aiohttp drops it quietly.
        return web.Response(status=500)

    async def _apply(self, fault: Fault, request: web.Request, rid: str) -> web.StreamResponse:
        kind = fault.kind
        status = fault.http_status
        code = fault.error_code or "INTERNAL_ERROR"
        if kind == "code":
            return self._error(code, status, headers=dict(fault.headers))
        if kind == "reset":
            return self._abort(request)
        if kind in ("reset_after_headers", "truncated"):
            self._record("reset")
            if kind == "truncated":
                body = _envelope(code)
            else:
                body = b'{"ok": true, "job": "' + b"x" * 64 + b'", "execution": 1}'
            resp = web.StreamResponse(status=status, headers={"Request-Id": rid})
            resp.content_type = _JSON
            resp.content_length = len(body)
            await resp.prepare(request)
            try:
                await resp.write(body[: len(body) // 2])
            except ConnectionError:
                return resp
            transport = request.transport
            if transport is not None:
                transport.close()  # flushes what was written, then FIN: a short body
            return resp
        if kind == "big":
            self._record(code)
            return await self._stream_big(request, rid, status, code, fault.size)
        if kind == "chunked":
            self._record(code)
            body = _envelope(code)
            resp = web.StreamResponse(status=status, headers={"Request-Id": rid})
            resp.content_type = _JSON
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                await resp.write(body[: len(body) // 2])
                await resp.write(body[len(body) // 2 :])
            except ConnectionError:
                pass
            return resp
        if kind == "gzip":
            self._record(code)
            return web.Response(
                status=status,
                body=_gzip.compress(_envelope(code)),
                content_type=_JSON,
                headers={"Content-Encoding": "gzip"},
            )
        self._record("ok" if status < 400 else f"HTTP_{status}")
        if kind == "malformed_json":
            return web.Response(
                status=status, body=b'{"ok": false, "code": "DISPATCH_TIM', content_type=_JSON
            )
        if kind == "html":
            return web.Response(status=status, text=_html_page(status), content_type="text/html")
        if kind == "empty":
            return web.Response(status=status)
        # "status": anything raw
        return web.Response(status=status, body=fault.body, headers=dict(fault.headers))

    async def _stream_big(
        self, request: web.Request, rid: str, status: int, code: str, size: int
    ) -> web.StreamResponse:
        head = _envelope(code)[:-1]  # the envelope without its closing brace
        resp = web.StreamResponse(status=status, headers={"Request-Id": rid})
        resp.content_type = _JSON
        resp.content_length = size
        await resp.prepare(request)
        try:
            await resp.write(head)
            left = size - len(head) - 1
            while left > 0:
                n = min(left, _CHUNK)
                await resp.write(_PAD if n == _CHUNK else _PAD[:n])
                left -= n
            await resp.write(b"}")
        except ConnectionError:
            pass  # the client stopped reading: fine, that is what it is for
        return resp

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
        return web.Response(body=body, content_type=_JSON)

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
        return web.Response(status=202, body=body, content_type=_JSON)

    async def _get_job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["id"]
        ready_at = self._jobs.get(job_id)
        if ready_at is None:
            return self._error("RESOURCE_NOT_FOUND")
        left = ready_at - time.monotonic()
        if left > 0:
            return self._error(
                "GENERATION_NOT_READY",
                headers={"Retry-After": _seconds_header(left), "Retry-After-Ms": _ms_header(left)},
            )
        body = json.dumps({"ok": True, "id": job_id, "status": "done"}).encode()
        return web.Response(body=body, content_type=_JSON)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        raw = await self._read(request)
        if raw is None:
            return self._gone()
        digest = hashlib.sha256(raw).hexdigest()
        body = json.dumps({"ok": True, "len": len(raw), "sha256": digest}).encode()
        return web.Response(body=body, content_type=_JSON)

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_PING_BODY, content_type=_JSON)

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
        if not (math.isfinite(delay) and 0 <= delay <= _MAX_DELAY):
            return self._error("VALIDATION_ERROR")
        await asyncio.sleep(delay)
        return web.Response(
            body=json.dumps({"ok": True, "delay": delay}).encode(), content_type=_JSON
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


# --------------------------------------------------------------------------- out of process


def _cli_args(config: EmulatorConfig) -> list[str]:
    """The ``python -m resilience.testing`` options reproducing ``config``."""
    args: list[str] = []
    for f in fields(config):
        value = getattr(config, f.name)
        args += [f"--{f.name.replace('_', '-')}", "none" if value is None else repr(value)]
    return args


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
        if not (_is_int(port) and 0 <= port <= 65535):
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
        if not (_is_number(duration) and duration > 0):
            raise ValueError(f"duration must be a number > 0, got {duration!r}")
        self._argv = [
            sys.executable,
            "-m",
            "resilience.testing",
            "--port",
            str(port),
            "--duration",
            repr(float(duration)),
            *_cli_args(self.config),
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
