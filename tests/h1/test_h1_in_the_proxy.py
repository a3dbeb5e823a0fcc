"""The proxy relaying through each upstream client: compressed answers pass through as
they came, and every route (not only chat) goes through the client --upstream-client
names."""

from __future__ import annotations

import gzip

import aiohttp
import pytest
from support.scripted import ok

from blockrun_proxy import h1
from blockrun_proxy.appkeys import CORE_KEY

FREE = "nvidia/deepseek-v4-flash"
CHAT = {"model": FREE, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.both_clients
async def test_compressed_answers_pass_through_untouched(start_proxy, serve, upstream_client):
    packed = gzip.compress(b'{"choices": []}' * 20)
    gateway = await serve(
        lambda r: ok(packed, headers="Content-Type: application/json\r\nContent-Encoding: gzip\r\n")
    )
    proxy = await start_proxy(api_url=f"http://127.0.0.1:{gateway.port}/api")
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            proxy.base_url + "/chat/completions", json=CHAT, headers={"Accept-Encoding": "gzip"}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == packed
    (request,) = gateway.requests
    assert request.line == "POST /api/v1/chat/completions HTTP/1.1"
    assert request.headers["accept-encoding"] == "gzip"  # the client's, forwarded
    assert request.headers["user-agent"] == "blockrun-proxy"


async def test_every_route_relays_over_h1_by_default(start_proxy, serve, monkeypatch):
    sent: list[tuple[str, str]] = []
    request = h1.Client.request

    async def spy(self, method, url, *args, **kwargs):
        sent.append((method, str(url)))
        return await request(self, method, url, *args, **kwargs)

    monkeypatch.setattr(h1.Client, "request", spy)
    gateway = await serve(lambda r: ok(b'{"data": []}', headers="Content-Type: x/y\r\n"))
    base = f"http://127.0.0.1:{gateway.port}/api"
    proxy = await start_proxy(api_url=base)
    assert isinstance(proxy.app[CORE_KEY].session, h1.Client)
    calls = [
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/messages", {**CHAT, "model": "anthropic/claude-x"}),
        ("POST", "/v1/search", {"query": "q"}),
        ("GET", "/v1/models", None),  # the catalogue, fetched through the gateway
        ("GET", "/v1/files/abc", None),  # a path only the relay route serves
        ("DELETE", "/v1/files/abc", None),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, body in calls:
            async with session.request(method, proxy.url + path, json=body) as resp:
                assert resp.status == 200, (path, await resp.text())
                assert await resp.read() == b'{"data": []}'
    assert [(m, url.removeprefix(base)) for m, url in sent] == [(m, p) for m, p, _ in calls]
    assert [r.line.split(" ", 2)[:2] for r in gateway.requests] == [
        [m, "/api" + p] for m, p, _ in calls
    ]
