"""Redirects on the other rails and on job polls (issue 9 finding 2, issues 10 and 12):
never followed, whatever travels with the request (a Solana transaction, the API key, a
job's payment on its polls), and a redirect after a send that may have been charged is a
``424``, as on Base chat (test_redirects.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from support.calls import PRICED_MODEL, TEST_NETWORK, chat, get, post

from blockrun_proxy.testing import ApiKeyFakeGateway, FakeGateway, SolanaFakeGateway

VIDEO = {"model": "xai/grok-imagine-video", "prompt": "an apple spinning", "duration_seconds": 5}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Listener:
    """A second host that records whatever reaches it (it must hear nothing)."""

    def __init__(self) -> None:
        self.heard: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.heard.append(dict(request.headers))
        return web.Response(status=402)


@pytest.fixture
async def elsewhere() -> Any:
    listener = Listener()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", listener.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    listener.url = f"http://127.0.0.1:{port}/api/v1/chat/completions"  # type: ignore[attr-defined]
    yield listener
    await runner.cleanup()


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirected_solana_payment_is_a_424_and_never_followed(
    start_solana_proxy, solana_gateway: SolanaFakeGateway, elsewhere, status
) -> None:
    proxy = await start_solana_proxy()
    mb = solana_gateway.misbehave
    mb.redirect_to, mb.redirect_status, mb.redirect_paid = elsewhere.url, status, True
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert reply.status == 424 and reply.code == "gateway_redirect", reply.body
    assert reply.headers["x-should-retry"] == "false"
    paid = [r for r in solana_gateway.requests if r.payment is not None]
    assert len(paid) == 1  # the one transaction, sent once, never replayed
    assert elsewhere.heard == []


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_on_the_api_key_rail_is_a_424_and_the_key_never_travels(
    api_host: ApiKeyFakeGateway, run_proxy: Any, elsewhere, status
) -> None:
    proxy = await run_proxy(api_key=api_host.new_key(), api_key_url=api_host.base_url)
    mb = api_host.misbehave  # on this host, "paid" means carrying the key
    mb.redirect_to, mb.redirect_status, mb.redirect_paid = elsewhere.url, status, True
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert reply.status == 424 and reply.code == "gateway_redirect", reply.body
    assert reply.headers["x-should-retry"] == "false"
    assert len(api_host.requests) == 1  # sent once, never resent
    assert elsewhere.heard == []


async def test_a_redirected_job_poll_is_not_followed_with_the_jobs_payment(
    start_proxy, wallet_key: str, elsewhere
) -> None:
    """A poll carries its submit's payment: a redirect must not take it to another host."""
    switch = {"on": False}

    @web.middleware
    async def redirect_polls(request: web.Request, handler: Handler) -> web.StreamResponse:
        if switch["on"] and request.method == "GET" and "/generations/" in request.path:
            return web.Response(status=307, headers={"Location": elsewhere.url})
        return await handler(request)

    gateway = FakeGateway(network=TEST_NETWORK)
    gateway.app.middlewares.append(redirect_polls)
    async with gateway:
        proxy = await start_proxy(api_url=gateway.base_url)
        submit = await post(proxy, VIDEO, path="/v1/videos/generations")
        assert submit.status == 202, submit.body
        switch["on"] = True
        poll = await get(proxy, submit.json["poll_url"])
        assert poll.status == 502 and poll.code == "gateway_redirect", poll.body
        assert elsewhere.heard == []
        assert len({p.nonce for p in gateway.payments}) == 1  # the poll signed nothing
