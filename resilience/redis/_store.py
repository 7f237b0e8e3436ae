"""``RedisStore``: the Store protocol on the collaborators of this package.

The store decides; its collaborators keep the state: ``Connections`` (per-loop clients and
scripts), ``Leases`` (the permits held, returned and renewed), ``Parking`` (waiters and the
wake-up list), ``Fallback`` (local limits and the probe), ``SharedBudget``, ``Tasks``
(background work); the handles in ``_admission.py`` report, release and park. Over 400 lines
because it is where the collaborators meet: the admission loop (gate, pacing turn, permit,
park) and the switches between shared and local limits (fallback, probe, rejoin) each read
best in one place.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeVar

import anyio
import redis.asyncio
from redis.asyncio.connection import parse_url
from yarl import URL

from .._breaker import DEFAULT_CIRCUIT_BREAKER, CircuitBreaker
from .._budget import DEFAULT_RETRY_BUDGET, RetryBudgetSettings
from .._errors import DeadlineExceeded
from .._events import LIMIT_EVENT, emit
from .._pacing import MAX_RETRY_AFTER
from .._store import Admission, admit_through, circuit_of
from ._admission import LocalAdmission, SharedAdmission
from ._breaker import SharedBreakers
from ._budget import SharedBudget
from ._connection import Connections, Link, Unavailable
from ._fallback import Fallback
from ._keys import Keys
from ._leases import Lease, Leases
from ._parking import PARK_POLL, Parking
from ._settings import StoreSettings
from ._source import from_url, given
from ._tasks import Tasks

__all__ = ["RedisStore", "RedisStoreStats"]

_GRANTED: Final = 0
_WAIT: Final = 1

_P = ParamSpec("_P")
_S = TypeVar("_S")


def _arguments_of(
    init: Callable[Concatenate[_S, _P], None],
) -> Callable[[Callable[..., _S]], Callable[Concatenate[type[_S], _P], _S]]:
    """Give an alternative constructor the constructor's own signature (written once)."""

    def wrap(factory: Callable[..., _S]) -> Callable[Concatenate[type[_S], _P], _S]:
        # The first parameter (self) stands for cls: binding the classmethod drops it.
        factory.__signature__ = inspect.signature(init)  # type: ignore[attr-defined]
        return factory

    return wrap


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


