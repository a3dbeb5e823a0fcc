"""A gateway cannot make the proxy buffer an unbounded /v1/models answer."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from support.calls import get

from blockrun_proxy.upstream import MAX_MODELS_BODY

pytestmark = pytest.mark.both_clients


@pytest.fixture
async def endless_catalogue() -> AsyncIterator[str]:
    """A gateway whose catalogue never ends (streamed, no Content-Length)."""

    async def models(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        block = b" " * 65536
        for _ in range(MAX_MODELS_BODY // len(block) + 2):
            await response.write(block)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/api"
    await runner.cleanup()


async def test_an_endless_catalogue_is_refused_not_buffered(run_proxy, endless_catalogue):
    proxy = await run_proxy(api_url=endless_catalogue, wallet_key="0x" + secrets.token_hex(32))
    reply = await get(proxy, "/v1/models")
    assert reply.status == 502
    assert orjson.loads(reply.body)["error"]["code"] == "bad_gateway_answer"
