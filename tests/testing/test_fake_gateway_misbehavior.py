"""Each Misbehavior knob does what it says, and its counter runs down."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from support.calls import FREE_MODEL
from support.gateway_client import CHAT, Payer, b64json, chat_body, requirement_of

from blockrun_proxy.testing import FakeGateway, Misbehavior


async def challenge(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(CHAT, json=body)
    assert resp.status == 402
    return b64json(resp.headers["PAYMENT-REQUIRED"])


async def paid(client: TestClient, body: dict[str, Any], header: str) -> aiohttp.ClientResponse:
    return await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})


async def error_code(resp: aiohttp.ClientResponse) -> str:
    return str((await resp.json())["error"]["code"])


async def test_price_multiplier_inflates_the_quote(gw: FakeGateway, client: TestClient) -> None:
    body = chat_body()
    honest = gw.price_for(body)
    gw.misbehave.price_multiplier = 1.1
    required = await challenge(client, body)
    inflated = -(-honest * 11 // 10)
    assert required["accepts"][0]["amount"] == str(inflated)
    assert gw.price_for(body) == inflated


async def test_price_rise_refuses_an_old_quote(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    body = chat_body()
    header = payer.pay((await challenge(client, body))["accepts"][0])
    gw.misbehave.price_multiplier = 2.0
    resp = await paid(client, body, header)
    assert resp.status == 402 and await error_code(resp) == "PAYMENT_INVALID"


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("network", "eip155:8453", ("accepts", 0, "network")),
        ("asset", "0x" + "ab" * 20, ("accepts", 0, "asset")),
        ("pay_to", "0x" + "cd" * 20, ("accepts", 0, "payTo")),
        ("max_timeout_seconds", 86400, ("accepts", 0, "maxTimeoutSeconds")),
        ("scheme", "upto", ("accepts", 0, "scheme")),
        ("resource_url", "https://evil.example/api/v1/chat/completions", ("resource", "url")),
    ],
)
async def test_quote_shaping_knobs(
    gw: FakeGateway, client: TestClient, field: str, value: object, path: tuple[Any, ...]
) -> None:
    setattr(gw.misbehave, field, value)
    node: Any = await challenge(client, chat_body())
    for key in path:
        node = node[key]
    assert node == value


async def test_other_network_quotes_that_networks_usdc(gw: FakeGateway, client: TestClient) -> None:
    gw.misbehave.network = "eip155:8453"
    accepts = (await challenge(client, chat_body()))["accepts"][0]
    assert accepts["asset"] == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    assert accepts["extra"]["name"] == "USD Coin"


async def test_a_payment_matching_a_misbehaving_quote_is_honoured(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    # The gateway is consistent with what it asked for, so a proxy that (wrongly)
    # signs a redirected payTo would really be charged.
    gw.misbehave.pay_to = "0x" + "cd" * 20
    body = chat_body()
    resp = await paid(client, body, payer.pay((await challenge(client, body))["accepts"][0]))
    assert resp.status == 200
    assert gw.payments[-1].pay_to.lower() == "0x" + "cd" * 20


async def test_upto_quote_cannot_be_paid_as_exact(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    gw.misbehave.scheme = "upto"
    body = chat_body()
    resp = await paid(client, body, payer.pay((await challenge(client, body))["accepts"][0]))
    assert resp.status == 402 and await error_code(resp) == "PAYMENT_INVALID"


async def test_fail_unpaid_counts_down(gw: FakeGateway, client: TestClient) -> None:
    gw.misbehave = Misbehavior(fail_unpaid=2, fail_status=502)
    statuses = [(await client.post(CHAT, json=chat_body())).status for _ in range(3)]
    assert statuses == [502, 502, 402]
    assert gw.misbehave.fail_unpaid == 0


async def test_fail_paid_does_not_consume_the_signature(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    body = chat_body()
    header = payer.pay((await challenge(client, body))["accepts"][0])
    gw.misbehave.fail_paid = 2
    assert (await paid(client, body, header)).status == 503
    assert (await paid(client, body, header)).status == 503
    assert gw.settled == []
    resp = await paid(client, body, header)  # the same signature, resent
    assert resp.status == 200
    assert len(gw.settled) == 1
    assert len({p.signature for p in gw.payments}) == 1 and len(gw.payments) == 3


async def test_fail_after_settle_charges_then_replays(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    body = chat_body()
    header = payer.pay((await challenge(client, body))["accepts"][0])
    gw.misbehave.fail_after_settle = 1
    first = await paid(client, body, header)
    assert first.status == 500
    assert len(gw.settled) == 1
    again = await paid(client, body, header)
    assert again.status == 409 and await error_code(again) == "PAYMENT_REPLAY"
    assert gw.misbehave.fail_after_settle == 0


async def test_replay_on_paid(gw: FakeGateway, client: TestClient, payer: Payer) -> None:
    body = chat_body()
    header = payer.pay((await challenge(client, body))["accepts"][0])
    gw.misbehave.replay_on_paid = True
    resp = await paid(client, body, header)
    assert resp.status == 409 and await error_code(resp) == "PAYMENT_REPLAY"
    assert gw.settled == []


async def test_rate_limit_with_retry_after(gw: FakeGateway, client: TestClient) -> None:
    gw.misbehave.rate_limit = 1
    gw.misbehave.retry_after = "7"
    limited = await client.post(CHAT, json=chat_body())
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "7"
    assert (await limited.json())["error"]["type"] == "rate_limit_error"
    assert (await client.post(CHAT, json=chat_body())).status == 402


async def test_fresh_challenge_on_invalid(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    body = chat_body()
    requirement = (await challenge(client, body))["accepts"][0]
    gw.misbehave.fresh_challenge_on_invalid = True
    resp = await paid(client, body, payer.pay(requirement, value=1))
    assert resp.status == 402
    assert requirement_of(resp.headers["PAYMENT-REQUIRED"])["amount"] == requirement["amount"]
    assert gw.settled == []


async def test_delay_seconds(gw: FakeGateway, client: TestClient) -> None:
    gw.misbehave.delay_seconds = 0.1
    started = time.perf_counter()
    await client.post(CHAT, json=chat_body())
    assert time.perf_counter() - started >= 0.1


async def test_reset_after_events_drops_the_stream(gw: FakeGateway, client: TestClient) -> None:
    gw.misbehave.reset_after_events = 3
    resp = await client.post(CHAT, json=chat_body(model=FREE_MODEL, stream=True))
    assert resp.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for piece in resp.content.iter_any():
            received += piece
    # Frames already handed to the kernel arrive; nothing after the third does.
    assert 1 <= received.count(b"data: ") <= 3
    assert b"[DONE]" not in received
    # The server is fine afterwards.
    gw.misbehave.reset_after_events = None
    assert (await client.post(CHAT, json=chat_body(model=FREE_MODEL))).status == 200
