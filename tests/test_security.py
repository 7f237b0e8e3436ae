"""Security: credentials never reach the logs; a hostile server cannot make the client sleep past
its deadline, hold a permit forever, buffer unbounded memory, or crash the middleware.

``tests/test_middleware.py::test_credentials_never_reach_the_logs`` covers the attempt events of
a retried POST; here every event type (attempt, limit, gate) over every outcome is checked, plus
``redact_url`` as a property.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import anyio
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from resilience import ApiError, DeadlineExceeded, Redaction
from resilience._events import redact_url
from resilience.testing import Emulator, Fault
from tests.conftest import (
    AIOHTTP_VERSION,
    MB,
    Events,
    assert_baseline,
    attempts,
    capture_events,
    memory_stays_low,
    middleware,
    serve,
)

pytestmark = [pytest.mark.anyio, pytest.mark.emulator(generation_time=0.002, ready_after=60.0)]


# ------------------------------------------------------------------ credentials

_FRAGMENTS = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "auth",
    "signature",
    "sig",
    "credential",
    "session",
)
_SAFE_NAMES = ("voice", "model", "format", "page", "limit", "lang", "q")


@st.composite
def secret_names(draw: st.DrawFn) -> str:
    """A query parameter name containing a documented secret word, in any case, with separators
    and decoration around it (``X-Amz-Signature``, ``access_token``, ``apiKey``...)."""
    word = draw(st.sampled_from(_FRAGMENTS))
    word = "".join(c.upper() if draw(st.booleans()) else c for c in word)
    affix = st.text(alphabet="abcXYZ-_.", max_size=6)
    return draw(affix) + word + draw(affix)


@settings(max_examples=200, deadline=None)
@given(
    secrets=st.lists(
        st.tuples(secret_names(), st.from_regex(r"[A-Za-z0-9+/=._~-]{1,24}", fullmatch=True)),
        min_size=1,
        max_size=4,
    ),
    safe=st.lists(st.sampled_from(_SAFE_NAMES), max_size=3, unique=True),
    userinfo=st.booleans(),
)
def test_redact_url_hides_every_secret_parameter_and_userinfo(
    secrets: list[tuple[str, str]], safe: list[str], userinfo: bool
) -> None:
    query: list[tuple[str, str]] = [(name, f"S3CR3T{value}") for name, value in secrets]
    query += [(name, f"keep-{name}") for name in safe]
    url = URL("https://api.example.com/v1/generate").with_query(query)
    if userinfo:
        url = url.with_user("al1ce").with_password("hunter2")
    url = url.with_fragment("frag-token")
    redacted = redact_url(url)
    assert "S3CR3T" not in redacted
    assert "al1ce" not in redacted
    assert "hunter2" not in redacted
    assert "frag-token" not in redacted
    parsed = URL(redacted)
    for name, _ in secrets:
        assert set(parsed.query.getall(name)) == {"REDACTED"}
    for name in safe:
        assert parsed.query[name] == f"keep-{name}"
    assert parsed.path == "/v1/generate"


def test_redact_url_sees_through_percent_encoded_names() -> None:
    url = URL("https://h/x?api%5Fkey=S3CR3T1&to%6Ben=S3CR3T2&X-Amz-Signature=S3CR3T3", encoded=True)
    assert "S3CR3T" not in redact_url(url)


@pytest.mark.parametrize(
    "query",
    [
        "a=1;token=S3CR3T",  # semicolon-separated parameters (W3C's old form recommendation)
        "a=1&b=2;api_key=S3CR3T&c=3",
        "jwt=S3CR3T",
        "id_jwt=S3CR3T",
        "pwd=S3CR3T",
        "pass=S3CR3T",
        "passphrase=S3CR3T",
        "code=S3CR3T",  # an OAuth authorization code
        "auth_code=S3CR3T&state=keep",
        "Token=S3CR3T;Token=S3CR3T",
        "x%3Btoken=S3CR3T",  # an encoded ';' in a name is still one name
    ],
)
def test_redact_url_hides_secrets_behind_semicolons_and_more_names(query: str) -> None:
    redacted = redact_url(URL(f"https://h/v1/x?{query}", encoded=True))
    assert "S3CR3T" not in redacted
    assert redacted.startswith("https://h/v1/x?")


def test_redact_url_keeps_harmless_parameters_and_separators() -> None:
    url = URL("https://h/v1/x?a=1;token=S3CR3T&voice=calm;b", encoded=True)
    assert redact_url(url) == "https://h/v1/x?a=1;token=REDACTED&voice=calm;b"


def test_redaction_takes_user_names_and_path_patterns() -> None:
    """Names added to the built-in fragments; path patterns replace their groups (or their
    whole match): a Telegram-style ``/bot<token>/`` never reaches the logs."""
    rules = Redaction(params=("sid", "X-Custom"), paths=(r"/bot([^/]+)/", r"(?<=/keys/)[^/]+"))
    url = URL("https://h/bot123:S3CR3T-A/sendMessage/keys/S3CR3T-B?SID=S3CR3T-C&x_custom=S3CR3T-D")
    redacted = redact_url(url, rules)
    assert "S3CR3T" not in redacted
    assert redacted == (
        "https://h/botREDACTED/sendMessage/keys/REDACTED?SID=REDACTED&x_custom=REDACTED"
    )
    assert "S3CR3T-A" in redact_url(url)  # not a built-in rule: only where it is asked for


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"params": "sid"}, TypeError),  # a bare string would be read as letters
        ({"params": ("",)}, ValueError),
        ({"params": (3,)}, TypeError),
        ({"paths": ("(",)}, ValueError),
        ({"paths": "/bot"}, TypeError),
    ],
)
def test_bad_redaction_settings_are_rejected(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        Redaction(**kwargs)  # type: ignore[arg-type]


SECRETS = {
    "userinfo-user": "al1ce",
    "userinfo-password": "hunter2-pw",
    "basic-auth": base64.b64encode(b"al1ce:hunter2-pw").decode(),
    "bearer": "sk-bearer-0001",
    "x-api-key": "sk-xapikey-0002",
    "api-key": "sk-apikey-0003",
    "cookie": "sk-cookie-0004",
    "session-cookie": "sk-jar-0005",
    "proxy-authorization": "sk-proxy-0006",
    "x-auth-token": "sk-xauth-0007",
    "q-api_key": "sk-q-0008",
    "q-apiKey": "sk-q-0009",
    "q-access_token": "sk-q-0010",
    "q-X-Amz-Signature": "sk-q-0011",
    "q-client_secret": "sk-q-0012",
    "q-password": "sk-q-0013",
    "q-token-2": "sk-q-0014",
}


def _secret_query() -> list[tuple[str, str]]:
    return [
        ("api_key", SECRETS["q-api_key"]),
        ("apiKey", SECRETS["q-apiKey"]),
        ("access_token", SECRETS["q-access_token"]),
        ("X-Amz-Signature", SECRETS["q-X-Amz-Signature"]),
        ("client_secret", SECRETS["q-client_secret"]),
        ("password", SECRETS["q-password"]),
        ("token", "first"),
        ("token", SECRETS["q-token-2"]),
        ("voice", "calm"),
    ]


async def test_no_credential_reaches_any_event_on_any_path(emu: Emulator) -> None:
    """Retries, a gate closing, a limit cut, a transport give-up, a permanent failure raised as
    ApiError and a DeadlineExceeded, all with credentials in every place a request carries them."""
    headers = {
        "Authorization": f"Bearer {SECRETS['bearer']}",
        "X-API-Key": SECRETS["x-api-key"],
        "Api-Key": SECRETS["api-key"],
        "Cookie": f"sid={SECRETS['cookie']}",
        "Proxy-Authorization": f"Basic {SECRETS['proxy-authorization']}",
        "X-Auth-Token": SECRETS["x-auth-token"],
    }
    base = (emu.url / "v1/generate").with_query(_secret_query())
    with_userinfo = base.with_user(SECRETS["userinfo-user"]).with_password(
        SECRETS["userinfo-password"]
    )
    mw = middleware(raise_api_errors=True, max_elapsed=1.0)
    with capture_events() as events:
        async with aiohttp.ClientSession(
            middlewares=(mw,), cookies={"session": SECRETS["session-cookie"]}
        ) as s:
            emu.inject(Fault.code("DISPATCH_TIMEOUT"), times=1)
            emu.inject(Fault.code("GENERATION_CONCURRENCY_EXCEEDED"), times=1)
            async with s.post(with_userinfo, json={"job": "a"}) as resp:  # Basic auth
                assert resp.status == 200
            emu.inject(Fault.reset(), times=1)
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await s.post(base, json={"job": "b"}, headers=headers)
            emu.inject(Fault.code("VALIDATION_ERROR"), times=1)
            with pytest.raises(ApiError) as api_error:
                await s.post(base, json={"job": "c"}, headers=headers)
            emu.inject(Fault.code("RATE_LIMITED", retry_after=5), times=1)
            with pytest.raises(ApiError):  # Retry-After beyond max_elapsed: given up, raised
                await s.post(base, json={"job": "d"}, headers=headers)
            with pytest.raises(DeadlineExceeded) as deadline:  # the gate stays closed
                await s.post(base, json={"job": "e"}, headers=headers)
            assert_baseline(s, mw)
    # The server did get them: the test would be vacuous otherwise.
    sent = emu.received
    assert sent[0].headers["Authorization"] == f"Basic {SECRETS['basic-auth']}"
    assert sent[-1].headers["X-API-Key"] == SECRETS["x-api-key"]
    assert f"session={SECRETS['session-cookie']}" in sent[-1].headers["Cookie"]

    kinds = {e["event"] for e in events}
    assert {"resilience.attempt", "resilience.limit", "resilience.gate"} <= kinds
    outcomes = {e["outcome"] for e in attempts(events)}
    assert {"retry", "throttled", "ok", "give_up", "fail"} <= outcomes
    rendered = json.dumps(events, default=repr)
    for name, secret in SECRETS.items():
        assert secret not in rendered, f"{name} leaked into the logs"
    for event in attempts(events):
        assert "voice=calm" in event["url"]  # the URL is there, only its secrets are not
    # What the middleware itself says in its errors carries no credential either.
    for text in (str(deadline.value), api_error.value.message):
        assert not any(secret in text for secret in SECRETS.values())


# ------------------------------------------------------------------ deadlines and permits


async def test_rate_gate_with_a_huge_retry_after_fails_fast_within_a_deadline(
    emu: Emulator,
) -> None:
    """Retry-After: 99999 closes the gate for a day; with max_elapsed set, the answer is given
    back at once and later requests raise DeadlineExceeded at once instead of sleeping."""
    emu.inject(Fault.retry_after_header("99999"), times=1)
    mw = middleware(max_elapsed=5.0)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        started = time.monotonic()
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 429
        with pytest.raises(DeadlineExceeded):
            await s.get(emu.url / "v1/ping")
        assert time.monotonic() - started < 0.5
        assert_baseline(s, mw)
    assert emu.stats.requests == 1


async def test_rate_gate_with_a_huge_retry_after_cannot_park_requests_without_a_deadline(
    emu: Emulator,
) -> None:
    """Without max_elapsed, a Retry-After over MAX_RETRY_AFTER (an hour) gives up instead of
    sleeping (``_decide``). The same must hold for the requests that come after it: they may not
    sleep a day at the gate that answer closed; they fail fast (DeadlineExceeded)."""
    emu.inject(Fault.retry_after_header("99999"), times=1)
    mw = middleware(max_elapsed=None)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 429
        with anyio.move_on_after(0.5) as scope, pytest.raises(DeadlineExceeded):
            await s.get(emu.url / "v1/ping")
        assert not scope.cancelled_caught, "the next request slept at the gate"
    assert emu.stats.requests == 1


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.code("GENERATION_NOT_READY", retry_after_ms=5), id="425-forever"),
        pytest.param(Fault.code("GENERATION_CONCURRENCY_EXCEEDED"), id="plan-limit-forever"),
        pytest.param(
            Fault.code("GENERATION_CONCURRENCY_EXCEEDED", retry_after=99999), id="plan-limit-huge"
        ),
        pytest.param(Fault.code("RATE_LIMITED", retry_after_ms=5), id="rate-limit-forever"),
    ],
)
async def test_endless_throttling_ends_at_max_elapsed(emu: Emulator, fault: Fault) -> None:
    """Throttles and polls do not spend max_attempts, so max_elapsed is what ends them: the
    caller gets the last answer or DeadlineExceeded, no later than the deadline."""
    emu.inject(fault, times=100_000)
    mw = middleware(max_attempts=2, max_elapsed=0.3)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        started = time.monotonic()
        try:
            async with s.get(emu.url / "v1/ping") as resp:
                assert resp.status == fault.http_status
        except DeadlineExceeded:
            pass
        assert time.monotonic() - started < 0.3 + 0.15
        assert_baseline(s, mw)
    assert emu.stats.requests >= 1


async def test_without_max_elapsed_throttles_spend_max_attempts(emu: Emulator) -> None:
    emu.inject(Fault.code("GENERATION_NOT_READY", retry_after_ms=1), times=100_000)
    mw = middleware(max_attempts=4, max_elapsed=None)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 425
        assert_baseline(s, mw)
    assert emu.stats.requests == 4


# ------------------------------------------------------------------ a hostile server


@dataclass
class Hostile:
    url: URL
    hits: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


Route = Callable[[web.Request, Hostile], Awaitable[web.StreamResponse]]
_PAD = b" " * (64 * 1024)


@functools.cache
def _bomb() -> bytes:
    """51 KB of gzip that inflates to a 50 MB "envelope"."""
    return gzip.compress(b'{"code": "INTERNAL_ERROR"' + b" " * (50 * MB) + b"}", 9)


async def _chunked_50mb(request: web.Request, server: Hostile) -> web.StreamResponse:
    resp = web.StreamResponse(status=500)  # no Content-Length: the size is unknown up front
    resp.content_type = "application/json"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        await resp.write(b'{"code": "INTERNAL_ERROR"')
        for _ in range(50 * MB // len(_PAD)):
            await resp.write(_PAD)
        await resp.write(b"}")
    except ConnectionError:
        pass
    return resp


async def _gzip_bomb(request: web.Request, server: Hostile) -> web.StreamResponse:
    return web.Response(
        status=500,
        body=_bomb(),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def _drip(request: web.Request, server: Hostile) -> web.StreamResponse:
    resp = web.StreamResponse(status=503)
    resp.content_type = "application/json"
    resp.content_length = 10_000
    await resp.prepare(request)
    try:
        while not server.stop.is_set():
            await resp.write(b" ")
            await asyncio.sleep(0.01)
    except ConnectionError:
        pass
    return resp


ROUTES: dict[str, Route] = {
    "chunked-50mb": _chunked_50mb,
    "gzip-bomb": _gzip_bomb,
    "drip": _drip,
}


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    """Each route answers its hostile response on the first request, then 200 ``{"ok": true}``."""
    server = Hostile(URL("http://127.0.0.1"))

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        server.hits[name] = server.hits.get(name, 0) + 1
        if server.hits[name] > 1:
            return web.json_response({"ok": True})
        return await ROUTES[name](request, server)

    async with serve(handler, "/{name}", method="GET") as url:
        server.url = url
        try:
            yield server
        finally:
            server.stop.set()


@pytest.mark.parametrize(
    "route",
    [
        "chunked-50mb",
        pytest.param(
            "gzip-bomb",
            marks=pytest.mark.skipif(
                AIOHTTP_VERSION < (3, 14),
                reason="aiohttp < 3.14 inflates a compressed chunk whole (up to 32 MiB per call) "
                "before the middleware reads a byte; 3.14 inflates in 256 KiB steps",
            ),
        ),
    ],
)
async def test_unbounded_error_bodies_are_not_buffered(hostile: Hostile, route: str) -> None:
    """No Content-Length (chunked) or a tiny gzip body that inflates to 50 MB: the classifier
    reads at most envelope_cap + 1 decoded bytes, classifies by status (500: retryable) and
    drops the rest with the connection."""
    _bomb()  # built before measuring: the 50 MB it is compressed from is the test's, not ours
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with memory_stays_low():
            async with s.get(hostile.url / route) as resp:
                assert resp.status == 200
        assert_baseline(s, mw)
    assert hostile.hits[route] == 2


async def test_deeply_nested_error_body_cannot_crash_the_client(emu: Emulator) -> None:
    """JSON nested past the decoder's recursion limit (20,000 levels: 40 KB, inside the 64 KiB
    cap) is malformed input like any other: the status decides (503: retryable)."""
    nested = b"[" * 20_000 + b"]" * 20_000
    emu.inject(Fault.status(503, nested, {"Content-Type": "application/json"}), times=1)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 200
        assert_baseline(s, mw)
    assert emu.stats.requests == 2


async def test_oversized_retry_after_cannot_crash_the_client(emu: Emulator, logs: Events) -> None:
    """5,000 digits (under aiohttp's 8 KiB header limit) is just a very long Retry-After: the
    answer is beyond any deadline, so it is given back at once."""
    emu.inject(Fault.retry_after_header("9" * 5000, status=503, code="DISPATCH_TIMEOUT"), times=1)
    mw = middleware()
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        async with s.get(emu.url / "v1/ping") as resp:
            assert resp.status == 503
        assert_baseline(s, mw)
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"]) == ("give_up", "retry_after_beyond_deadline")


async def test_dripping_error_body_is_bounded_by_the_callers_total_timeout(
    hostile: Hostile,
) -> None:
    """One byte every 10 ms never trips a 50 ms read timeout; the middleware does not time
    attempts itself, so the caller's total timeout is what bounds it, and it gives the permit
    and the connection back (TimeoutError unchanged)."""
    mw = middleware()
    timeout = aiohttp.ClientTimeout(total=0.3, sock_read=0.05)
    async with aiohttp.ClientSession(middlewares=(mw,), timeout=timeout) as s:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as caught:
            await s.get(hostile.url / "drip")
        assert type(caught.value) is asyncio.TimeoutError
        assert time.monotonic() - started < 0.3 + 0.15
        assert_baseline(s, mw)
    assert hostile.hits["drip"] == 1


async def test_server_controlled_log_fields_are_bounded(emu: Emulator, logs: Events) -> None:
    """What the server says goes into logs and errors truncated: the detail to 500 characters,
    its request id to 200."""
    long_detail = "d" * 10_000
    body = json.dumps({"code": "VALIDATION_ERROR", "detail": long_detail}).encode()
    emu.inject(
        Fault.status(422, body, {"Content-Type": "application/json", "X-Request-ID": "r" * 5000}),
        times=1,
    )
    mw = middleware(raise_api_errors=True)
    async with aiohttp.ClientSession(middlewares=(mw,)) as s:
        with pytest.raises(ApiError) as caught:
            await s.get(emu.url / "v1/ping")
        assert_baseline(s, mw)
    assert caught.value.detail is not None
    assert len(caught.value.detail) == 500
    (event,) = attempts(logs)
    assert len(event["server_request_id"]) == 200
    assert not re.search("d{501}", json.dumps(event))


# ------------------------------------------------------------------ the fleet store's errors


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_error_text_never_carries_the_password(logs: Events) -> None:
    """The fallback warning quotes Redis's error: whatever the error says, the URL's password
    is scrubbed from it (a real fallback on a refused connection, then an error whose text
    holds the password, as an AUTH failure of some proxies does)."""
    redis_exceptions = pytest.importorskip("redis.exceptions")
    from resilience.redis import RedisStore

    password = "s3cret-pw-0001"
    url = f"redis://:{password}@127.0.0.1:{_closed_port()}/0"
    async with RedisStore.from_url(url, namespace="scrub", redis_timeout=0.1) as store:
        admission = await store.admit("http://api.test", None)  # Redis is down: local fallback
        admission.release()
        quoted = store._fallback.describe(
            redis_exceptions.AuthenticationError(f"invalid password '{password}' for default")
        )
    (fallback,) = [e for e in logs if e.get("action") == "fallback"]
    assert fallback["error"].startswith("ConnectionError")
    assert password not in json.dumps(logs, default=repr)
    assert password not in quoted
    assert "REDACTED" in quoted


async def test_user_redaction_rules_cover_every_event_and_api_error(logs: Events) -> None:
    """``ResilienceMiddleware(redaction=Redaction(...))``: a token in the path (a Telegram-style
    ``/bot<token>/``) and a parameter name of the user's never reach an event or ApiError."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "code": "VALIDATION_ERROR"}, status=422)

    rules = Redaction(params=("sid",), paths=(r"/bot([^/]+)/",))
    mw = middleware(raise_api_errors=True, redaction=rules)
    async with serve(answer) as base, aiohttp.ClientSession(middlewares=(mw,)) as s:
        url = base.with_path("/bot123:S3CR3T-PATH/sendMessage").with_query(sid="S3CR3T-SID")
        with pytest.raises(ApiError) as raised:
            await s.get(url)
    rendered = json.dumps(logs, default=repr) + str(raised.value)
    assert "S3CR3T" not in rendered
    (event,) = attempts(logs)
    assert event["url"].endswith("/botREDACTED/sendMessage?sid=REDACTED")


async def test_an_attempt_cut_off_while_its_error_body_is_read_is_logged_once(
    hostile: Hostile, logs: Events
) -> None:
    """Every attempt is exactly one event, also one the caller's total timeout ends while the
    middleware reads its error body: ``reason="timeout"``, the caller's TimeoutError."""
    mw = middleware()
    timeout = aiohttp.ClientTimeout(total=0.15)
    async with aiohttp.ClientSession(middlewares=(mw,), timeout=timeout) as s:
        with pytest.raises(asyncio.TimeoutError):
            await s.get(hostile.url / "drip")
        assert_baseline(s, mw)
    (event,) = attempts(logs)
    assert (event["outcome"], event["reason"], event["status"]) == ("fail", "timeout", 503)
    assert event["error"] == "TimeoutError"
