"""Slow and idle clients are bounded (issue 9, finding 4), tried on raw sockets the way an
attacker would: header drippers, silent connections, stalled bodies, a connection flood."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from support.calls import FREE_MODEL, JSON
from support.servers import until

from blockrun_proxy.app import ADMISSION_KEY, METRICS_KEY
from blockrun_proxy.config import Settings
from blockrun_proxy.connections import OVER_CAP_RESPONSE
from blockrun_proxy.limits import Limits

CHAT = orjson.dumps({"model": FREE_MODEL, "messages": [{"role": "user", "content": "x"}]})
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@asynccontextmanager
async def raw(proxy) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the proxy closed the connection (reading whatever it sent first)."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), limit):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


async def response_head(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(
        next(
            line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ).split(b":")[1]
    )
    await reader.readexactly(length)
    return head


def sample(proxy, name: str) -> float:
    value = proxy.app[METRICS_KEY].registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_a_silent_connection_is_closed_after_the_headers_timeout(start_proxy):
    proxy = await start_proxy(headers_timeout_seconds=0.3)
    async with raw(proxy) as (reader, _):
        assert 0.2 < await closed_after(reader, 5) < 2
    proxy.app[METRICS_KEY].sync()
    assert sample(proxy, "blockrun_proxy_connections_timed_out_total") == 1


async def test_a_header_dripping_client_is_closed_after_the_headers_timeout(start_proxy):
    proxy = await start_proxy(headers_timeout_seconds=0.5)
    async with raw(proxy) as (reader, writer):
        started = time.monotonic()
        request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: " + b"a" * 400
        closed = asyncio.create_task(closed_after(reader, 5))
        for byte in request:  # one byte every 20 ms: the connection is never idle
            if closed.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.02)
        await closed
        assert 0.4 < time.monotonic() - started < 2.5
    assert proxy.app[ADMISSION_KEY].active == 0


async def test_a_kept_alive_connection_idles_for_the_keepalive_timeout_not_the_headers_one(
    start_proxy,
):
    proxy = await start_proxy(headers_timeout_seconds=0.3, keepalive_timeout_seconds=1.5)
    async with raw(proxy) as (reader, writer):
        writer.write(HEALTHZ)
        assert (await response_head(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.6)  # idle past the headers timeout, within keep-alive
        writer.write(HEALTHZ)
        assert (await response_head(reader)).startswith(b"HTTP/1.1 200")
        # Then silence: closed once the keep-alive runs out.
        assert 1.0 < await closed_after(reader, 5) < 3


async def test_a_kept_alive_connection_dripping_its_next_request_is_closed(start_proxy):
    proxy = await start_proxy(headers_timeout_seconds=0.3, keepalive_timeout_seconds=30)
    async with raw(proxy) as (reader, writer):
        writer.write(HEALTHZ)
        assert (await response_head(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.5)
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")  # and nothing more
        assert 0.2 < await closed_after(reader, 5) < 2


async def test_stalled_bodies_release_their_slots_and_a_real_call_is_served(start_proxy, gateway):
    """With --max-concurrent 4, 4 clients that send headers with a Content-Length and never
    the body held every slot: a real call then waited for its 429."""
    proxy = await start_proxy(
        max_concurrent=4, max_queue=4, queue_timeout_seconds=10.0, body_timeout_seconds=0.5
    )
    admission = proxy.app[ADMISSION_KEY]
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model"'
    )
    async with (
        raw(proxy) as (r1, w1),
        raw(proxy) as (r2, w2),
        raw(proxy) as (r3, w3),
        raw(proxy) as (r4, w4),
    ):
        for writer in (w1, w2, w3, w4):
            writer.write(head)
        await until(lambda: admission.active == 4)
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as session,
            session.post(proxy.base_url + "/chat/completions", data=CHAT, headers=JSON) as resp,
        ):
            assert resp.status == 200
        assert time.monotonic() - started < 5  # served once the stalled bodies timed out
        for reader in (r1, r2, r3, r4):
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"request_timeout" in await asyncio.wait_for(reader.read(4096), 5)
    assert len(gateway.requests) == 1  # the real call only (a free model: no probe)
    await until(lambda: admission.active == 0)


async def test_connections_past_the_cap_are_refused_at_once_and_counted(start_proxy):
    proxy = await start_proxy(max_connections=3)
    async with raw(proxy), raw(proxy), raw(proxy) as (reader, writer):
        writer.write(HEALTHZ)  # the third is served
        assert (await response_head(reader)).startswith(b"HTTP/1.1 200")
        async with raw(proxy) as (fourth, _):
            started = time.monotonic()
            refused = await asyncio.wait_for(fourth.read(), 5)
            assert time.monotonic() - started < 1
        assert refused == OVER_CAP_RESPONSE
        body = orjson.loads(refused.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "too_many_connections"
        proxy.app[METRICS_KEY].sync()
        assert sample(proxy, "blockrun_proxy_connections_refused_total") == 1
        assert sample(proxy, "blockrun_proxy_client_connections") == 3
    # The three closed: there is room again.
    await until(
        lambda: (
            (proxy.app[METRICS_KEY].sync(), sample(proxy, "blockrun_proxy_client_connections"))[1]
            == 0
        )
    )
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/healthz") as resp:
        assert resp.status == 200


def test_the_connection_cap_sits_above_the_admission_limits():
    for settings in (Settings(), Settings(max_concurrent=2000, max_queue=500)):
        limits = Limits.from_settings(settings)
        assert limits.max_connections > limits.max_concurrent + limits.max_queue
    assert Limits.from_settings(Settings(max_connections=10)).max_connections == 10
