"""The emulator's rate limits as real servers answer them.

Two limiters, both over every ``/v1/*`` request: the token bucket (``rate_limit`` per second,
``rate_burst`` deep) and an optional fixed window (``window_limit`` requests per
``window_seconds``, windows aligned to the wall clock, as limiters keyed on
``floor(time / window)`` are). Their 429 ``RATE_LIMITED`` carries ``Retry-After`` in the style
``retry_after_style`` names; the fixed window also announces itself on every answer in the
header style ``quota_headers`` names.
"""

from __future__ import annotations

import math
import time
from email.utils import formatdate
from typing import Final

__all__ = [
    "QUOTA_HEADER_STYLES",
    "RETRY_AFTER_STYLES",
    "FixedWindow",
    "quota_headers",
    "retry_after_headers",
]

RETRY_AFTER_STYLES: Final = ("ms", "seconds", "date")
"""``ms``: ``Retry-After`` in whole seconds (rounded up, >= 1) plus ``Retry-After-Ms``;
``seconds``: the whole seconds alone (what most servers send, RFC 9110 delay-seconds);
``date``: an HTTP-date (one-second resolution, rounded up)."""

QUOTA_HEADER_STYLES: Final = ("ietf", "ietf-old", "x", "x-unix", "none")
"""``ietf``: the current draft's ``RateLimit-Policy: "window";q=N;w=W`` and
``RateLimit: "window";r=R;t=T``; ``ietf-old``: ``RateLimit-Limit`` / ``-Remaining`` /
``-Reset``; ``x``: ``X-RateLimit-*`` with Reset in delta seconds; ``x-unix``: the same with
Reset as a Unix timestamp (GitHub); ``none``: no announcement. Delta resets are whole seconds
rounded up, as the drafts define them."""


def retry_after_headers(wait: float, style: str, wall: float | None = None) -> dict[str, str]:
    """The headers of a 429 asking to wait ``wait`` seconds, in ``style``."""
    seconds = max(1, math.ceil(wait))
    if style == "date":
        now = time.time() if wall is None else wall
        return {"Retry-After": formatdate(math.ceil(now + wait), usegmt=True)}
    headers = {"Retry-After": str(seconds)}
    if style == "ms":
        headers["Retry-After-Ms"] = str(max(1, math.ceil(wait * 1000)))
    return headers


def quota_headers(
    style: str, limit: int, window: float, remaining: int, reset_at: float, wall: float
) -> dict[str, str]:
    """A fixed window's announcement: ``limit`` per ``window`` s, ``remaining`` until the
    wall-clock time ``reset_at`` (it is ``wall`` now)."""
    delta = str(max(0, math.ceil(reset_at - wall - 1e-9)))
    if style == "ietf":
        return {
            "RateLimit-Policy": f'"window";q={limit};w={window:g}',
            "RateLimit": f'"window";r={remaining};t={delta}',
        }
    if style == "ietf-old":
        return {
            "RateLimit-Limit": f"{limit}, {limit};w={window:g}",
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": delta,
        }
    if style in ("x", "x-unix"):
        reset = str(math.ceil(reset_at - 1e-9)) if style == "x-unix" else delta
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": reset,
        }
    return {}


class FixedWindow:
    """``limit`` requests per ``window`` seconds, windows starting at multiples of ``window``
    on the wall clock."""

    __slots__ = ("_index", "_used", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._index = -1
        self._used = 0

    def admit(self, wall: float) -> tuple[bool, int, float]:
        """Count one request at wall-clock time ``wall``: whether it is admitted, what remains
        of the window after it, and when the window resets (wall-clock time)."""
        index = math.floor(wall / self.window)
        if index != self._index:
            self._index, self._used = index, 0
        admitted = self._used < self.limit
        if admitted:
            self._used += 1
        return admitted, self.limit - self._used, (index + 1) * self.window
