"""Account-level stop answers: one 401 ``AUTH_*`` or 402 ``BILLING_INSUFFICIENT_CREDITS`` speaks
for every request made with the same credentials, so the following ones are not sent.

Pure: time passed in. Credentials are compared as a keyed BLAKE2b digest (a key made for this
process), made only when a comparison is needed; neither they nor the digest are ever logged,
and a guard keeps a request's credential values only as long as the request (they are in its
headers anyway).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from yarl import URL

from ._events import DEFAULT_REDACTION, Redaction
from ._validate import header_name, number

__all__ = [
    "DEFAULT_ACCOUNT_STOP",
    "DEFAULT_STOP_CODES",
    "AccountGuard",
    "AccountStop",
    "AccountStops",
    "Stopped",
    "credentials_key",
]

DEFAULT_STOP_CODES: Final = frozenset(
    {
        "AUTH_INVALID_SESSION",
        "AUTH_REQUIRED",
        "AUTH_SESSION_EXPIRED",
        "AUTH_USER_UNAVAILABLE",
        "BILLING_INSUFFICIENT_CREDITS",
    }
)
"""The table's 401 ``AUTH_*`` codes and the 402: they describe the credentials, not a request.
(403 ``AUTH_ADMIN_*`` are about one endpoint, so they are not here.)"""

MAX_STOPPED: Final = 4096
"""Stopped credential sets remembered at once; the oldest is forgotten first (it is rechecked)."""

RECHECK_STALE: Final = 600.0
"""Seconds after which a recheck still in flight no longer holds the one recheck slot (its
task must have died without ending it: every ending frees the slot at once)."""

_PROCESS_KEY: Final = os.urandom(32)


@dataclass(frozen=True, slots=True)
class AccountStop:
    """Settings of the account-level stop. Pass ``account_stop=None`` to send every request.

    Args:
        recheck_interval: seconds after a stop answer before one request with the same
            credentials is let through to see whether they (or the credits) are back.
        codes: the error codes that stop the account.
        credential_headers: request headers whose values identify the credentials (with the
            URL's userinfo and secret-looking query parameters). Case-insensitive.
    """

    recheck_interval: float = 10.0
    codes: frozenset[str] = DEFAULT_STOP_CODES
    credential_headers: tuple[str, ...] = field(
        default=("Authorization", "X-API-Key", "Api-Key", "Cookie")
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "recheck_interval",
            number("AccountStop.recheck_interval", self.recheck_interval, above=0, high=86400),
        )
        if isinstance(self.codes, str) or not all(isinstance(c, str) and c for c in self.codes):
            raise TypeError("AccountStop.codes must be a set of non-empty code strings")
        object.__setattr__(self, "codes", frozenset(self.codes))
        headers = self.credential_headers
        if isinstance(headers, str) or not isinstance(headers, tuple | list):
            raise TypeError("AccountStop.credential_headers must be a tuple of header names")
        names = tuple(header_name("AccountStop.credential_headers", h) for h in headers)
        object.__setattr__(self, "credential_headers", names)


def credentials_key(
    origin: str,
    headers: Mapping[str, str],
    url: URL,
    names: Iterable[str],
    redaction: Redaction = DEFAULT_REDACTION,
) -> bytes:
    """A keyed digest of the origin and every credential the request carries: the headers
    ``names``, the URL's userinfo, and what the redaction hides (secret query parameters,
    secrets in the path)."""
    digest = hashlib.blake2b(key=_PROCESS_KEY, digest_size=16)
    digest.update(origin.encode())
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        digest.update(b"\0h" + name.lower().encode() + b"\0" + value.encode("utf-8", "replace"))
    if url.user is not None or url.password is not None:
        digest.update(
            b"\0u" + (url.raw_user or "").encode() + b":" + (url.raw_password or "").encode()
        )
    for name, value in url.query.items():
        if redaction.is_secret(name):
            digest.update(b"\0q" + name.encode() + b"\0" + value.encode())
    for secret in redaction.secrets_in_path(url.raw_path):
        digest.update(b"\0p" + secret.encode())
    return digest.digest()


DEFAULT_ACCOUNT_STOP: Final = AccountStop()
"""The account stop every middleware has unless told otherwise (``account_stop=None``)."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """Why a request is not sent: the stop answer that came for its credentials."""

    status: int
    code: str
    detail: str | None
    since: float  # when the stop answer came (monotonic seconds)
    recheck_at: float  # when one request will be let through to recheck


@dataclass(slots=True)
class _Entry:
    stop: Stopped
    recheck_since: float | None = None  # a recheck request in flight since then


@dataclass(frozen=True, slots=True)
class Go:
    """Send the request; ``recheck``: it is the one request checking a stopped account."""

    recheck: bool


_SEND: Final = Go(recheck=False)


class AccountStops:
    """Which credential sets are stopped, and the one recheck each is allowed."""

    __slots__ = ("settings", "stopped")

    def __init__(self, settings: AccountStop) -> None:
        self.settings = settings
        # The stopped credential sets by key (read-only outside): while it is empty, a request
        # needs no guard, no digest and no check (the loop tests it before each attempt).
        self.stopped: dict[bytes, _Entry] = {}

    def check(self, key: bytes, now: float) -> Go | Stopped:
        entry = self.stopped.get(key)
        if entry is None:
            return _SEND
        if now < entry.stop.recheck_at:
            return entry.stop
        since = entry.recheck_since
        # The recheck in flight holds the slot until its answer (or abandon) frees it; only one
        # whose answer can never come (its task died unseen) frees it after RECHECK_STALE.
        if since is None or now >= since + max(self.settings.recheck_interval, RECHECK_STALE):
            entry.recheck_since = now
            return Go(recheck=True)
        return entry.stop

    def record(
        self,
        key: bytes,
        go: Go,
        now: float,
        *,
        status: int | None,
        code: str | None,
        detail: str | None,
    ) -> None:
        """An answer came for a request sent with these credentials."""
        if self.is_stop(status, code):
            assert status is not None
            assert code is not None
            self.stopped.pop(key, None)  # re-inserted last: the oldest is evicted first
            stop = Stopped(status, code, detail, now, now + self.settings.recheck_interval)
            self.stopped[key] = _Entry(stop)
            if len(self.stopped) > MAX_STOPPED:
                del self.stopped[next(iter(self.stopped))]
        elif go.recheck:
            # Only an answer to a request sent after the stop proves the account is back: one
            # that was already in flight may have been admitted before the credits ran out.
            self.stopped.pop(key, None)

    def is_stop(self, status: int | None, code: str | None) -> bool:
        """Is this answer an account-level stop (it says so for every request of the key)?"""
        return code is not None and code in self.settings.codes and status is not None

    def abandon(self, key: bytes, go: Go) -> None:
        """The recheck ended without an answer (cancelled, transport error): free its slot."""
        entry = self.stopped.get(key)
        if go.recheck and entry is not None:
            entry.recheck_since = None

    def __len__(self) -> int:
        return len(self.stopped)


class AccountGuard:
    """The account stop as one logical request meets it: checked before each attempt, told
    how each ended. Made only when it matters (some account is stopped, or an answer stops
    this one): most requests never make one. The credentials are read from ``headers``, the
    request's headers as this middleware saw them before the first send (the loop copies
    them: an inner middleware's changes come later and must not change the key between the
    check and the answer), and digested only once."""

    __slots__ = ("_go", "_headers", "_key", "_origin", "_redaction", "_stops", "_url")

    def __init__(
        self,
        stops: AccountStops,
        origin: str,
        headers: Mapping[str, str],
        url: URL,
        redaction: Redaction = DEFAULT_REDACTION,
        *,
        sent: bool = False,
    ) -> None:
        self._stops = stops
        self._origin, self._url, self._redaction = origin, url, redaction
        self._headers = headers
        self._key: bytes | None = None
        # ``sent``: made for an answer that came (no account was stopped when it was sent).
        self._go: Go | None = _SEND if sent else None

    def _digest(self) -> bytes:
        key = self._key
        if key is None:
            names = self._stops.settings.credential_headers
            key = self._key = credentials_key(
                self._origin, self._headers, self._url, names, self._redaction
            )
        return key

    def check(self, now: float) -> Stopped | None:
        """None: send the attempt. A :class:`Stopped`: fail it unsent."""
        stops = self._stops
        decision = stops.check(self._digest(), now) if stops.stopped else _SEND
        if isinstance(decision, Stopped):
            self._go = None
            return decision
        self._go = decision
        return None

    def ended(self, now: float, status: int | None, code: str | None, detail: str | None) -> None:
        """The attempt ended: with an answer (``status``), or without one (None)."""
        go, self._go = self._go, None
        if go is None:
            return
        if status is None:
            if go.recheck:
                self._stops.abandon(self._digest(), go)
        elif go.recheck or self._stops.is_stop(status, code):
            self._stops.record(self._digest(), go, now, status=status, code=code, detail=detail)
