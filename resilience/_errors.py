"""Exceptions the middleware raises."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp

from ._events import DEFAULT_REDACTION, Redaction, redact_url

__all__ = ["AccountStopped", "ApiError", "CircuitOpen", "DeadlineExceeded"]


class ApiError(aiohttp.ClientResponseError):
    """The final error response, raised when ``raise_api_errors=True``.

    A ``ClientResponseError``, so ``except aiohttp.ClientResponseError`` still catches it; adds
    what the code table and the retry loop know.
    """

    def __init__(
        self,
        request_info: aiohttp.RequestInfo,
        history: Sequence[aiohttp.ClientResponse],
        *,
        status: int,
        error_code: str | None,
        detail: str | None,
        retryable: bool,
        request_id: str,
        attempts: int,
        server_request_id: str | None = None,
        headers: Any = None,
        redaction: Redaction = DEFAULT_REDACTION,
    ) -> None:
        code = error_code
        message = f"{code or 'HTTP ' + str(status)}: {detail}" if detail else (code or "")
        super().__init__(
            request_info, tuple(history), status=status, message=message, headers=headers
        )
        self.error_code = code
        """The envelope's error code (None when the body had no envelope). ``code`` stays
        aiohttp's: an int alias of ``status``."""
        self.detail = detail
        self.retryable = retryable
        self.request_id = request_id
        self.attempts = attempts
        self.server_request_id = server_request_id
        self._redaction = redaction

    def __str__(self) -> str:
        # aiohttp's str() shows the full URL; keep credentials in query strings out of it.
        url = redact_url(self.request_info.real_url, self._redaction)
        return f"{self.status}, message={self.message!r}, url={url!r}"


if sys.version_info >= (3, 11):
    _TimeoutBase = TimeoutError  # asyncio.TimeoutError is the builtin since 3.11
else:  # pragma: no cover - 3.10

    class _TimeoutBase(asyncio.TimeoutError, TimeoutError):
        """Both timeouts, so ``except TimeoutError`` and ``except asyncio.TimeoutError`` work."""


class DeadlineExceeded(aiohttp.ClientError, _TimeoutBase):
    """No attempt could be sent before ``max_elapsed``: the rate gate stayed closed, or no
    concurrency permit came. A ``TimeoutError``.

    ``attempts`` counts the attempts that were sent; ``last_status``/``last_code`` describe the
    last answer (None when nothing was sent).
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        attempts: int = 0,
        last_status: int | None = None,
        last_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.attempts = attempts
        self.last_status = last_status
        self.last_code = last_code


class CircuitOpen(aiohttp.ClientError):
    """The origin's circuit breaker is open (an outage) and stays open past this request's
    ``max_elapsed``: it failed at once, unsent.

    ``origin`` is the origin; ``retry_in`` the seconds until the breaker lets a probe through;
    ``last_code`` the last outage failure's code (or transport error class).
    """

    def __init__(
        self,
        *,
        origin: str,
        retry_in: float,
        last_code: str | None,
        request_id: str | None = None,
        attempts: int = 0,
    ) -> None:
        self.origin = origin
        self.retry_in = retry_in
        self.last_code = last_code
        self.request_id = request_id
        self.attempts = attempts
        super().__init__(
            f"circuit open for {origin} after outage failures (last: {last_code or 'unknown'}); "
            f"it probes again in {retry_in:.1f} s"
        )


class AccountStopped(ApiError):
    """Not sent: an earlier request with the same credentials to this origin was answered by an
    account-level stop (401 ``AUTH_*`` or 402 ``BILLING_INSUFFICIENT_CREDITS``), and the
    recheck interval has not passed. Carries that answer's status and code, like the
    :class:`ApiError` it is; ``recheck_in`` says when one request will be let through.
    """

    def __init__(
        self,
        request_info: aiohttp.RequestInfo,
        *,
        status: int,
        error_code: str,
        detail: str | None,
        request_id: str,
        age: float,
        recheck_in: float,
        redaction: Redaction = DEFAULT_REDACTION,
    ) -> None:
        self.recheck_in = recheck_in
        reason = (
            f"not sent: a request with the same credentials was answered {status} {error_code} "
            f"{age:.1f} s ago; one request will recheck in {recheck_in:.1f} s"
        )
        super().__init__(
            request_info,
            (),
            status=status,
            error_code=error_code,
            detail=f"{detail} ({reason})" if detail else reason,
            retryable=False,
            request_id=request_id,
            attempts=0,
            redaction=redaction,
        )
