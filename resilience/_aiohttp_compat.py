"""Every aiohttp detail the middleware relies on that is not public API, in one place.

Each function names the private attribute it touches and the aiohttp versions it was checked
against (3.12.1 - 3.14); ``tests/test_aiohttp_compat.py`` pins each one, so an aiohttp release
that changes one fails a test named after it instead of breaking requests. Public APIs are used
wherever they exist (``ClientRequest.session`` since 3.12.0).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import aiohttp
from aiohttp import ClientMiddlewareType, ClientRequest, ClientResponse, multipart
from aiohttp import payload as pl

__all__ = [
    "aiohttp_will_resend",
    "body_is_cached",
    "cache_body",
    "is_replayable",
    "session_middlewares",
    "set_session_middlewares",
    "unread",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""RFC 9110's idempotent methods; aiohttp's hidden resend uses the same set."""

_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


# --- sessions: middlewares live in ``ClientSession._middlewares`` (no setter exists) ---------


def session_middlewares(session: aiohttp.ClientSession) -> tuple[ClientMiddlewareType, ...]:
    """The session's middleware tuple."""
    current = getattr(session, "_middlewares", None)
    if not isinstance(current, tuple):
        raise RuntimeError("this aiohttp version keeps no session middlewares (need >= 3.12.1)")
    return current


def set_session_middlewares(
    session: aiohttp.ClientSession, middlewares: Sequence[ClientMiddlewareType]
) -> None:
    session._middlewares = tuple(middlewares)


# --- responses: the body cache (``ClientResponse._body``) and the stream's ``unread_data`` ----


def cache_body(resp: ClientResponse, data: bytes) -> None:
    """Keep a body read by the classifier where ``ClientResponse.read()`` looks first."""
    resp._body = data


def body_is_cached(resp: ClientResponse) -> bool:
    return resp._body is not None


def unread(resp: ClientResponse, data: bytes) -> None:
    """Push bytes back onto the response stream, so the caller's ``read()`` sees them.

    ``StreamReader.unread_data`` is deprecated (and gone in aiohttp 4): the one alternative,
    buffering the whole body, is what the envelope cap exists to avoid.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        resp.content.unread_data(data)


# --- the hidden resend: ``ClientSession._retry_connection`` ----------------------------------


def aiohttp_will_resend(req: ClientRequest, exc: BaseException) -> bool:
    """Mirror of aiohttp's own condition for resending a request once (client.py ``_request``):
    an idempotent request whose connection broke (not one that was never sent)."""
    if req.method not in IDEMPOTENT_METHODS or isinstance(exc, _NOT_SENT):
        return False
    if not isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError):
        return False
    return bool(getattr(req.session, "_retry_connection", False))


# --- request bodies: can this payload be sent again intact? ----------------------------------


def is_replayable(body: object) -> bool:
    """True when aiohttp can send ``body`` again byte for byte.

    aiohttp silently sends a consumed stream as an empty body on a second ``handler()`` call,
    so anything that cannot rewind (async generators, stream readers, pipes) must be sent once.
    Uses ``Payload.consumed`` (3.12.1+), ``MultipartWriter._parts``,
    ``AsyncIterablePayload._cached_chunks`` and ``IOBasePayload._value``.
    """
    if not isinstance(body, pl.Payload):
        return True  # b"" (no body)
    if body.consumed:
        return False
    if isinstance(body, multipart.MultipartWriter):
        return all(is_replayable(part) for part, _, _ in body._parts)
    if isinstance(body, pl.AsyncIterablePayload):
        return getattr(body, "_cached_chunks", None) is not None
    if isinstance(body, multipart.BodyPartReaderPayload):
        return False
    if isinstance(body, pl.IOBasePayload):
        try:
            return bool(body._value.seekable())
        except Exception:
            return False
    return True
