"""The middleware aiohttp calls, and its settings, validated once.

``ResilienceMiddleware.__call__`` hands each logical request to the attempt loop (``_loop.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from yarl import URL

from ._account import DEFAULT_ACCOUNT_STOP, AccountStop, AccountStops
from ._backoff import Backoff
from ._breaker import DEFAULT_CIRCUIT_BREAKER, CircuitBreaker
from ._budget import DEFAULT_RETRY_BUDGET, RetryBudgetSettings
from ._codes import CodeTable
from ._events import DEFAULT_REDACTION, Redaction
from ._loop import _GAVE_UP, _HANDLING, _Call
from ._store import MAX_IDLE_ORIGINS, LocalStore, Store
from ._validate import boolean, header_name, integer, number
from .instrumentation._hooks import Hook, HookRunner

__all__ = ["ResilienceMiddleware", "Settings"]

MAX_ELAPSED_LIMIT: Final = 366 * 86400.0  # a year: a longer deadline is a typo, not a plan
MAX_ENVELOPE_CAP: Final = 64 * 1024 * 1024  # an envelope is a few hundred bytes


@dataclass(frozen=True, slots=True)
class Settings:
    """The middleware's settings, validated once. See :class:`ResilienceMiddleware`."""

    max_attempts: int = 5
    max_elapsed: float | None = 60.0
    backoff: Backoff = field(default_factory=Backoff)
    codes: CodeTable = field(default_factory=CodeTable.default)
    raise_api_errors: bool = False
    envelope_cap: int = 64 * 1024
    request_id_header: str = "X-Request-ID"
    redaction: Redaction = DEFAULT_REDACTION

    def __post_init__(self) -> None:
        integer("max_attempts", self.max_attempts, low=1)
        if self.max_elapsed is not None:
            number("max_elapsed", self.max_elapsed, above=0, high=MAX_ELAPSED_LIMIT)
        if not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, got {type(self.backoff).__name__}")
        if not isinstance(self.codes, CodeTable):
            raise TypeError(f"codes must be a CodeTable, got {type(self.codes).__name__}")
        boolean("raise_api_errors", self.raise_api_errors)
        integer("envelope_cap", self.envelope_cap, low=0, high=MAX_ENVELOPE_CAP)
        header_name("request_id_header", self.request_id_header)
        if not isinstance(self.redaction, Redaction):
            raise TypeError(f"redaction must be a Redaction, got {type(self.redaction).__name__}")


