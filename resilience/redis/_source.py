"""Where the store's Redis clients come from: a URL (standalone or cluster) or the app's client.

The store owns what it builds from a URL (its own pools, timeouts of ``redis_timeout``, no
client-side retries, closed by ``aclose()``) and builds them anew on each event loop. A client
the application passes in is the application's: its timeouts, pool, TLS and retries are used as
they are, it is never closed or disconnected by the store, and it belongs to the loop it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
from collections.abc import Mapping
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from yarl import URL

from .._events import redact_url
from ._settings import StoreSettings

__all__ = ["ACL_COMMANDS", "TROUBLE", "WAKE_SLICE", "Client", "Source", "from_url", "given"]

WAKE_SLICE: Final = 1.0
"""Longest single BLPOP of the wake-up list (seconds)."""

Client = Redis | RedisCluster

ACL_COMMANDS: Final = (
    "evalsha", "script|load", "blpop", "lpush",  # the calls the store makes
    # and those its scripts make (an ACL user's rules apply inside scripts too)
    "time", "hget", "hmget", "hset", "hdel", "hincrby", "pexpire", "ltrim",
    "zadd", "zrem", "zcard", "zcount", "zrange", "zrangebyscore", "zremrangebyscore", "zscore",
)  # fmt: skip
"""The commands an ACL user of the store needs, on keys ``resilience:*`` (the docs' "Run a
fleet on Redis" page)."""

# OSError covers TimeoutError (also a call's time limit running out) and ssl errors; a
# cluster that cannot be reached again raises RedisClusterException, not a RedisError.
TROUBLE: Final = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)


class Source:
    """Builds the clients of one event loop (``client`` for scripts, ``waker`` for BLPOP)."""

    owned: bool = True
    cluster: bool = False
    where: str = ""  # the Redis as it may be logged
    secret: str | None = None  # scrubbed from error texts
    wake_timeout: float = WAKE_SLICE
    call_bound: float | None = None  # a time limit on each call (None: the sockets' timeouts)

    def build(self) -> tuple[Client, Client]:
        raise NotImplementedError

    async def drop_idle(self, client: Client) -> None:
        """A call failed at once on a dropped connection: forget the idle ones (ours only)."""

    async def reset(self, client: Client, waker: Client) -> None:
        """Before a probe: every connection is suspect, start afresh (ours only)."""

    async def close(self, client: Client, waker: Client) -> None:
        """``aclose()``: close what we built; never a client we were given."""


def _options_error(exc: TypeError, options: Mapping[str, Any], valid: list[str]) -> ValueError:
    """A clear message for a misspelt connection option (a TypeError deep in redis-py)."""
    unknown = [name for name in options if name not in valid]
    if not unknown:
        return ValueError(f"connection_options rejected by redis-py: {exc}")
    hints = []
    for name in unknown:
        close = " or ".join(repr(c) for c in difflib.get_close_matches(name, valid, n=2))
        hints.append(f"{name!r}" + (f" (did you mean {close}?)" if close else ""))
    return ValueError(
        "connection_options: unknown option " + ", ".join(hints) + " for redis-py's connection"
    )


def _parameters(*classes: type) -> list[str]:
    """The keyword arguments those classes' constructors take (their bases' included)."""
    names: set[str] = set()
    for cls in classes:
        for base in cls.__mro__:
            init = vars(base).get("__init__")
            if init is not None:
                names |= set(inspect.signature(init).parameters)
    return sorted(names - {"self", "args", "kwargs"})


