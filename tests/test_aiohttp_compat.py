"""Each aiohttp internal the middleware relies on, pinned: a release that changes one fails here,
by name, instead of breaking requests (``resilience/_aiohttp_compat.py``)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import multipart, web
from aiohttp import payload as pl

from resilience import _aiohttp_compat as compat

pytestmark = pytest.mark.anyio


async def test_client_session_keeps_its_middlewares_in__middlewares() -> None:
    async def passthrough(
        req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        return await handler(req)

    async with aiohttp.ClientSession(middlewares=(passthrough,)) as session:
        assert compat.session_middlewares(session) == (passthrough,)
        compat.set_session_middlewares(session, ())
        assert compat.session_middlewares(session) == ()


async def test_client_session_has__retry_connection_for_the_hidden_resend() -> None:
    async with aiohttp.ClientSession() as session:
        assert isinstance(session._retry_connection, bool)


def test_client_request_exposes_its_session_publicly() -> None:
    assert isinstance(aiohttp.ClientRequest.session, property)


async def _app_server(body: bytes) -> tuple[web.AppRunner, str]:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/"


async def test_response_read_returns_the_body_cached_in__body() -> None:
    runner, url = await _app_server(b"on the wire")
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert not compat.body_is_cached(resp)
            compat.cache_body(resp, b"cached")
            assert compat.body_is_cached(resp)
            assert await resp.read() == b"cached"
    finally:
        await runner.cleanup()


async def test_bytes_pushed_back_with_unread_data_are_read_again() -> None:
    runner, url = await _app_server(b"0123456789")
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            head = await resp.content.read(4)
            compat.unread(resp, head)
            assert await resp.read() == b"0123456789"
    finally:
        await runner.cleanup()


def test_payload_has_consumed() -> None:
    payload = pl.BytesPayload(b"x")
    assert payload.consumed is False


def test_multipart_writer_keeps_its_parts_in__parts() -> None:
    writer = multipart.MultipartWriter()
    writer.append(b"part")
    ((part, _, _),) = writer._parts
    assert isinstance(part, pl.Payload)
    assert compat.is_replayable(writer)


def test_async_iterable_payload_has__cached_chunks() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    payload = pl.AsyncIterablePayload(chunks())
    assert hasattr(payload, "_cached_chunks")
    assert not compat.is_replayable(payload)


def test_iobase_payload_keeps_its_file_in__value() -> None:
    buffer = io.BytesIO(b"x")
    payload = pl.BufferedReaderPayload(io.BufferedReader(buffer))
    assert payload._value.seekable()
    assert compat.is_replayable(payload)
