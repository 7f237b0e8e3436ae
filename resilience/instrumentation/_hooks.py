"""The hook protocol: what a hook is told about each attempt and each wait, and how it is called.

A hook sees, in order, for every attempt of a logical request:

1. ``on_attempt_start(start)``: the attempt was admitted and is about to be sent. ``start.headers``
   are the outgoing request's headers: the one point where a hook may add to them (a
   ``traceparent``); every other field is read only.
2. ``on_attempt_end(record, start)``: how the attempt ended, the value the ``resilience.attempt``
   log event carries. ``start`` is the value step 1 had (compared by identity, so a hook can key
   per-attempt state on it), or ``None`` for an attempt that was never sent (no permit or open
   gate before ``max_elapsed``).
3. ``on_wait(wait)``: after a wait between two attempts, with how long it was planned and
   lasted.

A hook that raises is logged once (event ``resilience.hook``, with the traceback) and the request
goes on as if it had not been there; later failures of that hook are not logged again.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, runtime_checkable

from .._attempt import AttemptRecord, Outcome
from .._events import emit

__all__ = ["AttemptStart", "Hook", "HookRunner", "WaitRecord", "WaitKind"]

HOOK_EVENT: Final = "resilience.hook"
"""The ``event`` value of the line logged when a hook raises for the first time."""

WaitKind = Literal["sleep", "park", "gate"]
"""What a wait between attempts waits for.

- ``sleep``: the backoff schedule's (or the server's ``Retry-After``) sleep after a failure or
  a poll.
- ``park``: after a plan-limit 429, until one of our requests completes (``delay`` at most).
- ``gate``: a rate limit with ``Retry-After``: the origin's gate holds the next admission, so
  the loop itself does not sleep (``waited`` is about 0); the time shows as the next attempt's
  ``waited``.
"""


@dataclass(frozen=True, slots=True, eq=False)
class AttemptStart:
    """An admitted attempt about to be sent. Compared and hashed by identity."""

    request_id: str  # the logical request's ID (the X-Request-ID header)
    method: str
    url: str  # redacted: no userinfo, no secret query values
    attempt: int  # 1 for the first attempt
    origin: str  # scheme://host:port, the key of the rate gate
    server_address: str
    server_port: int
    waited: float  # seconds queued for admission (gate, pacer, permit)
    limit: int  # the adaptive concurrency limit when admitted
    headers: MutableMapping[str, str]  # the outgoing request's headers: hooks may add to them

    @property
    def resend_count(self) -> int:
        """How many times this logical request was sent before (OpenTelemetry's
        ``http.request.resend_count``)."""
        return self.attempt - 1


@dataclass(frozen=True, slots=True)
class WaitRecord:
    """A wait between two attempts of one logical request, once it is over."""

    request_id: str
    attempt: int  # the attempt the wait follows
    origin: str
    kind: WaitKind
    outcome: Outcome  # of the attempt the wait follows: retry, throttled or not_ready
    delay: float  # seconds planned (the attempt record's ``delay``)
    waited: float  # seconds it lasted in the loop (less than ``delay`` when woken early)


@runtime_checkable
class Hook(Protocol):
    """Something that watches attempts. Subclass it to implement only some methods.

    Methods are called synchronously from the request's task, so they should be quick; they
    must not block. Pass hooks as ``ResilienceMiddleware(hooks=[...])``.
    """

    def on_attempt_start(self, start: AttemptStart) -> None:
        """The attempt is about to be sent; ``start.headers`` may be added to."""
        return  # a default, so that subclasses implement only what they need

    def on_attempt_end(self, record: AttemptRecord, start: AttemptStart | None) -> None:
        """The attempt ended (``start`` is ``None`` when it was never sent)."""
        return

    def on_wait(self, wait: WaitRecord) -> None:
        """A wait between two attempts is over."""
        return


class HookRunner:
    """Calls every hook in order; a hook that raises is logged once and otherwise ignored."""

    __slots__ = ("_failed", "hooks")

    def __init__(self, hooks: Sequence[Hook]) -> None:
        for hook in hooks:
            if not isinstance(hook, Hook):
                raise TypeError(
                    "each hook must have on_attempt_start, on_attempt_end and on_wait "
                    f"(subclass resilience.instrumentation.Hook); got {type(hook).__name__}"
                )
        self.hooks: Final = tuple(hooks)
        self._failed: set[int] = set()  # ids of hooks whose failure was logged

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def __repr__(self) -> str:
        return f"HookRunner({list(self.hooks)!r})"

    def start(self, start: AttemptStart) -> None:
        for hook in self.hooks:
            try:
                hook.on_attempt_start(start)
            except Exception as exc:  # a hook never breaks a request
                self._failure(hook, "on_attempt_start", exc)

    def end(self, record: AttemptRecord, start: AttemptStart | None) -> None:
        for hook in self.hooks:
            try:
                hook.on_attempt_end(record, start)
            except Exception as exc:
                self._failure(hook, "on_attempt_end", exc)

    def wait(self, wait: WaitRecord) -> None:
        for hook in self.hooks:
            try:
                hook.on_wait(wait)
            except Exception as exc:
                self._failure(hook, "on_wait", exc)

    def _failure(self, hook: Hook, method: str, exc: Exception) -> None:
        if id(hook) in self._failed:
            return
        self._failed.add(id(hook))
        emit(
            HOOK_EVENT,
            "error",
            hook=repr(hook),
            method=method,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
            note="the request goes on; later failures of this hook are not logged",
        )