class ResilienceMiddleware:
    """An aiohttp client middleware that retries what the code table says is retryable.

    Pass it to ``aiohttp.ClientSession(middlewares=(mw,))`` or use :func:`resilience.wrap`.
    One instance may serve many sessions; they then share its concurrency limit, rate gates
    and retry budget.

    Args:
        max_attempts: attempts per logical request that may end in a failure, the first
            included. Throttles (429) and polls (425) do not count while ``max_elapsed`` bounds
            them.
        max_elapsed: seconds across all attempts and waits of one logical request; no wait
            runs past it. ``None``: no bound (throttles and polls then count as attempts).
        backoff: the wait schedule between retries.
        max_concurrency: ceiling of the adaptive concurrency limit; ``None``: no ceiling.
        initial_concurrency: where the adaptive limit starts (it doubles per round trip until
            the server pushes back).
        retry_budget: the share of traffic retries may add; ``None`` disables the budget.
        circuit_breaker: when each origin's breaker opens in an outage and how it probes
            (:class:`CircuitBreaker`); ``None``: no breaker, every request is sent.
        account_stop: after a 401 ``AUTH_*`` or 402 ``BILLING_INSUFFICIENT_CREDITS``, requests
            with the same credentials fail unsent until a recheck (:class:`AccountStop`);
            ``None``: every request is sent.
        store: where limits live; default a new :class:`LocalStore`. Pass one store to several
            middlewares to share limits, or a ``resilience.redis.RedisStore`` for a fleet.
        codes: the error-code table; default the generation API's published table.
        raise_api_errors: raise :class:`ApiError` for a final status >= 400 instead of
            returning the response.
        envelope_cap: largest error body (decoded bytes) read for classification.
        request_id_header: the header carrying the logical request's ID.
        redaction: more query parameter names and path patterns to hide from log events and
            ``str(ApiError)``, on top of the built-in rules (see :class:`Redaction`).
        hooks: told about every attempt's start and end and every wait
            (:class:`resilience.instrumentation.Hook`); e.g. ``OpenTelemetryHook()``.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        max_elapsed: float | None = 60.0,
        backoff: Backoff | None = None,
        max_concurrency: int | None = None,
        initial_concurrency: int = 4,
        retry_budget: RetryBudgetSettings | None = DEFAULT_RETRY_BUDGET,
        circuit_breaker: CircuitBreaker | None = DEFAULT_CIRCUIT_BREAKER,
        account_stop: AccountStop | None = DEFAULT_ACCOUNT_STOP,
        store: Store | None = None,
        codes: CodeTable | None = None,
        raise_api_errors: bool = False,
        envelope_cap: int = 64 * 1024,
        request_id_header: str = "X-Request-ID",
        redaction: Redaction | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.settings: Final = Settings(
            max_attempts=max_attempts,
            max_elapsed=max_elapsed,
            backoff=backoff if backoff is not None else Backoff(),
            codes=codes if codes is not None else CodeTable.default(),
            raise_api_errors=raise_api_errors,
            envelope_cap=envelope_cap,
            request_id_header=request_id_header,
            redaction=redaction if redaction is not None else DEFAULT_REDACTION,
        )
        if store is None:
            store = LocalStore(
                max_concurrency=max_concurrency,
                initial_concurrency=initial_concurrency,
                retry_budget=retry_budget,
                circuit_breaker=circuit_breaker,
            )
        elif (
            max_concurrency is not None
            or initial_concurrency != 4
            or retry_budget != DEFAULT_RETRY_BUDGET
            or circuit_breaker != DEFAULT_CIRCUIT_BREAKER
        ):
            raise ValueError(
                "with store=..., give max_concurrency, initial_concurrency, retry_budget and "
                "circuit_breaker to the store, not to the middleware"
            )
        elif not isinstance(store, Store):
            raise TypeError(f"store must implement resilience.Store, got {type(store).__name__}")
        self.store: Final = store
        if account_stop is not None and not isinstance(account_stop, AccountStop):
            raise TypeError(
                f"account_stop must be an AccountStop or None, got {type(account_stop).__name__}"
            )
        self.accounts: Final = AccountStops(account_stop) if account_stop is not None else None
        self._origins: dict[tuple[str, str], str] = {}
        if isinstance(hooks, Hook) or not isinstance(hooks, Sequence):
            raise TypeError(f"hooks must be a sequence of hooks, got {type(hooks).__name__}")
        # None without hooks: the loop then tests one attribute and builds nothing for them.
        self.hooks: Final = HookRunner(hooks) if hooks else None

    def _limit_now(self, origin: str) -> int:
        """The concurrency limit requests to ``origin`` meet now (a LocalStore keeps one per
        origin; other stores one for all)."""
        limit_of = getattr(self.store, "limit_of", None)
        return int(limit_of(origin)) if limit_of is not None else self.store.concurrency_limit

    def _origin_of(self, url: URL) -> str:
        """``str(url.origin())``, cached (it costs more than the rest of the happy path); the
        cache is a bounded convenience: cleared, not grown, past MAX_IDLE_ORIGINS."""
        # The scheme and authority decide the origin (the userinfo in the authority never
        # changes it, so two keys may share one value): two cheap attributes, no port logic.
        key = (url.scheme, url.raw_authority)
        origin = self._origins.get(key)
        if origin is None:
            if len(self._origins) >= MAX_IDLE_ORIGINS:
                self._origins.clear()
            origin = self._origins[key] = str(url.origin())
        return origin

    @property
    def concurrency_limit(self) -> int:
        """The adaptive concurrency limit now."""
        return self.store.concurrency_limit

    def __repr__(self) -> str:
        return f"ResilienceMiddleware({self.settings!r}, store={self.store!r})"

    def __call__(
        self, req: ClientRequest, handler: ClientHandlerType
    ) -> Coroutine[Any, Any, ClientResponse]:
        # A plain function returning the loop's coroutine: aiohttp awaits it, and the happy
        # path pays for one coroutine, not two.
        if _HANDLING.get() is req:
            # An outer resilience middleware runs this very request: it retries, we must not
            # (3 x 3 attempts otherwise). Another request sent from inside is not this one.
            return _passthrough(req, handler)
        stale = _GAVE_UP.get()
        if stale is not None:
            _GAVE_UP.set(None)  # one-shot, whatever comes next
            task, method, url, exc = stale
            if task is asyncio.current_task() and method == req.method and url == str(req.url):
                raise exc
        return _Call(self, req, handler).run()


async def _passthrough(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    return await handler(req)
