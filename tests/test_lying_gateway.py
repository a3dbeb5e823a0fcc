"""A dishonest gateway: it keeps the payments it refuses, and lies about what it settled.

What it can take is bounded by what the proxy signs: one nonce per client call means
at most one settlement per call, however many authorizations the call needed; and
the cost the proxy reports is what it signed, never the gateway's claim.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from support.calls import FRACTIONAL_MODEL, PRICED_MODEL, TEST_NETWORK, chat, post
from support.payments import assert_one_nonce_per_call, chat_requests, priced, warm_body, warm_up

from blockrun_proxy.app import METRICS_KEY
from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.x402 import usd

CALLS = 3
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metric(proxy, name: str, **labels: str) -> float | None:
    metrics = proxy.app[METRICS_KEY]
    metrics.sync()
    return metrics.registry.get_sample_value(f"blockrun_proxy_{name}", labels)


async def test_refused_payments_kept_and_settled_later_take_one_payment_per_call(
    start_proxy, gateway
):
    # The issue's case: a presigned payment the gateway refuses (here under-priced) is
    # followed by a second one; a gateway that keeps the first settles both, unless
    # they share a nonce.
    proxy = await start_proxy()
    await warm_up(proxy)
    before, paid_before = len(gateway.requests), len(gateway.settled)
    gateway.misbehave.keep_refused = True
    gateway.misbehave.price_multiplier = 1.5  # the learned price is now too low
    for _ in range(CALLS):
        assert (await post(proxy, warm_body(PRICED_MODEL))).status == 200
    assert gateway.kept  # the refused presign, kept
    gateway.settle_kept()
    assert len(gateway.settled) - paid_before <= CALLS
    assert_one_nonce_per_call(gateway, before)


@pytest.mark.parametrize("path", ["cold", "warm"])
async def test_a_gateway_refusing_good_payments_takes_one_payment_per_call(
    start_proxy, gateway, path
):
    proxy = await start_proxy()
    if path == "warm":
        await warm_up(proxy)
    before, paid_before = len(gateway.requests), len(gateway.settled)
    gateway.misbehave.keep_refused = True
    gateway.misbehave.refuse_paid = CALLS  # "not used", every time, and kept
    statuses = [(await post(proxy, warm_body(PRICED_MODEL))).status for _ in range(CALLS)]
    assert set(statuses) <= {200, 402}
    calls = {r.headers["x-request-id"] for r in chat_requests(gateway, before)}
    assert len(calls) == CALLS
    gateway.settle_kept()
    assert len(gateway.settled) - paid_before <= CALLS
    assert_one_nonce_per_call(gateway, before)


@pytest.mark.parametrize("then", ["redirect", "503", "429"])
async def test_a_failure_after_a_refused_presign_never_invites_a_retry(start_proxy, gateway, then):
    # The up-front payment was delivered and refused as "not used", but the gateway kept
    # it. Whatever goes wrong while asking afresh, the client must not retry: each retry
    # is a new call with a new nonce, so one more payment the gateway can settle.
    proxy = await start_proxy()
    await warm_up(proxy)
    before, paid_before = len(gateway.requests), len(gateway.settled)
    gateway.misbehave.keep_refused = True
    gateway.misbehave.refuse_paid = 1
    if then == "redirect":
        gateway.misbehave.redirect_unpaid = True
        gateway.misbehave.redirect_to = "http://127.0.0.1:9/v1/chat/completions"
    else:
        gateway.misbehave.fail_status = int(then)
        gateway.misbehave.fail_unpaid = 10
    reply = await post(proxy, warm_body(PRICED_MODEL))
    assert reply.status == 424, await reply.text()
    assert reply.headers["x-should-retry"] == "false"
    assert gateway.kept
    gateway.settle_kept()
    assert len(gateway.settled) - paid_before == 1
    assert_one_nonce_per_call(gateway, before)


@pytest.mark.parametrize(
    ("claim", "kind"),
    [("999999999", "settled_above_signed"), ("0", "settled_below_signed")],
    ids=["inflated", "zero"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_settlement_claiming_another_amount_is_an_anomaly_not_a_cost(
    proxy, gateway, caplog, claim, kind, stream
):
    gateway.misbehave.settlement_claim = claim
    body = chat(FRACTIONAL_MODEL, max_tokens=64, stream=stream)
    signed = priced(gateway, body)
    with caplog.at_level(logging.WARNING, logger="blockrun_proxy"):
        reply = await post(proxy, body)
    assert reply.status == 200
    assert reply.headers["x-blockrun-cost-usd"] == usd(signed)
    assert reply.headers["x-litellm-response-cost"] == usd(signed)
    warnings = [r.getMessage() for r in caplog.records if "gateway anomaly" in r.getMessage()]
    assert len(warnings) == 1
    assert kind in warnings[0] and reply.headers["x-request-id"] in warnings[0]
    assert metric(proxy, "gateway_anomalies_total", kind=kind) == 1
    assert metric(proxy, "settled_micro_usdc_total") == signed
    assert metric(proxy, "sent_micro_usdc_total") == signed


async def test_an_honest_settlement_is_no_anomaly(proxy, gateway, caplog):
    body = chat(FRACTIONAL_MODEL, max_tokens=64)
    with caplog.at_level(logging.WARNING, logger="blockrun_proxy"):
        reply = await post(proxy, body)
    assert reply.headers["x-blockrun-cost-usd"] == usd(priced(gateway, body))
    assert not [r for r in caplog.records if "gateway anomaly" in r.getMessage()]
    for kind in ("settled_above_signed", "settled_below_signed"):
        assert metric(proxy, "gateway_anomalies_total", kind=kind) == 0


# A settlement report whose transaction cannot be a header value: a CR/LF made the
# proxy answer 500 after the payment settled, and one of 30 KB made a header no client
# reads (h11 stops at 16 KiB, aiohttp at 8 KiB); either invites the client's retry, a
# second charge. A huge but well-formed PAYMENT-RESPONSE was passed on as it came.
UNSENDABLE_REPORTS = {
    "crlf": {"transaction": "0xabc\r\nSet-Cookie: evil=1"},
    "long": {"transaction": "0x" + "a" * 30_000},
    "padded": {"padding": "a" * 30_000},
}


@pytest.mark.parametrize("change", UNSENDABLE_REPORTS.values(), ids=UNSENDABLE_REPORTS.keys())
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_settlement_report_that_cannot_be_a_header_never_fails_the_paid_call(
    proxy, gateway, change, stream
):
    gateway.misbehave.settlement_report = change
    body = chat(PRICED_MODEL, max_tokens=64, stream=stream)
    reply = await post(proxy, body)  # aiohttp's client: header fields up to 8 KiB
    assert reply.status == 200, reply.body
    assert reply.body == gateway.sent_bodies[-1]
    assert reply.headers["x-blockrun-cost-usd"] == usd(priced(gateway, body))
    if "transaction" in change:
        assert "x-blockrun-settlement" not in reply.headers
    assert len(reply.headers.get("PAYMENT-RESPONSE", "")) <= 4096
    assert len(gateway.settled) == 1


async def test_a_proxy_bug_after_the_paid_send_is_a_424_not_a_retried_500(
    proxy, gateway, monkeypatch
):
    def broken(answer: object) -> str:
        raise RuntimeError("a bug after the payment was sent")

    monkeypatch.setattr("blockrun_proxy.relay.settlement_transaction", broken)
    reply = await post(proxy, chat(PRICED_MODEL, max_tokens=64))
    assert reply.status == 424 and reply.code == "paid_call_failed", reply.body
    assert reply.headers["x-should-retry"] == "false"
    assert len(gateway.settled) == 1


@pytest.mark.parametrize("header", ["Cache-Control", "Content-Type", "Retry-After"])
async def test_a_gateway_header_too_long_for_clients_is_not_passed_on(start_proxy, header):
    """The gateway session reads header fields up to 64 KiB; a client reading 8 or 16 KiB
    fails on a longer one after the payment settled, and retries: a second charge."""

    @web.middleware
    async def inflate(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if "PAYMENT-SIGNATURE" in request.headers:
            response.headers[header] = "application/json; x=" + "a" * 30_000
        return response

    gateway = FakeGateway(network=TEST_NETWORK)
    gateway.app.middlewares.append(inflate)
    async with gateway:
        proxy = await start_proxy(api_url=gateway.base_url)
        reply = await post(proxy, chat(PRICED_MODEL, max_tokens=64))
        assert reply.status == 200, reply.body
        assert reply.body == gateway.sent_bodies[-1]
        assert all(len(value) <= 4096 for value in reply.headers.values())
        assert len(gateway.settled) == 1
