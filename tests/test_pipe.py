"""The pump: bytes unchanged whatever the chunking, and a slow client slows the upstream,
from each upstream HTTP client as the core builds it (h1, aiohttp)."""

import asyncio
import os
import random
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from blockrun_proxy import h1
from blockrun_proxy.config import Settings
from blockrun_proxy.core import upstream_client as open_client
from blockrun_proxy.limits import Limits
from blockrun_proxy.pipe import PipeStats, Source, UpstreamBroke, pump
from blockrun_proxy.upstream import UpstreamClient

pytestmark = pytest.mark.both_clients


def upstream_app(
    payload: bytes, progress: dict, *, break_after: int | None = None
) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        rng = random.Random(7)
        pos = 0
        while pos < len(payload):
            if break_after is not None and pos >= break_after:
                request.transport.abort()
                return resp
            size = rng.choice((1, 7, 100, 4096, 65536))
            await resp.write(payload[pos : pos + size])
            pos += size
            progress["written"] = pos
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def get(client: UpstreamClient, url: str) -> Source:
    if isinstance(client, h1.Client):
        return await client.request("GET", url)
    return await client.get(url)


def pumping_app(upstream_url: str, outcome: dict, kind: str) -> web.Application:
    settings = Settings(upstream_client=kind)

    async def handler(request: web.Request) -> web.StreamResponse:
        client = open_client(settings, Limits.from_settings(settings))
        try:
            async with await get(client, upstream_url) as upstream:
                resp = web.StreamResponse()
                await resp.prepare(request)
                try:
                    await pump(upstream, resp, outcome.setdefault("stats", PipeStats()))
                except UpstreamBroke:
                    outcome["broke"] = True
                    request.transport.abort()
                return resp
        finally:
            await client.close()

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def test_bytes_arrive_unchanged(aiohttp_server, aiohttp_client, upstream_client):
    payload = os.urandom(300_000) + b"data: [DONE]\n\n"
    progress: dict = {}
    outcome: dict = {}
    upstream = await aiohttp_server(upstream_app(payload, progress))
    app = pumping_app(str(upstream.make_url("/")), outcome, upstream_client)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert await resp.read() == payload
    assert outcome["stats"].bytes_sent == len(payload)


async def test_upstream_break_is_reported_not_ended_cleanly(
    aiohttp_server, aiohttp_client, upstream_client
):
    payload = os.urandom(500_000)
    outcome: dict = {}
    upstream = await aiohttp_server(upstream_app(payload, {}, break_after=100_000))
    app = pumping_app(str(upstream.make_url("/")), outcome, upstream_client)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert outcome.get("broke") is True


async def test_slow_client_holds_back_the_upstream(aiohttp_server, upstream_client):
    """A client that stops reading stops the upstream writer: nothing buffers without bound."""
    payload = b"x" * (64 * 1024 * 1024)
    progress: dict = {"written": 0}
    upstream = await aiohttp_server(upstream_app(payload, progress))
    proxy = await aiohttp_server(pumping_app(str(upstream.make_url("/")), {}, upstream_client))
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode())
    await writer.drain()
    await reader.read(1024)  # the headers; then this client stops reading
    await asyncio.sleep(1.0)
    stalled_at = progress["written"]
    await asyncio.sleep(0.5)
    # Only socket buffers (kernel, both hops) and aiohttp's bounded ones hold data.
    assert progress["written"] == stalled_at
    assert stalled_at < 24 * 1024 * 1024, stalled_at
    writer.close()


def test_header_coalescing_knob_exists_and_the_pin_guarantees_it() -> None:
    """``coalesce_headers`` sets ``_send_headers_immediately``, which aiohttp added in 3.12.

    On an older aiohttp the assignment would be silently ignored (headers sent in
    their own packet again), so the dependency pin is what keeps the saving real.
    """
    import tomllib  # Python 3.11+, like this test suite; the package itself supports 3.10

    assert hasattr(web.StreamResponse(), "_send_headers_immediately")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    [spec] = [d for d in project["project"]["dependencies"] if d.startswith("aiohttp")]
    floor = re.search(r">=\s*([0-9]+)\.([0-9]+)", spec)
    assert floor is not None, spec
    assert (int(floor.group(1)), int(floor.group(2))) >= (3, 12), spec
