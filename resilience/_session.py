"""Give an existing ``ClientSession`` the middleware."""

from __future__ import annotations

from typing import Any

import aiohttp

from . import _aiohttp_compat as compat
from ._middleware import ResilienceMiddleware

__all__ = ["wrap"]


def wrap(
    session: aiohttp.ClientSession, middleware: ResilienceMiddleware | None = None, **settings: Any
) -> aiohttp.ClientSession:
    """Install the middleware on a session you already have, outermost, and return the session.

    aiohttp takes middlewares only at construction or per request, so this sets the session's
    middleware tuple in place: every later request through ``session`` is covered (a request
    passing its own ``middlewares=`` replaces them, as in aiohttp). ``settings`` build a new
    :class:`ResilienceMiddleware` when none is given. Wrapping a session that already has a
    resilience middleware is a no-op: the one in place stays (two would multiply attempts).
    """
    if middleware is None:
        middleware = ResilienceMiddleware(**settings)
    elif settings:
        raise TypeError("pass either a middleware or settings for one, not both")
    if not isinstance(session, aiohttp.ClientSession):
        raise TypeError(f"wrap() takes an aiohttp.ClientSession, got {type(session).__name__}")
    if session.closed:
        raise RuntimeError("cannot wrap a closed session")
    current = compat.session_middlewares(session)
    if not any(isinstance(m, ResilienceMiddleware) for m in current):
        compat.set_session_middlewares(session, (middleware, *current))
    return session
