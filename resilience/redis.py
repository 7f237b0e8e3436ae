"""Fleet-wide limits on Redis: one plan limit, one rate gate, one retry budget per namespace.

::

    from resilience import ResilienceMiddleware
    from resilience.redis import RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:6379/0", namespace="breezeblue:acct-42")
    mw = ResilienceMiddleware(max_attempts=5, max_elapsed=60.0, store=store)

Every process (on any host) that uses the same Redis and namespace shares the adaptive
concurrency limit and its permits, the rate gate and pacing rate of each origin, and the retry
budget. The rules are :class:`~resilience.LocalStore`'s; the state lives in Redis and changes
only in Lua scripts that read Redis's own clock. If Redis cannot be reached the store falls
back to local, bounded limits and rejoins when Redis is back: no caller sees a Redis error.

Needs redis-py (``pip install 'resilience[redis]'``) and asyncio (redis-py's asyncio client).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from yarl import URL

from . import _redis_lua as lua
from ._budget import DEFAULT_RETRY_BUDGET, RetryBudget, RetryBudgetSettings
from ._errors import DeadlineExceeded
from ._events import GATE_EVENT, LIMIT_EVENT, STORE_EVENT, emit, redact_url
from ._pacing import MAX_RETRY_AFTER
from ._store import Admission, Feedback, LocalStore, Signal, check_concurrency

__all__ = ["RedisStore", "RedisStoreStats"]

_WAKE_SLICE: Final = 1.0  # longest single BLPOP of the wake-up list
_PARK_POLL: Final = 2.0  # a parked waiter asks again at least this often (lost wake-ups)
_PROBE_FIRST: Final = 0.05
_TROUBLE: Final = (redis_errors.RedisError, OSError)  # OSError covers TimeoutError, ssl errors

_GRANTED: Final = 0
_WAIT: Final = 1
# What a release feeds into the limits: 1 grows the limit, 2 is an answer that hit no limit.
_ANSWERS: Final = {Signal.SUCCESS: 1, Signal.OTHER: 2, Signal.FAILURE: 2}


class _Unavailable(Exception):
    """A Redis call failed; the store has switched to local limits."""


class _Lease:
    """The ``permit`` of a shared admission: one lease in the namespace's ``permits`` set."""

    __slots__ = ("epoch", "id", "released")

    def __init__(self, lease_id: str, epoch: int) -> None:
        self.id = lease_id
        self.epoch = epoch  # the limit's cut counter when the permit was taken
        self.released = False

    def __repr__(self) -> str:
        return f"_Lease({self.id!r}, epoch={self.epoch})"


class _Waiter:
    __slots__ = ("event", "woken")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.woken = False


@dataclass(frozen=True, slots=True)
class RedisStoreStats:
    """What a :class:`RedisStore` has done in this process (see :meth:`RedisStore.stats`)."""

    mode: Literal["redis", "local"]
    """``"redis"`` while the limits are shared, ``"local"`` during a fallback."""
    limit: int
    """The concurrency limit in force for this process."""
    workers: int
    """Processes that used the namespace recently (as last seen)."""
    round_trips: dict[str, int]
    """Redis calls by kind: acquire, release, report, budget, renew, wake, probe."""
    fallbacks: int
    rejoins: int
    held: int
    """Shared permits this process holds now."""


@dataclass(slots=True)
class _Link:
    """The clients and scripts of one event loop (redis-py connections belong to a loop)."""

    loop: asyncio.AbstractEventLoop
    client: Redis
    waker: Redis
    acquire: AsyncScript
    report: AsyncScript
    release: AsyncScript
    renew: AsyncScript
    budget: AsyncScript