class _Standalone(Source):
    def __init__(self, url: str, settings: StoreSettings, options: Mapping[str, Any]) -> None:
        self._url = url
        self._settings = settings
        self._options = dict(options)
        parsed = URL(url)
        self.where = redact_url(parsed)
        self.secret = parsed.password
        pool = self._pool(2, settings.redis_timeout)
        try:  # a connection object connects lazily: building one checks every option now
            pool.connection_class(**pool.connection_kwargs)
        except TypeError as exc:
            valid = _parameters(Connection, SSLConnection, UnixDomainSocketConnection)
            raise _options_error(exc, options, valid) from None

    def _pool(self, size: int, socket_timeout: float) -> BlockingConnectionPool:
        timeout = self._settings.redis_timeout
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            **self._options,
        }
        return BlockingConnectionPool.from_url(
            self._url, max_connections=size, timeout=timeout, socket_timeout=socket_timeout,
            **kwargs,
        )  # fmt: skip

    def build(self) -> tuple[Client, Client]:
        timeout = self._settings.redis_timeout
        client = Redis(connection_pool=self._pool(self._settings.max_connections, timeout))
        # its own small pool: a blocking pop must not hold up the scripts
        waker = Redis(connection_pool=self._pool(2, WAKE_SLICE + timeout))
        return client, waker

    async def drop_idle(self, client: Client) -> None:
        assert isinstance(client, Redis)
        await client.connection_pool.disconnect(inuse_connections=False)

    async def reset(self, client: Client, waker: Client) -> None:
        for c in (client, waker):
            assert isinstance(c, Redis)
            await c.connection_pool.disconnect()

    async def close(self, client: Client, waker: Client) -> None:
        for c in (client, waker):
            assert isinstance(c, Redis)
            with contextlib.suppress(Exception):  # closing: whatever state it is in
                await c.connection_pool.disconnect()


class _Cluster(Source):
    cluster = True

    def __init__(self, url: str, settings: StoreSettings, options: Mapping[str, Any]) -> None:
        self._url = url
        self._settings = settings
        self._options = dict(options)
        parsed = URL(url)
        self.where = redact_url(parsed) + " (cluster)"
        self.secret = parsed.password
        # a cluster client connects on first use: building one checks every option now
        self._client(settings.redis_timeout)
        self.call_bound = 4 * settings.redis_timeout  # discovery + a redirect or two

    def _client(self, socket_timeout: float) -> RedisCluster:
        timeout = self._settings.redis_timeout
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "socket_timeout": socket_timeout,
            "retry": Retry(NoBackoff(), 0),  # MOVED/ASK are still followed
            "max_connections": self._settings.max_connections,
            **self._options,
        }
        try:
            return RedisCluster.from_url(self._url, **kwargs)
        except TypeError as exc:
            raise _options_error(exc, self._options, _parameters(RedisCluster)) from None

    def build(self) -> tuple[Client, Client]:
        timeout = self._settings.redis_timeout
        return self._client(timeout), self._client(WAKE_SLICE + timeout)

    async def close(self, client: Client, waker: Client) -> None:
        for c in (client, waker):
            with contextlib.suppress(Exception):  # closing: whatever state it is in
                await c.aclose()


class _Given(Source):
    owned = False

    def __init__(self, client: Client, settings: StoreSettings) -> None:
        if not isinstance(client, (Redis, RedisCluster)):
            raise TypeError(
                "client must be a redis.asyncio Redis or RedisCluster (a Sentinel master_for() "
                f"client is a Redis), got {type(client).__name__}"
            )
        self._client = client
        self.cluster = isinstance(client, RedisCluster)
        kwargs = _kwargs_of(client)
        host, port = kwargs.get("host"), kwargs.get("port")
        self.where = f"{type(client).__name__}({host}:{port})" if host else type(client).__name__
        self.secret = kwargs.get("password")
        socket_timeout = kwargs.get("socket_timeout")
        if isinstance(socket_timeout, (int, float)) and socket_timeout < WAKE_SLICE + 0.1:
            # The pop must end before the client's own read timeout does.
            self.wake_timeout = max(0.05, socket_timeout / 2)
        self.call_bound = 2 * settings.redis_timeout

    def build(self) -> tuple[Client, Client]:
        return self._client, self._client


def _kwargs_of(client: Client) -> dict[str, Any]:
    if isinstance(client, RedisCluster):
        kwargs = dict(client.connection_kwargs)
        # The nodes manager's copy: RedisCluster.startup_nodes itself is redis-py >= 7.0.
        nodes = list(client.nodes_manager.startup_nodes.values())
        if nodes:
            first = nodes[0]
            kwargs.setdefault("host", first.host)
            kwargs.setdefault("port", first.port)
        return kwargs
    return dict(client.connection_pool.connection_kwargs)


def from_url(
    url: str, settings: StoreSettings, options: Mapping[str, Any], *, cluster: bool
) -> Source:
    if cluster:
        return _Cluster(url, settings, options)
    return _Standalone(url, settings, options)


def given(client: Client, settings: StoreSettings) -> Source:
    return _Given(client, settings)
