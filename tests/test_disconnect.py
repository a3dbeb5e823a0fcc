"""A client that hangs up mid-stream closes the upstream request at once."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiohttp import web

# The payment rules hold whichever HTTP client talks to the gateway.
pytestmark = pytest.mark.both_clients


async def test_client_hangup_closes_the_upstream_quickly(aiohttp_server, start_proxy):
    upstream_done = asyncio.Event()
    stream_started = asyncio.Event()

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(b'data: {"n": 0}\n\n')
            stream_started.set()
            # Then a long silence, as a reasoning model thinking: with nothing to write, the
            # proxy notices the hang-up only if the disconnect itself cancels its handler.
            await asyncio.sleep(30)
        finally:
            upstream_done.set()
        return resp

    app = web.Application()
    app.router.add_post("/api/v1/chat/completions", slow_stream)
    upstream = await aiohttp_server(app)  # the test server cancels handlers on hang-up
    proxy = await start_proxy(api_url=str(upstream.make_url("/api")))

    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            proxy.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        assert resp.status == 200
        await resp.content.readany()
        await stream_started.wait()
        hung_up = time.monotonic()
        resp.close()  # drops the connection mid-stream
    await asyncio.wait_for(upstream_done.wait(), timeout=5)
    # The upstream would have stayed open 30 s; it is closed within a fraction of a second.
    assert time.monotonic() - hung_up < 2.0


async def test_a_write_to_a_client_that_left_is_not_a_server_error(
    start_proxy, monkeypatch, caplog
):
    """wrk and impatient clients close mid-response; that is a 499, never a 500 traceback."""
    from aiohttp.client_exceptions import ClientConnectionResetError

    from blockrun_proxy import relay as relay_module

    async def pump_to_a_closed_client(upstream, downstream, stats):
        raise ClientConnectionResetError("Cannot write to closing transport")

    monkeypatch.setattr(relay_module, "pump", pump_to_a_closed_client)
    caplog.set_level(logging.INFO)
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            proxy.base_url + "/chat/completions",
            json={
                "model": "nvidia/deepseek-v4-flash",
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        resp.close()
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    access = [r.fields for r in caplog.records if r.name == "blockrun_proxy.access"]
    assert [line["status"] for line in access] == [499]