class RedisStore:
    """The :class:`~resilience.Store` shared through Redis by every process on one namespace.

    It connects lazily on first use, so the middleware can be made outside a running loop.
    Use it as an async context manager, or call :meth:`aclose`. :meth:`from_url` is the same
    constructor under the name redis-py uses.

    Give it either a URL (the store builds and owns its clients) or ``client``.

    Args:
        url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL. Its password is never
            logged. Query options (``?socket_timeout=...``) override this store's settings.
        client: a redis-py asyncio client the application built and keeps: ``Redis``,
            ``RedisCluster``, or a Sentinel ``master_for(...)`` client. Its timeouts, pool, TLS
            and retries are the client's; the store never closes it.
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
        circuit_breaker: the fleet's breaker per origin (window and state in Redis, one
            probe for the whole fleet); ``None``: no breaker.
        cluster: with ``url``: the URL names one node of a Redis Cluster (a ``RedisCluster``
            client follows the cluster's redirections).
        connection_options: more keyword arguments for redis-py's connection pool (or
            ``RedisCluster``), e.g. ``{"ssl_ca_certs": "/path/ca.pem"}``; checked when the
            store is built (a misspelt option is a ``ValueError`` here, never a failed request).
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster | None = None,
        namespace: str,
        max_concurrency: int | None = None,
        initial_concurrency: int = 4,
        retry_budget: RetryBudgetSettings | None = DEFAULT_RETRY_BUDGET,
        lease_ttl: float = 30.0,
        redis_timeout: float = 0.25,
        max_connections: int = 32,
        probe_max_delay: float = 5.0,
        state_ttl: float = 86400.0,
        cluster: bool = False,
        circuit_breaker: CircuitBreaker | None = DEFAULT_CIRCUIT_BREAKER,
        connection_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._keys: Final = Keys.of(namespace)
        settings = StoreSettings(
            max_concurrency=max_concurrency,
            initial_concurrency=initial_concurrency,
            retry_budget=retry_budget,
            lease_ttl=lease_ttl,
            redis_timeout=redis_timeout,
            max_connections=max_connections,
            probe_max_delay=probe_max_delay,
            state_ttl=state_ttl,
        )
        self._settings: Final = settings
        if (url is None) == (client is None):
            raise TypeError("RedisStore needs a url or a client (one of them)")
        if client is not None:
            if connection_options or cluster:
                raise TypeError("with client=, the connection's settings are the client's")
            source = given(client, settings)
        else:
            url = str(url)
            parse_url(url)  # a malformed URL fails here, not at the first request
            source = from_url(url, settings, connection_options or {}, cluster=bool(cluster))
        self.redacted_url: Final = source.where
        """The Redis as it may be logged: no password."""
        self.namespace: Final = namespace
        self._fallback: Final = Fallback(
            settings, namespace=namespace, where=source.where, secret=source.secret
        )
        self._conn: Final = Connections(
            source,
            settings,
            on_trouble=self._trouble,
            generation=lambda: self._fallback.generation,
        )
        self._leases: Final = Leases(
            uuid.uuid4().hex[:16],
            settings,
            self._keys,
            self._run,
            on_limit=self._note_limit,
            on_workers=self._note_workers,
        )
        self._parking: Final = Parking(settings.initial)
        self._tasks: Final = Tasks()
        self._budget: Final = SharedBudget(settings, self._keys, self._run)
        self._last_limit = settings.initial
        self._workers = 1
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the state below
        self._closed = False  # aclose() began: no new tasks, no new connections
        self._turns: dict[str, asyncio.Lock] = {}  # per paced origin: one reservation at a time
        self.circuit: Final = circuit_of(circuit_breaker, self._shared_breakers)

    @classmethod
    @_arguments_of(__init__)
    def from_url(cls, *args: Any, **kwargs: Any) -> RedisStore:
        """A store on the Redis at ``url``: the constructor (see :class:`RedisStore`)."""
        return cls(*args, **kwargs)

    def __repr__(self) -> str:
        mode = "redis" if self._fallback.shared else "local"
        return (
            f"RedisStore({self.redacted_url!r}, namespace={self.namespace!r}, "
            f"limit={self.concurrency_limit}, mode={mode!r})"
        )

    # ----------------------------------------------------------------- the Store protocol

    @property
    def concurrency_limit(self) -> int:
        """The shared limit as last seen (the local one during a fallback)."""
        fallback = self._fallback
        return self._last_limit if fallback.shared else fallback.local.concurrency_limit

    async def admit(self, origin: str, deadline: float | None) -> Admission:
        """Wait at ``origin``'s shared circuit breaker, gate and pacer, then for a permit."""
        if self.circuit is None:
            return await self._admit(origin, deadline)
        self._on_loop()
        return await admit_through(self.circuit, origin, deadline, self._admit)

    async def _admit(self, origin: str, deadline: float | None) -> Admission:
        slot_epoch = -1  # the pacing epoch of our reserved sending slot, once we hold one
        self._closed = False  # used again after aclose(): reopens lazily
        self._on_loop()
        parking, fallback = self._parking, self._fallback
        if fallback.shared and parking.looks_full():
            # The fleet looked full a moment ago: queue behind this process's waiters instead
            # of asking Redis; a freed permit (or a grant with room to spare) wakes us.
            await self._park(self._park_timeout(deadline))
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("no concurrency permit before max_elapsed")
            if not fallback.shared:
                self._start("probe", self._probe)  # a no-op while one runs (new loop: anew)
                inner = await fallback.local.admit(origin, deadline)
                return LocalAdmission(self, origin, inner, fallback.live)
            lease_id = self._leases.new_id()
            turn = self._turns.get(origin) if slot_epoch < 0 else None
            try:
                if turn is None:
                    reply = await self._acquire(origin, lease_id, slot_epoch)
                else:
                    reply = await self._acquire_in_turn(turn, origin, lease_id, deadline)
            except Unavailable:
                self._forget(lease_id)
                continue
            except BaseException:
                self._forget(lease_id)  # cancelled mid-call: the script may have granted it
                raise
            status, value, epoch, limit, slot_epoch, workers, paced, seq = (int(x) for x in reply)
            self._last_limit, self._workers = limit, workers
            if paced and origin not in self._turns:
                self._turns[origin] = asyncio.Lock()
            elif not paced:
                self._turns.pop(origin, None)
            if status == _GRANTED:
                lease = Lease(lease_id, epoch)
                self._leases.grant(lease)
                self._start("heartbeat", self._heartbeat)
                parking.wake_for_room(limit - value - 1)  # value: permits held before ours
                return SharedAdmission(self, origin, lease, limit, slot_epoch, seq)
            parking.free_hint = 0
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

    def try_admit(self, origin: str) -> Admission | None:
        """Always None: a shared permit takes a Redis call (``admit``)."""
        return None

    def deposit_request(self) -> None:
        """Count a logical request; sent to Redis with the next acquire (no round trip)."""
        self._budget.deposit(shared=self._fallback.shared)

    async def try_retry(self) -> bool:
        """Withdraw one retry from the fleet's budget (the local one during a fallback)."""
        return await self._budget.try_retry(self._is_shared)

    # ----------------------------------------------------------------- lifecycle

    def stats(self) -> RedisStoreStats:
        """Counters of this process's use of the store."""
        fallback = self._fallback
        return RedisStoreStats(
            mode="redis" if fallback.shared else "local",
            limit=self.concurrency_limit,
            workers=self._workers,
            round_trips=dict(self._conn.round_trips),
            fallbacks=fallback.fallbacks,
            rejoins=fallback.rejoins,
            held=len(self._leases.held),
        )

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` s) until the permits released so far are back in Redis."""
        leases = self._leases
        if leases.releasing and not leases.flush_pending and self._fallback.shared:
            await leases.flush(self._is_shared)
        pending = self._tasks.background()
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def aclose(self) -> None:
        """Return what can be returned, stop the background tasks, close the connections."""
        self._closed = True
        leases = self._leases
        leases.mark_all_released()  # returned here: a later release() must not return them
        link = self._conn.current
        if link is None or link.loop is not asyncio.get_running_loop():
            self._conn.forget()
            leases.orphan_everything()
            self._tasks.forget()
            return
        await self._tasks.stop(timeout=2 * self._settings.redis_timeout + 0.5)
        leases.orphan_everything()
        if self._fallback.shared:
            await leases.flush_orphans()
        self._parking.release_all()
        self._conn.forget()
        await self._conn.close(link)

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
                self._conn.forget()
                self._tasks.reset()
                self._parking.reset()
                self._turns.clear()  # locks of the old loop (maybe held by dead tasks)
                self._leases.flush_pending = False
            self._loop = loop
        return loop

    def _link(self) -> Link:
        loop = self._on_loop()
        link = self._conn.current
        if link is not None and link.loop is loop:
            return link
        if self._closed:
            raise Unavailable("the store is closed")
        return self._conn.link(loop)

    async def _run(
        self,
        kind: str,
        script: str,
        keys: Sequence[str],
        args: Sequence[object],
        *,
        idempotent: bool = True,
    ) -> Any:
        """Run the script named ``script`` (see ``Connections.run``)."""
        link = self._link()
        return await self._conn.run(
            link, kind, link.scripts.named(script), keys, args, idempotent=idempotent
        )

    async def _acquire(self, origin: str, lease_id: str, slot_epoch: int) -> list[Any]:
        """The acquire script, carrying this process's unsent releases to ``origin``."""
        s = self._settings
        budget = self._budget.acquire_args()
        releases = self._leases.take_releases(origin)
        self._parking.acquiring += 1  # only the call itself: not callers queued for a turn
        try:
            reply = await self._run(
                "acquire",
                "acquire",
                self._keys.acquire_keys(origin),
                [lease_id, self._leases.worker, s.lease_ms, s.initial, s.max_concurrency or 0,
                 slot_epoch, *budget, s.state_ms, s.worker_ttl_ms, *releases],
            )  # fmt: skip
        except BaseException:
            self._leases.orphan(*(str(x) for x in releases[::2]))  # returned or not: later
            raise
        finally:
            self._parking.acquiring = max(0, self._parking.acquiring - 1)
        assert isinstance(reply, list)
        return reply

    def _return_lease(self, lease: Lease, origin: str, answer: int | str) -> None:
        """A finished lease goes back with the next acquire, or a flush started here."""
        leases = self._leases
        if lease.local is not None:
            lease.local()  # the fallback's permit it held
            lease.local = None
        if not self._fallback.shared or self._closed:
            leases.held.pop(lease.id, None)
            leases.orphan(lease.id)
            return
        leases.finish(lease, origin, answer)
        try:
            loop = self._on_loop()  # a new loop: a flush pending on the old one is gone
        except RuntimeError:
            return  # no loop (interpreter shutdown): the lease expires with its TTL
        if not leases.flush_pending:
            leases.flush_pending = True
            self._tasks.spawn(loop, leases.flush(self._is_shared))

    def _forget(self, lease_id: str) -> None:
        """A lease that may have been granted to a call we no longer wait for."""
        self._leases.orphan(lease_id)
        if self._fallback.shared:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._tasks.spawn(loop, self._leases.flush_orphans())

    def _note_limit(self, old: int, new: int, why: str) -> None:
        self._last_limit = new
        if new != old:
            # Cuts matter to an operator; growth happens every round trip and stays at DEBUG.
            level = "info" if new < old else "debug"
            emit(LIMIT_EVENT, level, limiter=self.namespace, old=old, new=new, why=why)

    def _shared_breakers(self, settings: CircuitBreaker) -> SharedBreakers:
        async def run(kind: str, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
            # An admit names its ticket (running it twice changes nothing); a record counts.
            return await self._run(kind, script, keys, args, idempotent=script == "breaker_admit")

        return SharedBreakers(
            settings,
            self._keys,
            run,
            shared=self._is_shared,
            spawn=self._spawn_now,
            state_ms=self._settings.state_ms,
        )

    def _spawn_now(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background on the running loop (dropped when there is none)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()  # interpreter shutdown: the token expires by itself
            return
        self._tasks.spawn(loop, coro)

    def _note_workers(self, workers: int) -> None:
        self._workers = workers

    def _is_shared(self) -> bool:
        return self._fallback.shared

    # ----------------------------------------------------------------- background tasks

    def _start(self, name: str, body: Callable[[], Any]) -> None:
        if not self._closed:
            self._tasks.start(self._on_loop(), name, body)

    async def _heartbeat(self) -> None:
        await self._leases.heartbeat(self._is_shared)

    def _park_timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return PARK_POLL
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("no concurrency permit before max_elapsed")
        return min(remaining, PARK_POLL)

    async def _park(self, timeout: float) -> None:
        await self._parking.park(timeout, lambda: self._start("waker", self._waker))

    async def _waker(self) -> None:
        link = self._link()
        generation = self._fallback.generation
        conn, key = self._conn, self._keys.wake
        wait = conn.source.wake_timeout
        await self._parking.waker(
            pop=lambda: conn.bounded(link.waker.blpop([key], timeout=wait), extra=wait),
            push_back=lambda: conn.bounded(link.waker.lpush(key, "1")),
            shared=self._is_shared,
            count=lambda: conn.count("wake"),
            on_trouble=lambda exc: self._trouble(exc, generation),
        )

    def _trouble(self, exc: BaseException, generation: int) -> None:
        """Redis failed: fall back to local limits once, and probe until it answers."""
        if self._closed:
            return
        if self._fallback.trip(exc, generation, limit=self._last_limit, workers=self._workers):
            self._leases.orphan_unsent()
            # The requests sent on shared permits are still on the wire: they take the local
            # limit's permits first, so the fallback does not send a full set on top of them.
            limiter = self._fallback.local.limiter
            for lease in self._leases.held.values():
                permit = limiter.try_acquire()
                if permit is None:
                    break
                lease.local = functools.partial(limiter.release, permit)
            self._parking.wake_all()
            self._start("probe", self._probe)

    async def _probe(self) -> None:
        """Probe with a write script until Redis answers, then rejoin the fleet."""
        if not await self._fallback.probe(self._probe_once, closed=lambda: self._closed):
            return
        self._parking.free_hint = max(1, self._parking.free_hint)
        leases = self._leases
        if leases.orphans:
            await leases.flush_orphans()
        if leases.held or leases.orphans:
            self._start("heartbeat", self._heartbeat)

    async def _probe_once(self) -> None:
        """The probe: a script that writes (a Redis that answers PING but refuses scripts or
        writes, out of memory or a read-only replica, is still down), and that adopts the
        fallback's requests still in flight as leases, so the rejoin does not overshoot."""
        self._conn.count("probe")
        link = self._link()
        await self._conn.reset(link)
        live = [a for a in self._fallback.live if a.adopted is None]
        adopted = [Lease(self._leases.new_id(), -1) for _ in live]
        ids = [lease.id for lease in adopted]
        try:
            await self._conn.bounded(
                link.scripts.adopt(keys=self._keys.renew_keys(), args=self._leases.renew_args(ids))
            )
        except BaseException:
            self._leases.orphan(*ids)  # maybe added: returned once Redis answers
            raise
        for admission, lease in zip(live, adopted, strict=True):
            admission.adopted = lease
            if admission in self._fallback.live:
                self._leases.grant(lease)  # renewed by the heartbeat until released
            else:  # finished during the call
                lease.released = True
                self._leases.orphan(lease.id)
