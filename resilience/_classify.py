"""Response -> Verdict: read the error envelope (bounded), parse Retry-After, look up the code."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp

from . import _aiohttp_compat as compat
from ._codes import MAX_CODE_LENGTH, STATUS_FALLBACK, CodeTable, ErrorSpec, Handling

__all__ = ["Verdict", "classify_response", "parse_retry_after", "read_envelope"]

HUGE_RETRY_AFTER: Final = 1e12  # seconds; what an absurd Retry-After is read as
_DIGITS: Final = re.compile(r"^\s*[0-9]+\s*$")
_MS: Final = re.compile(r"^\s*[0-9]+(\.[0-9]+)?\s*$")
_MAX_DIGITS: Final = 15  # integer digits kept: 10**15 ms is 30,000 years
_SERVER_ID_HEADERS: Final = ("X-Request-ID", "Request-Id", "X-Amzn-RequestId")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one response (or transport error) means for the retry loop."""

    handling: Handling
    status: int | None = None
    code: str | None = None
    detail: str | None = None
    retry_after: float | None = None
    server_request_id: str | None = None
    error: str | None = None  # transport exception class name
    known_code: bool = False  # the code was found in the table (not a status fallback)

    @property
    def retryable(self) -> bool:
        return self.handling.retryable


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait, or None when it asked nothing usable.

    ``Retry-After-Ms`` (milliseconds, as OpenAI-style APIs send) wins when valid. ``Retry-After``
    is delay-seconds (``1*DIGIT``) or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
    Negative, fractional or garbage values are ignored (go-retryablehttp's reading), so the
    backoff schedule applies instead.
    """
    raw_ms = headers.get("Retry-After-Ms")
    if raw_ms is not None and _MS.match(raw_ms):
        return min(_bounded_number(raw_ms) / 1000.0, HUGE_RETRY_AFTER)
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    if _DIGITS.match(raw):
        return min(_bounded_number(raw), HUGE_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime form: RFC 9110 says it is UTC
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _bounded_number(text: str) -> float:
    """A non-negative decimal (already matched) of any length, as a float.

    Leading zeros are dropped before the length check, so a zero-padded value reads as itself;
    a value with more integer digits than any real wait is infinity (a wait past any deadline,
    never an overflow nor a slow parse of a huge integer).
    """
    whole, _, fraction = text.strip().partition(".")
    whole = whole.lstrip("0")
    if len(whole) > _MAX_DIGITS:
        return math.inf
    return float(f"{whole or '0'}.{fraction[:_MAX_DIGITS] or '0'}")


def server_request_id(headers: Mapping[str, str]) -> str | None:
    for name in _SERVER_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value[:200]
    return None


async def read_envelope(resp: aiohttp.ClientResponse, cap: int) -> Mapping[str, Any] | None:
    """The JSON error envelope of a response, reading at most ``cap`` decoded bytes.

    A body that fits is kept on the response, so the caller can still ``await resp.json()``.
    A larger body is left unread (known length) or pushed back onto the stream, so the caller
    reads it whole. HTML, malformed JSON and non-object JSON give None.
    """
    length = resp.content_length
    if length is not None and length > cap:
        return None
    body = bytearray()
    while len(body) <= cap:
        chunk = await resp.content.read(cap + 1 - len(body))
        if not chunk:
            break
        body += chunk
    data = bytes(body)
    if len(data) > cap or not resp.content.at_eof():
        # Too big to classify: give the bytes back so the caller's read() sees the whole body.
        compat.unread(resp, data)
        return None
    # The body is complete: cache it where ClientResponse.read() looks first.
    compat.cache_body(resp, data)
    try:
        decoded = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the recursion limit
        return None
    return decoded if isinstance(decoded, dict) else None


def classify(
    status: int, envelope: Mapping[str, Any] | None, table: CodeTable
) -> tuple[Handling, str | None, str | None, bool]:
    """(handling, code, detail, known): the code decides; the status is the fallback."""
    if status < 400:
        return Handling.OK, None, None, False
    code = envelope.get("code") if envelope else None
    detail = envelope.get("detail") or envelope.get("error") if envelope else None
    code = code[:MAX_CODE_LENGTH] if isinstance(code, str) and code else None  # bounded
    detail = str(detail)[:500] if detail is not None else None
    spec: ErrorSpec | None = table.get(code) if code else None
    if spec is not None:
        return spec.how, code, detail, True
    return STATUS_FALLBACK.get(status, Handling.PERMANENT), code, detail, False


async def classify_response(
    resp: aiohttp.ClientResponse, table: CodeTable, envelope_cap: int
) -> Verdict:
    """Classify a response; reads the body only for status >= 400 and only within the cap."""
    if resp.status < 400:
        return Verdict(Handling.OK, status=resp.status)  # server id looked up only if logged
    headers = resp.headers
    server_id = server_request_id(headers)
    envelope = await read_envelope(resp, envelope_cap)
    handling, code, detail, known = classify(resp.status, envelope, table)
    return Verdict(
        handling,
        status=resp.status,
        code=code,
        detail=detail,
        retry_after=parse_retry_after(headers),
        server_request_id=server_id,
        known_code=known,
    )
