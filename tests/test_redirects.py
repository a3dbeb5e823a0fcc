"""Gateway redirects are never followed: the payment cannot travel to another host.

A second fake gateway on another loopback port, with its own ``payTo``, stands for
the host a hostile (or hijacked) gateway redirects to. Whatever the status and
whether the redirect answers the unpaid probe, a paid send or a payment signed up
front, that host must hear nothing and nothing may be signed to its ``payTo``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from support.calls import PRICED_MODEL, TEST_NETWORK, chat, post
from support.payments import chat_requests, nonces, warm_body, warm_up

from blockrun_proxy.testing import FakeGateway

# The payment rules hold whichever HTTP client talks to the gateway.
pytestmark = pytest.mark.both_clients

ELSEWHERE_PAY_TO = "0x00000000000000000000000000000000E15E0000"
STATUSES = [301, 302, 303, 307, 308]


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeGateway]:
    async with FakeGateway(network=TEST_NETWORK, pay_to=ELSEWHERE_PAY_TO) as gw:
        yield gw


def redirect(gateway: FakeGateway, elsewhere: FakeGateway, status: int, *, paid: bool) -> None:
    mb = gateway.misbehave
    mb.redirect_to, mb.redirect_status = elsewhere.chat_url, status
    mb.redirect_paid, mb.redirect_unpaid = paid, not paid


def assert_nothing_went_elsewhere(gateway: FakeGateway, elsewhere: FakeGateway) -> None:
    assert elsewhere.requests == []
    assert elsewhere.payments == [] and elsewhere.settled == []
    signed_to = {r.payment["accepted"]["payTo"].lower() for r in gateway.requests if r.payment}
    assert ELSEWHERE_PAY_TO.lower() not in signed_to


@pytest.mark.parametrize("status", STATUSES)
async def test_a_redirected_probe_is_a_502_and_signs_nothing(proxy, gateway, elsewhere, status):
    redirect(gateway, elsewhere, status, paid=False)
    reply = await post(proxy, chat(PRICED_MODEL))
    assert reply.status == 502 and reply.code == "gateway_redirect"
    assert "x-should-retry" not in reply.headers  # nothing was paid: retrying is free
    assert gateway.payments == []
    assert [r.payment for r in chat_requests(gateway)] == [None]  # not even retried
    assert_nothing_went_elsewhere(gateway, elsewhere)


@pytest.mark.parametrize("status", STATUSES)
async def test_a_redirected_paid_send_is_a_424(proxy, gateway, elsewhere, status):
    redirect(gateway, elsewhere, status, paid=True)
    reply = await post(proxy, chat(PRICED_MODEL))
    assert reply.status == 424 and reply.code == "gateway_redirect"
    assert reply.headers["x-should-retry"] == "false"
    assert reply.headers["x-blockrun-upstream-status"] == str(status)
    # probe, then the one paid send: no replay, no second signature
    assert [r.payment is not None for r in chat_requests(gateway)] == [False, True]
    assert_nothing_went_elsewhere(gateway, elsewhere)


async def test_a_redirected_payment_signed_up_front_is_a_424(start_proxy, gateway, elsewhere):
    proxy = await start_proxy()
    await warm_up(proxy)
    for status in STATUSES:
        redirect(gateway, elsewhere, status, paid=True)
        before = len(gateway.requests)
        reply = await post(proxy, warm_body(PRICED_MODEL))
        assert reply.status == 424 and reply.code == "gateway_redirect", status
        assert reply.headers["x-blockrun-upstream-status"] == str(status)
        assert [r.payment is not None for r in chat_requests(gateway, before)] == [True]
    assert_nothing_went_elsewhere(gateway, elsewhere)
    assert len(nonces(gateway)) == len(gateway.settled)  # only the warm-up was ever paid


@pytest.mark.parametrize("status", [301, 307])
async def test_a_redirected_models_fetch_is_not_followed(start_proxy, elsewhere, status):
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": elsewhere.base_url + "/v1/models"})

    app = web.Application()
    app.router.add_get("/api/v1/models", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        proxy = await start_proxy(api_url=f"http://127.0.0.1:{port}/api")
        async with (
            aiohttp.ClientSession() as session,
            session.get(proxy.base_url + "/models") as resp,
        ):
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "gateway_redirect"
        assert elsewhere.requests == [] and elsewhere.models_calls == 0
    finally:
        await runner.cleanup()
