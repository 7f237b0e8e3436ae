"""Scripted faults: :class:`Fault` values, queued with :meth:`Emulator.inject`, and how each
one is served (error envelopes, resets, short, malformed, huge, chunked and gzip bodies).
"""

from __future__ import annotations

import gzip as _gzip
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Final, Literal, get_args

from aiohttp import web

from resilience._codes import CodeTable
from resilience.testing._settings import MAX_DELAY, is_int, is_number

__all__ = [
    "JSON_TYPE",
    "Fault",
    "FaultKind",
    "Pending",
    "abort",
    "envelope",
    "error_response",
    "ms_header",
    "seconds_header",
    "serve",
]

JSON_TYPE: Final = "application/json"
_TABLE: Final = CodeTable.default()
_CHUNK: Final = 64 * 1024
_PAD: Final = b" " * _CHUNK

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
def envelope(code: str) -> bytes:
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


def seconds_header(seconds: float) -> str:
    return str(max(0, math.ceil(seconds)))


def ms_header(seconds: float) -> str:
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
        if not (is_int(self.http_status) and 200 <= self.http_status <= 599):
            raise ValueError(f"status must be an int in [200, 599], got {self.http_status!r}")
        if not (is_number(self.delay) and math.isfinite(self.delay)):
            raise ValueError(f"delay must be a finite number, got {self.delay!r}")
        if not 0 <= self.delay <= MAX_DELAY:
            raise ValueError(f"delay must be in [0, {MAX_DELAY:g}], got {self.delay!r}")
        if not (is_int(self.size) and self.size >= 0):
            raise ValueError(f"size must be an int >= 0, got {self.size!r}")
        if self.kind == "big":
            minimum = len(envelope(self.error_code or "INTERNAL_ERROR"))
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
            headers.append(("Retry-After", seconds_header(retry_after)))
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


class Pending:
    """An injected fault and how many answers it has left."""

    __slots__ = ("fault", "path", "remaining")

    def __init__(self, fault: Fault, remaining: int, path: str | None) -> None:
        self.fault = fault
        self.remaining = remaining
        self.path = path


Record = Callable[[str], None]
"""Counts one answer under a label of :attr:`EmulatorStats.by_code`."""


def error_response(
    code: str, status: int | None = None, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The error envelope of ``code``, with the table's status (500 for unknown codes)."""
    if status is None:
        spec = _TABLE.get(code)
        status = spec.status if spec is not None else 500
    return web.Response(status=status, body=envelope(code), content_type=JSON_TYPE, headers=headers)


def abort(request: web.Request) -> web.Response:
    """Reset the connection; the response returned is never written."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Never written: the transport is gone, aiohttp drops it quietly.
    return web.Response(status=500)


async def serve(fault: Fault, request: web.Request, rid: str, record: Record) -> web.StreamResponse:
    """Answer ``request`` with ``fault`` (any kind but ``slow``), counting it with ``record``."""
    kind = fault.kind
    status = fault.http_status
    code = fault.error_code or "INTERNAL_ERROR"
    if kind == "code":
        record(code)
        return error_response(code, status, headers=dict(fault.headers))
    if kind == "reset":
        record("reset")
        return abort(request)
    if kind in ("reset_after_headers", "truncated"):
        record("reset")
        return await _cut_short(fault, request, rid, code)
    if kind == "big":
        record(code)
        return await _stream_big(request, rid, status, code, fault.size)
    if kind == "chunked":
        record(code)
        return await _chunked(request, rid, status, code)
    if kind == "gzip":
        record(code)
        return web.Response(
            status=status,
            body=_gzip.compress(envelope(code)),
            content_type=JSON_TYPE,
            headers={"Content-Encoding": "gzip"},
        )
    record("ok" if status < 400 else f"HTTP_{status}")
    if kind == "malformed_json":
        return web.Response(
            status=status, body=b'{"ok": false, "code": "DISPATCH_TIM', content_type=JSON_TYPE
        )
    if kind == "html":
        return web.Response(status=status, text=_html_page(status), content_type="text/html")
    if kind == "empty":
        return web.Response(status=status)
    # "status": anything raw
    return web.Response(status=status, body=fault.body, headers=dict(fault.headers))


async def _cut_short(fault: Fault, request: web.Request, rid: str, code: str) -> web.StreamResponse:
    if fault.kind == "truncated":
        body = envelope(code)
    else:
        body = b'{"ok": true, "job": "' + b"x" * 64 + b'", "execution": 1}'
    resp = web.StreamResponse(status=fault.http_status, headers={"Request-Id": rid})
    resp.content_type = JSON_TYPE
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


async def _chunked(request: web.Request, rid: str, status: int, code: str) -> web.StreamResponse:
    body = envelope(code)
    resp = web.StreamResponse(status=status, headers={"Request-Id": rid})
    resp.content_type = JSON_TYPE
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        await resp.write(body[: len(body) // 2])
        await resp.write(body[len(body) // 2 :])
    except ConnectionError:
        pass
    return resp


async def _stream_big(
    request: web.Request, rid: str, status: int, code: str, size: int
) -> web.StreamResponse:
    head = envelope(code)[:-1]  # the envelope without its closing brace
    resp = web.StreamResponse(status=status, headers={"Request-Id": rid})
    resp.content_type = JSON_TYPE
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
