"""How the store connects: the app's own client, its connection options, a least-privilege
ACL user (all against a real redis-server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from resilience import Feedback, Signal
from resilience.redis import RedisStore
from resilience.redis._source import ACL_COMMANDS
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ORIGIN = "http://api.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def exercise(store: RedisStore) -> None:
    """Every script and the wake-up list: grant, cut, gate, budget, release, park."""
    await store.deposit_request()
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