class RedisStore:
    """The :class:`~resilience.Store` shared through Redis by every process on one namespace.

    Build it with :meth:`from_url`; it connects lazily on first use, so the middleware can be
    made outside a running loop. Use it as an async context manager, or call :meth:`aclose`.

    Args:
        url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL. Its password is never
            logged. Query options (``?socket_timeout=...``) override this store's settings.
        namespace: everything sharing this name shares the limits; use one per API key. It
            becomes the keys' hash tag (``resilience:{namespace}:...``), so it may not
            contain ``{`` or ``}``.
        max_concurrency: ceiling of the shared adaptive limit (the lowest one in the fleet
            wins); ``None``: no ceiling.
        initial_concurrency: where a new namespace's limit starts.
        retry_budget: the fleet's retry budget; ``None`` disables it.
        lease_ttl: seconds a permit outlives a holder that died; renewed every third of it
            while the request is in flight.
        redis_timeout: seconds any Redis call (connect, read, pool wait) may take before the
            store falls back to local limits. Calls are never retried blindly.
        max_connections: connection pool size (callers wait for a free one).
        probe_max_delay: longest pause between reconnection probes while Redis is down.
        state_ttl: seconds after which an idle namespace's keys (its learned limit) expire.
        connection_options: more keyword arguments for redis-py's connection pool, e.g.
            ``{"ssl_ca_certs": "/path/ca.pem"}``.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        namespace: str,
        max_concurrency: int | None = None,
        initial_concurrency: int = 4,
        retry_budget: RetryBudgetSettings | None = DEFAULT_RETRY_BUDGET,
        lease_ttl: float = 30.0,
        redis_timeout: float = 0.25,
        max_connections: int = 32,
        probe_max_delay: float = 5.0,
        state_ttl: float = 86400.0,
        connection_options: Mapping[str, Any] | None = None,
    ) -> None:
        url = str(url)
        parse_url(url)  # a malformed URL fails here, not at the first request
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("namespace must be a non-empty string")
        if "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace may not contain '{{' or '}}': {namespace!r}")
        check_concurrency(max_concurrency, initial_concurrency)
        if not 0.1 <= lease_ttl <= 3600:
            raise ValueError(f"lease_ttl must be in [0.1, 3600] seconds, got {lease_ttl!r}")
        if not 0 < redis_timeout <= 30:
            raise ValueError(f"redis_timeout must be in (0, 30] seconds, got {redis_timeout!r}")
        if max_connections < 2:
            raise ValueError(f"max_connections must be >= 2, got {max_connections!r}")
        if probe_max_delay < _PROBE_FIRST:
            raise ValueError(f"probe_max_delay must be >= {_PROBE_FIRST}, got {probe_max_delay!r}")
        if state_ttl < 2 * lease_ttl:
            raise ValueError("state_ttl must be at least twice lease_ttl")
        self._url = url
        self._password = URL(url).password if "://" in url else None
        self.redacted_url: Final = redact_url(URL(url))
        """The Redis URL as it may be logged: no password."""
        self.namespace: Final = namespace
        self._initial = min(initial_concurrency, max_concurrency or initial_concurrency)
        self._budget_settings = retry_budget
        self._lease_ttl = float(lease_ttl)
        self._timeout = float(redis_timeout)
        self._max_connections = max_connections
        self._probe_max_delay = float(probe_max_delay)
        self._options = dict(connection_options or {})

        prefix = f"resilience:{{{namespace}}}:"
        self._prefix = prefix
        self._k_ctl = prefix + "ctl"
        self._k_permits = prefix + "permits"
        self._k_order = prefix + "order"
        self._k_wake = prefix + "wake"
        self._k_workers = prefix + "workers"
        self._k_budget = prefix + "budget"
        lease_ms = round(self._lease_ttl * 1000)
        # initial, ceiling (0: none), lease TTL and state TTL in ms: every limit script's ARGV
        self._limit_args = (self._initial, max_concurrency or 0, lease_ms, round(state_ttl * 1000))
        self._worker_ttl_ms = max(2 * lease_ms, 10_000)

        self._worker = uuid.uuid4().hex[:16]
        self._lease_ids = itertools.count(1)
        self._budget = RetryBudget.from_settings(retry_budget)
        self._pending_deposits = 0

        self._shared = True  # False while falling back to local limits
        self._generation = 0  # bumped on rejoin: failures of older calls are stale
        self._fallback = LocalStore(
            max_concurrency=self._initial, initial_concurrency=self._initial, retry_budget=None
        )
        self._down_since = 0.0
        self._probe_delay = _PROBE_FIRST  # the probe's backoff when it last rejoined
        self._rejoined_at = -math.inf
        self._last_limit = self._initial
        self._workers = 1
        self._fallbacks = 0
        self._rejoins = 0
        self._round_trips: Counter[str] = Counter()

        self._link_: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the state below
        self._closed = False  # aclose() began: no new tasks, no new connections
        self._held: dict[str, _Lease] = {}
        self._releasing: dict[str, tuple[str, int]] = {}  # lease -> (origin, answer), unsent
        self._flush_pending = False
        self._orphans: set[str] = set()  # leases to return once Redis answers again
        self._waiters: deque[_Waiter] = deque()
        self._acquiring = 0  # acquire calls on their way
        self._free_hint = self._initial  # free permits in the fleet, as last seen
        self._turns: dict[str, asyncio.Lock] = {}  # per paced origin: one reservation at a time
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        namespace: str,
        max_concurrency: int | None = None,
        initial_concurrency: int = 4,
        retry_budget: RetryBudgetSettings | None = DEFAULT_RETRY_BUDGET,
        lease_ttl: float = 30.0,
        redis_timeout: float = 0.25,
        max_connections: int = 32,
        probe_max_delay: float = 5.0,
        state_ttl: float = 86400.0,
        connection_options: Mapping[str, Any] | None = None,
    ) -> RedisStore:
        """A store on the Redis at ``url``; see :class:`RedisStore` for the arguments."""
        return cls(
            url,
            namespace=namespace,
            max_concurrency=max_concurrency,
            initial_concurrency=initial_concurrency,
            retry_budget=retry_budget,
            lease_ttl=lease_ttl,
            redis_timeout=redis_timeout,
            max_connections=max_connections,
            probe_max_delay=probe_max_delay,
            state_ttl=state_ttl,
            connection_options=connection_options,
        )

    def __repr__(self) -> str:
        mode = "redis" if self._shared else "local"
        return (
            f"RedisStore({self.redacted_url!r}, namespace={self.namespace!r}, "
            f"limit={self.concurrency_limit}, mode={mode!r})"
        )

    # ----------------------------------------------------------------- the Store protocol

    @property
    def concurrency_limit(self) -> int:
        """The shared limit as last seen (the local one during a fallback)."""
        return self._last_limit if self._shared else self._fallback.concurrency_limit

    async def admit(self, origin: str, deadline: float | None) -> Admission:
        """Wait at the shared gate and pacer of ``origin``, then for a shared permit."""
        slot_epoch = -1  # the pacing epoch of our reserved sending slot, once we hold one
        self._closed = False  # used again after aclose(): reopens lazily
        self._on_loop()
        if self._shared and (self._parked() or self._acquiring >= max(1, self._free_hint)):
            # The fleet looked full a moment ago: queue behind this process's waiters instead
            # of asking Redis; a freed permit (or a grant with room to spare) wakes us.
            await self._park(self._park_timeout(deadline))
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("no concurrency permit before max_elapsed")
            if not self._shared:
                self._start("probe", self._probe)  # a no-op while one runs (new loop: anew)
                return await self._admit_local(origin, deadline)
            lease_id = f"{self._worker}:{next(self._lease_ids)}"
            turn = self._turns.get(origin) if slot_epoch < 0 else None
            try:
                if turn is None:
                    reply = await self._acquire(origin, lease_id, slot_epoch)
                else:
                    reply = await self._acquire_in_turn(turn, origin, lease_id, deadline)
            except _Unavailable:
                self._forget(lease_id)
                continue
            except BaseException:
                self._forget(lease_id)  # cancelled mid-call: the script may have granted it
                raise
            status, value, epoch, limit, slot_epoch, workers, paced = (int(x) for x in reply)
            self._last_limit, self._workers = limit, workers
            if paced and origin not in self._turns:
                self._turns[origin] = asyncio.Lock()
            elif not paced:
                self._turns.pop(origin, None)
            if status == _GRANTED:
                lease = _Lease(lease_id, epoch)
                self._held[lease_id] = lease
                self._start("heartbeat", self._heartbeat)
                self._free_hint = limit - value - 1  # value: permits held before ours
                for _ in range(self._free_hint - self._acquiring):
                    if not self._wake_one():  # room to spare: let queued requests ask
                        break
                return _SharedAdmission(self, origin, lease, limit, slot_epoch)
            self._free_hint = 0
            if status == _WAIT:
                await self._sleep_for(value / 1e6, deadline)
                continue
            # Every permit is taken: woken by a release, at the latest when the oldest lease
            # would expire (its holder may be dead).
            await self._park(min(self._park_timeout(deadline), value / 1e6 + 0.005))

    async def _acquire_in_turn(
        self, turn: asyncio.Lock, origin: str, lease_id: str, deadline: float | None
    ) -> list[Any]:
        """Paced: this process's senders to ``origin`` reserve their sending slots one at a
        time, each waiting out its slot before the next reserves, so every reservation is made
        at the rate of the moment (LocalStore's pacer turn)."""
        timeout = math.inf if deadline is None else deadline - time.monotonic()
        with anyio.move_on_after(timeout):
            async with turn:
                reply = await self._acquire(origin, lease_id, -1)
                if int(reply[0]) == _WAIT:
                    await self._sleep_for(int(reply[1]) / 1e6, deadline)
                    reply[1] = 0  # waited: the caller goes on with its slot
                return reply
        self._forget(lease_id)  # the deadline may have cut the acquire call short
        raise DeadlineExceeded("no turn at the rate gate before max_elapsed")

    async def _sleep_for(self, wait: float, deadline: float | None) -> None:
        """Sleep until our sending slot, failing fast when it comes too late."""
        if deadline is not None and time.monotonic() + wait > deadline:
            raise DeadlineExceeded("the rate gate stays closed past the deadline")
        if wait > MAX_RETRY_AFTER:  # as _decide: a server cannot park every request
            raise DeadlineExceeded(f"the rate gate stays closed for {wait:.0f} s")
        await asyncio.sleep(wait)

    def _release_lease(self, admission: _SharedAdmission) -> None:
        """Return a lease: it goes back with the next Redis call of this process (sent right
        away in a background task if none is on its way)."""
        permit = admission.lease
        if permit.released:
            return
        permit.released = True
        self._held.pop(permit.id, None)
        if not self._shared or self._closed:
            self._orphans.add(permit.id)
            return
        self._releasing[permit.id] = (admission.origin, admission.answer)
        try:
            loop = self._on_loop()  # a new loop: a flush pending on the old one is gone
        except RuntimeError:
            return  # no loop (interpreter shutdown): the lease expires with its TTL
        if not self._flush_pending:
            self._flush_pending = True
            self._spawn(loop, self._flush_releases())

    async def _report(self, admission: _SharedAdmission, feedback: Feedback) -> None:
        """Feed one answer in; successes ride on the release (no extra round trip)."""
        permit, signal, retry_after = admission.lease, feedback.signal, feedback.gate
        answer = _ANSWERS.get(signal)
        if answer is not None:
            admission.answer = answer
            return
        if self._shared:
            initial, ceiling, lease_ms, state_ms = self._limit_args
            try:
                reply = await self._run(
                    "report",
                    self._link().report,
                    [self._k_ctl, self._k_permits, self._k_order, self._k_wake,
                     self._rate_key(admission.origin)],
                    [1 if signal is Signal.CONCURRENCY else 2, permit.id, permit.epoch,
                     -1 if retry_after is None else round(retry_after * 1000, 3),
                     admission.rate_epoch, initial, ceiling, lease_ms, state_ms],
                    idempotent=False,
                )  # fmt: skip
            except _Unavailable:
                pass
            else:
                old, new, closed, milli = (int(x) for x in reply)
                self._note_limit(old, new, "cut")
                if closed:
                    emit(
                        GATE_EVENT,
                        "info",
                        origin=admission.origin,
                        closed_for=round(retry_after or 0.0, 3),
                        pace=round(milli / 1000, 2) if milli >= 0 else None,
                        namespace=self.namespace,
                    )
                return
        if signal is Signal.RATE:
            # Redis is gone: the server's Retry-After still closes this process's gate.
            pacer = self._fallback.pacer(admission.origin)
            pacer.on_response(rate_limited=True, retry_after=retry_after, epoch=pacer.epoch)

    async def _wait_for_release(self, timeout: float) -> None:
        """Park until a permit frees anywhere in the fleet, or ``timeout``."""
        if self._shared:
            await self._park(max(timeout, 0.0))
        else:  # admitted by Redis before the fallback: nothing local to compare with
            await self._fallback.limiter.wait_for_release(timeout)

    async def deposit_request(self) -> None:
        """Count a logical request; sent to Redis with the next acquire (no round trip)."""
        if self._budget is not None:
            self._budget.deposit()
            if self._shared:
                self._pending_deposits += 1

    async def try_retry(self) -> bool:
        """Withdraw one retry from the fleet's budget (the local one during a fallback)."""
        budget, settings = self._budget, self._budget_settings
        if budget is None or settings is None:
            return True
        if self._shared:
            deposits, self._pending_deposits = self._pending_deposits, 0
            try:
                ok = await self._run(
                    "budget",
                    self._link().budget,
                    [self._k_budget],
                    [deposits, settings.ratio, settings.min_per_second, settings.ttl,
                     self._limit_args[3]],
                    idempotent=False,
                )  # fmt: skip
            except _Unavailable:
                pass
            else:
                budget.try_withdraw()  # keep the local mirror close, for a fallback
                return bool(int(ok))
        return budget.try_withdraw()

    # ----------------------------------------------------------------- lifecycle

    def stats(self) -> RedisStoreStats:
        """Counters of this process's use of the store."""
        return RedisStoreStats(
            mode="redis" if self._shared else "local",
            limit=self.concurrency_limit,
            workers=self._workers,
            round_trips=dict(self._round_trips),
            fallbacks=self._fallbacks,
            rejoins=self._rejoins,
            held=len(self._held),
        )

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` s) until the permits released so far are back in Redis."""
        if self._releasing and not self._flush_pending and self._shared:
            await self._flush_releases()
        pending = list(self._background)
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def aclose(self) -> None:
        """Return what can be returned, stop the background tasks, close the connections."""
        self._closed = True
        for lease in self._held.values():
            lease.released = True  # returned here: a later release() must not return it again
        link = self._link_
        if link is None or link.loop is not asyncio.get_running_loop():
            self._link_ = None
            self._orphans |= self._held.keys()
            self._held.clear()
            self._tasks.clear()
            return
        tasks = [t for t in self._tasks.values() if not t.done()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        pending = [*tasks, *self._background]
        if pending:
            await asyncio.wait(pending, timeout=2 * self._timeout + 0.5)
        self._orphans |= self._held.keys() | self._releasing.keys()
        self._held.clear()
        self._releasing.clear()
        if self._shared:
            await self._flush_orphans()
        for waiter in self._waiters:
            waiter.event.set()
        self._waiters.clear()
        self._link_ = None
        for client in (link.client, link.waker):
            with contextlib.suppress(*_TROUBLE):
                await client.connection_pool.disconnect()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- Redis calls

    def _on_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; on a new one, forget what ran on the old one (it is gone)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._link_ = None
                self._tasks.clear()
                self._background.clear()
                self._waiters.clear()
                self._turns.clear()  # locks of the old loop (maybe held by dead tasks)
                self._acquiring = 0
                self._flush_pending = False
            self._loop = loop
        return loop

    def _link(self) -> _Link:
        loop = self._on_loop()
        link = self._link_
        if link is not None and link.loop is loop:
            return link
        if self._closed:
            raise _Unavailable("the store is closed")
        common: dict[str, Any] = {
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            **self._options,
        }
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            **common,
        )
        waker_pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=2,
            timeout=self._timeout,
            socket_timeout=_WAKE_SLICE + self._timeout,
            **common,
        )
        client = Redis(connection_pool=pool)
        link = _Link(
            loop=loop,
            client=client,
            waker=Redis(connection_pool=waker_pool),
            acquire=client.register_script(lua.ACQUIRE),
            report=client.register_script(lua.REPORT),
            release=client.register_script(lua.RELEASE),
            renew=client.register_script(lua.RENEW),
            budget=client.register_script(lua.BUDGET),
        )
        self._link_ = link
        return link

    async def _run(
        self,
        kind: str,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[object],
        *,
        idempotent: bool = True,
    ) -> Any:
        """One script call; Redis trouble switches to local limits and raises _Unavailable.

        A call that fails at once on a dropped connection (Redis restarted, an idle connection
        closed by the server) is repeated once on a fresh connection if the script is safe to
        run twice (acquire, release, renew; not report or budget, which would count twice).
        A call that timed out is never repeated.
        """
        generation = self._generation
        for attempt in (1, 2) if idempotent else (1,):
            self._round_trips[kind] += 1
            started = time.monotonic()
            try:
                return await script(keys=keys, args=args)  # type: ignore[arg-type]
            except _TROUBLE as exc:
                stale = (
                    idempotent
                    and attempt == 1
                    and isinstance(exc, redis_errors.ConnectionError)
                    and not isinstance(exc, (redis_errors.TimeoutError, TimeoutError))
                    and time.monotonic() - started < self._timeout / 2
                )
                if stale:
                    with contextlib.suppress(*_TROUBLE):
                        await self._link().client.connection_pool.disconnect(
                            inuse_connections=False
                        )
                    continue
                self._trouble(exc, generation)
                raise _Unavailable from exc
        raise AssertionError("unreachable")

    async def _acquire(self, origin: str, lease_id: str, slot_epoch: int) -> list[Any]:
        """The acquire script, carrying this process's unsent releases to ``origin``."""
        initial, ceiling, lease_ms, state_ms = self._limit_args
        deposits, self._pending_deposits = self._pending_deposits, 0
        settings = self._budget_settings or RetryBudgetSettings()
        releases = self._take_releases(origin)
        self._acquiring += 1  # only the call itself: not callers queued for a pacing turn
        try:
            reply = await self._run(
                "acquire",
                self._link().acquire,
                [self._k_ctl, self._k_permits, self._k_order, self._k_wake, self._k_workers,
                 self._k_budget, self._rate_key(origin)],
                [lease_id, self._worker, lease_ms, initial, ceiling, slot_epoch, deposits,
                 settings.ratio, settings.min_per_second, settings.ttl, state_ms,
                 self._worker_ttl_ms, *releases],
            )  # fmt: skip
        except BaseException:
            self._orphans.update(str(x) for x in releases[::2])  # returned or not: again later
            raise
        finally:
            self._acquiring = max(0, self._acquiring - 1)
        assert isinstance(reply, list)
        return reply

    def _take_releases(self, origin: str | None) -> list[str | int]:
        """Unsent releases (to ``origin``, or all) as flat (lease, answer) pairs."""
        pairs: list[str | int] = []
        for lease_id, (lease_origin, answer) in list(self._releasing.items()):
            if origin is None or lease_origin == origin:
                del self._releasing[lease_id]
                pairs += (lease_id, answer)
        return pairs

    async def _flush_releases(self) -> None:
        """Send the releases no acquire has carried, one call per origin."""
        self._flush_pending = False
        while self._releasing and self._shared:
            origin = next(iter(self._releasing.values()))[0]
            await self._release(origin, self._take_releases(origin))

    async def _release(self, origin: str, pairs: list[str | int]) -> None:
        initial, ceiling, lease_ms, state_ms = self._limit_args
        try:
            reply = await self._run(
                "release",
                self._link().release,
                [self._k_ctl, self._k_permits, self._k_order, self._k_wake,
                 self._rate_key(origin)],
                [initial, ceiling, lease_ms, state_ms, *pairs],
            )  # fmt: skip
        except _Unavailable:
            self._orphans.update(str(p) for p in pairs[::2])
        except BaseException:
            self._orphans.update(str(p) for p in pairs[::2])
            raise
        else:
            why = "slow_start" if int(reply[3]) == 1 else "grow"
            self._note_limit(int(reply[0]), int(reply[1]), why)

    async def _flush_orphans(self) -> None:
        """Return leases whose fate is unknown (a failed or cancelled call, a fallback)."""
        leases = list(self._orphans)
        if leases:
            self._orphans.difference_update(leases)
            await self._release("", [x for lease in leases for x in (lease, 0)])

    def _forget(self, lease_id: str) -> None:
        """A lease that may have been granted to a call we no longer wait for."""
        self._orphans.add(lease_id)
        if self._shared:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._spawn(loop, self._flush_orphans())

    def _rate_key(self, origin: str) -> str:
        return f"{self._prefix}rate:{origin}"

    def _note_limit(self, old: int, new: int, why: str) -> None:
        self._last_limit = new
        if new != old:
            # Cuts matter to an operator; growth happens every round trip and stays at DEBUG.
            level = "info" if new < old else "debug"
            emit(LIMIT_EVENT, level, limiter=self.namespace, old=old, new=new, why=why)

    # ----------------------------------------------------------------- background tasks

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _start(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._closed:
            return
        loop = self._on_loop()
        task = self._tasks.get(name)
        if task is None or task.done() or task.get_loop() is not loop:
            self._tasks[name] = loop.create_task(body())

    async def _heartbeat(self) -> None:
        """Renew this process's leases every third of the TTL while it holds any."""
        lease_ms = self._limit_args[2]
        while self._shared and (self._held or self._orphans):
            await asyncio.sleep(self._lease_ttl / 3)
            if not self._shared:
                return
            if self._orphans:
                await self._flush_orphans()
            held = list(self._held)
            if not held:
                continue
            try:
                reply = await self._run(
                    "renew",
                    self._link().renew,
                    [self._k_permits, self._k_order, self._k_wake, self._k_workers, self._k_ctl],
                    [lease_ms, self._worker, self._worker_ttl_ms, *held],
                )
            except _Unavailable:
                return
            self._workers = int(reply[1])

    def _park_timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return _PARK_POLL
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("no concurrency permit before max_elapsed")
        return min(remaining, _PARK_POLL)

    async def _park(self, timeout: float) -> None:
        """Wait for a wake-up token (a permit freed somewhere), or ``timeout``."""
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._start("waker", self._waker)
        try:
            with anyio.move_on_after(timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.woken:
                self._wake_one()  # cancelled with a wake-up in hand: pass it on
            raise
        finally:
            if not waiter.event.is_set():
                waiter.event.set()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _parked(self) -> bool:
        return any(not w.event.is_set() for w in self._waiters)

    def _wake_one(self) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.event.is_set():
                waiter.woken = True
                waiter.event.set()
                return True
        return False

    def _wake_all(self) -> None:
        while self._wake_one():
            pass

    async def _waker(self) -> None:
        """One blocking pop of the wake-up list at a time, for all of this process's waiters."""
        link = self._link()
        generation = self._generation
        while self._shared and self._parked():
            self._round_trips["wake"] += 1
            try:
                got = await link.waker.blpop([self._k_wake], timeout=_WAKE_SLICE)
                if got is not None and not self._wake_one():
                    # Our waiters left meanwhile: give the token back to the fleet.
                    self._round_trips["wake"] += 1
                    await link.waker.lpush(self._k_wake, "1")
            except _TROUBLE as exc:
                self._trouble(exc, generation)
                return

    # ----------------------------------------------------------------- fallback

    def _trouble(self, exc: BaseException, generation: int) -> None:
        """Redis failed: fall back to local limits once, and probe until it answers."""
        if not self._shared or generation != self._generation or self._closed:
            return
        self._shared = False
        self._fallbacks += 1
        self._down_since = time.monotonic()
        self._orphans |= self._releasing.keys()
        self._releasing.clear()
        split = max(1, self._last_limit // max(1, self._workers))
        self._fallback = LocalStore(
            max_concurrency=split, initial_concurrency=split, retry_budget=None
        )
        emit(
            STORE_EVENT,
            "warning",
            action="fallback",
            namespace=self.namespace,
            redis=self.redacted_url,
            error=self._describe(exc),
            limit=split,
            workers=self._workers,
        )
        self._wake_all()
        self._start("probe", self._probe)

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "REDACTED")
        return text[:300]

    async def _probe(self) -> None:
        """A write script with jittered exponential backoff; rejoin the fleet when Redis answers."""
        delay = _PROBE_FIRST
        if time.monotonic() - self._rejoined_at < 2 * self._probe_max_delay + 10:
            # Down again soon after a rejoin (Redis flapping, or answering the probe but not
            # the traffic): go on backing off instead of starting over.
            delay = self._probe_delay
        while not self._shared and not self._closed:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._probe_max_delay)
            if self._closed:
                return
            self._round_trips["probe"] += 1
            link = self._link()
            try:
                for client in (link.client, link.waker):
                    await client.connection_pool.disconnect()  # all suspect: start afresh
                # A script that writes, not PING: a Redis that answers PING but refuses
                # scripts or writes (out of memory, a read-only replica) is still down.
                await link.renew(
                    keys=[self._k_permits, self._k_order, self._k_wake, self._k_workers,
                          self._k_ctl],
                    args=[self._limit_args[2], self._worker, self._worker_ttl_ms],
                )  # fmt: skip
            except _TROUBLE:
                continue
            self._generation += 1
            self._shared = True
            self._rejoins += 1
            self._probe_delay, self._rejoined_at = delay, time.monotonic()
            self._free_hint = max(1, self._free_hint)
            emit(
                STORE_EVENT,
                "warning",
                action="rejoin",
                namespace=self.namespace,
                redis=self.redacted_url,
                down_for=round(time.monotonic() - self._down_since, 3),
            )
            if self._orphans:
                await self._flush_orphans()
            if self._held or self._orphans:
                self._start("heartbeat", self._heartbeat)

    async def _admit_local(self, origin: str, deadline: float | None) -> Admission:
        # The fallback's own handle: its report, release and park are the local store's.
        return await self._fallback.admit(origin, deadline)


class _SharedAdmission:
    """A permit leased from Redis, and the answer its release will feed into the limits."""

    __slots__ = ("answer", "lease", "limit", "origin", "rate_epoch", "store")

    def __init__(
        self, store: RedisStore, origin: str, lease: _Lease, limit: int, rate_epoch: int
    ) -> None:
        self.store = store
        self.origin = origin
        self.lease = lease
        self.limit = limit
        self.rate_epoch = rate_epoch  # the pacing epoch of its sending slot
        self.answer = 0  # _ANSWERS value once reported; 0: nothing (cancelled, error)

    def release(self) -> None:
        self.store._release_lease(self)

    async def report(self, feedback: Feedback) -> None:
        await self.store._report(self, feedback)

    async def wait_for_release(self, timeout: float) -> None:
        await self.store._wait_for_release(timeout)
