"""How the store connects: the app's own client, its connection options, a least-privilege
ACL user (all against a real redis-server)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from resilience import Feedback, Signal
from resilience.redis import RedisStore
from resilience.redis._source import ACL_COMMANDS
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ORIGIN = "http://api.test"


async def exercise(store: RedisStore) -> None:
    """Every script and the wake-up list: grant, cut, gate, budget, release, park."""
    store.deposit_request()
    admission = await store.admit(ORIGIN, None)
    await admission.report(Feedback(Signal.CONCURRENCY))
    admission.release()
    admission = await store.admit(ORIGIN, None)
    await admission.report(Feedback(Signal.RATE, 0.0))
    admission.release()
    assert await store.try_retry()
    admission = await store.admit(ORIGIN, None)
    await admission.report(Feedback(Signal.SUCCESS))
    await admission.wait_for_release(0.05)  # parks on the wake-up list
    admission.release()
    await store.drain()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_ca_cert": "/ca.pem"}, "'ssl_ca_cert' \\(did you mean 'ssl_ca_certs'"),
        ({"socket_timout": 1.0}, "did you mean .*'socket_timeout'"),
        ({"no_such_option": 1}, "unknown option 'no_such_option'"),
    ],
)
@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"])
def test_a_misspelt_connection_option_fails_when_the_store_is_built(
    url: str, options: dict[str, object], message: str
) -> None:
    """Issue 16 item 6: it made every request raise TypeError instead."""
    with pytest.raises(ValueError, match=message):
        RedisStore.from_url(url, namespace="n", connection_options=options)
    with pytest.raises(ValueError, match=message):
        RedisStore.from_url(url, namespace="n", cluster=True, connection_options=options)


def test_a_url_or_a_client_and_the_client_keeps_its_settings() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="url or a client"):
        RedisStore(namespace="n")
    with pytest.raises(TypeError, match="url or a client"):
        RedisStore("redis://127.0.0.1:1/0", client=client, namespace="n")
    with pytest.raises(TypeError, match="the client's"):
        RedisStore(client=client, namespace="n", connection_options={"ssl": True})
    with pytest.raises(TypeError, match="Redis or RedisCluster"):
        RedisStore(client="redis://x", namespace="n")  # type: ignore[arg-type]


async def test_the_apps_client_is_used_and_never_closed(
    server: RedisServer, namespace: str
) -> None:
    client = Redis.from_url(server.url, socket_timeout=2.0, decode_responses=True)
    try:
        async with RedisStore(client=client, namespace=namespace) as store:
            await exercise(store)
            assert store.stats().mode == "redis"
            assert store.stats().fallbacks == 0

            # the app's own command in flight on the same client while the store closes
            async def app_pop() -> object:
                return await client.blpop([f"app:{namespace}"], timeout=1)

            app_call = asyncio.create_task(app_pop())
            await asyncio.sleep(0.05)
        await client.lpush(f"app:{namespace}", "job")
        assert await app_call == (f"app:{namespace}", "job")  # not cut off by the store
        assert await client.ping()  # still open, still the app's
    finally:
        await client.aclose()


async def test_a_least_privilege_acl_user_runs_the_fleet(
    server: RedisServer, namespace: str
) -> None:
    """The README's ACL line, on a real ACL user: those commands on ``resilience:*`` suffice,
    and that user can read nothing else."""
    admin = Redis.from_url(server.url, decode_responses=True)
    user = f"limiter-{namespace}"
    try:
        rule = ["on", ">pw-1", "resetkeys", "~resilience:*", "resetchannels", "-@all",
                *(f"+{c}" for c in ACL_COMMANDS)]  # fmt: skip
        await admin.execute_command("ACL", "SETUSER", user, "reset", *rule)  # type: ignore[no-untyped-call]
        url = server.url.replace("redis://", f"redis://{user}:pw-1@")
        async with RedisStore.from_url(url, namespace=namespace) as store:
            await exercise(store)
            assert store.stats().mode == "redis"
            assert store.stats().fallbacks == 0
        limited = Redis.from_url(url, decode_responses=True)
        try:
            with pytest.raises(NoPermissionError):
                await limited.get("other-app:key")
        finally:
            await limited.aclose()
    finally:
        await admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]
        await admin.aclose()


async def test_a_short_client_timeout_gets_short_wake_up_pops(
    server: RedisServer, namespace: str
) -> None:
    """A waiter parked longer than the client's socket_timeout is still woken by the release,
    without the blocking pop timing out into a fallback."""
    client = Redis.from_url(server.url, socket_timeout=0.3)
    try:
        async with (
            RedisStore(client=client, namespace=namespace, max_concurrency=1) as a,
            RedisStore(client=client, namespace=namespace, max_concurrency=1) as b,
        ):
            held = await a.admit(ORIGIN, None)
            waiter = asyncio.create_task(b.admit(ORIGIN, None))
            await asyncio.sleep(1.0)  # several of the client's timeouts
            assert not waiter.done()
            held.release()
            (await asyncio.wait_for(waiter, 1.0)).release()
            assert b.stats().mode == "redis"
            assert b.stats().fallbacks == 0
            assert b.stats().round_trips["wake"] >= 3  # pops of 0.15 s, not one of 1 s
    finally:
        await client.aclose()


async def test_a_hung_redis_behind_the_apps_client_costs_at_most_two_redis_timeouts() -> None:
    """The app's client has redis-py's own long timeouts; the store bounds each call itself."""
    with RedisServer() as srv:
        client = Redis.from_url(srv.url)  # socket_timeout: redis-py's default
        try:
            async with RedisStore(
                client=client, namespace="hung", redis_timeout=0.2, probe_max_delay=0.2
            ) as store:
                (await store.admit(ORIGIN, None)).release()
                await store.drain()
                srv.pause()
                try:
                    started = asyncio.get_running_loop().time()
                    admission = await store.admit(ORIGIN, None)
                    assert asyncio.get_running_loop().time() - started < 2 * 0.2 + 0.3
                    admission.release()
                    assert store.stats().mode == "local"
                finally:
                    srv.resume()
        finally:
            await client.aclose()
