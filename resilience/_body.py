"""Request bodies: can this one be sent again intact?"""

from __future__ import annotations

from aiohttp import multipart
from aiohttp import payload as pl

__all__ = ["is_replayable"]


def is_replayable(body: object) -> bool:
    """True when aiohttp can send ``body`` again byte for byte.

    aiohttp silently sends a consumed stream as an empty body on a second ``handler()`` call,
    so anything that cannot rewind (async generators, stream readers, pipes) must be sent once.
    Uses payload internals, checked against aiohttp 3.12-3.14.
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
