"""What one attempt was and how it ended: the ``Outcome`` and the ``AttemptRecord``.

The record is the single definition of the ``resilience.attempt`` log event's fields: the log
emitter, the log reader, the hooks and the docs' table (``docs/howto/read-logs.md``) are all
built from it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, Final

__all__ = ["ATTEMPT_FIELDS", "AttemptRecord", "Outcome"]


class Outcome(str, enum.Enum):
    """What the middleware did after an attempt (the ``outcome`` field)."""

    OK = "ok"  # success, returned to the caller
    RETRY = "retry"  # retryable failure; sending again after ``delay``
    THROTTLED = "throttled"  # 429 plan or rate limit; sending again when allowed
    NOT_READY = "not_ready"  # 425; polling again after ``delay``
    GIVE_UP = "give_up"  # retryable, but stopping (see ``reason``); returned or raised
    FAIL = "fail"  # not retryable; returned or raised
    HELD = "held"  # waited unsent while the origin's circuit breaker was open; sent next


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt, as logged (event ``resilience.attempt``) and as hooks see it.

    Times are seconds. ``url`` is redacted (no userinfo, no secret query values).
    """

    request_id: str  # the logical request's ID (the X-Request-ID header), stable across retries
    method: str
    url: str
    attempt: int  # 1 for the first attempt of the logical request
    status: int | None  # HTTP status; None for a transport error or an unsent attempt
    code: str | None  # the envelope's error code
    handling: str  # the code table's handling: ok, transient, permanent, ...
    retryable: bool
    outcome: Outcome
    reason: str | None  # why the loop stopped (give_up / fail)
    delay: float | None  # the wait before the next attempt
    elapsed: float  # since the logical request began
    duration: float | None  # of this attempt on the wire; None when nothing was sent
    waited: float  # for admission (gate, pacer, permit) before this attempt
    server_request_id: str | None
    error: str | None  # the transport exception's class name
    limit: int  # the adaptive concurrency limit
    origin: str | None = None  # scheme://host:port: the key of the rate gate and pacer
    gate: float | None = None  # seconds this answer's Retry-After closed the origin's gate for

    def as_fields(self) -> dict[str, Any]:
        """The event's fields, in schema order (``outcome`` as its string value)."""
        values = {name: getattr(self, name) for name in ATTEMPT_FIELDS}
        values["outcome"] = self.outcome.value
        return values


ATTEMPT_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in fields(AttemptRecord))
"""The fields of every ``resilience.attempt`` event, besides structlog's own (event, level,
timestamp)."""
