"""The paid side: verification, settlement, and every way a payment is refused."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from eth_account import Account
from pytest_aiohttp import AiohttpClient
from support.calls import FREE_MODEL
from support.gateway_client import CHAT, Payer, b64json, chat_body, requirement_of

from blockrun_proxy.testing import FakeGateway, VerifyMode


async def quote(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(CHAT, json=body)
    assert resp.status == 402
    return requirement_of(resp.headers["PAYMENT-REQUIRED"])


async def send(
    client: TestClient, body: dict[str, Any], header: str, name: str = "PAYMENT-SIGNATURE"
) -> ClientResponse:
    return await client.post(CHAT, json=body, headers={name: header})


async def assert_invalid(resp: ClientResponse, why: str) -> None:
    assert resp.status == 402
    assert "PAYMENT-REQUIRED" not in resp.headers  # not a usable challenge
    error = (await resp.json())["error"]
    assert error["code"] == "PAYMENT_INVALID"
    assert error["type"] == "payment_error"
    assert error["message"].startswith("Payment verification failed: ")
    assert why in error["message"]


@pytest.mark.parametrize("verify", ["eth_account", "fast"])
async def test_signed_payment_is_accepted_and_settled(
    verify: VerifyMode, aiohttp_client: AiohttpClient, payer: Payer
) -> None:
    gw = FakeGateway(verify=verify)
    client = await aiohttp_client(gw.app)
    body = chat_body("pay me")
    requirement = await quote(client, body)
    header = payer.pay(requirement)
    resp = await send(client, body, header)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"] == "echo: pay me"
    receipt = b64json(resp.headers["PAYMENT-RESPONSE"])
    assert receipt["success"] is True
    assert receipt["network"] == "eip155:84532"
    assert receipt["payer"] == payer.address
    assert receipt["amount"] == requirement["amount"]
    tx = receipt["transaction"]
    assert tx.startswith("0x") and len(tx) == 66 and int(tx, 16) >= 0
    [settled] = gw.settled
    assert settled.amount == int(requirement["amount"]) and settled.transaction == tx
    assert settled.payer == payer.address
    [record] = gw.payments
    assert record.accepted and record.reason is None
    assert record.payer == payer.address and record.pay_to == gw.pay_to
    assert record.amount == int(requirement["amount"]) and record.network == "eip155:84532"
    assert record.nonce == settled.nonce
    assert gw.requests[-1].payment == b64json(header)


async def test_settle_amount_can_be_left_out(aiohttp_client: AiohttpClient, payer: Payer) -> None:
    gw = FakeGateway(settle_amount_in_response=False)
    client = await aiohttp_client(gw.app)
    body = chat_body()
    resp = await send(client, body, payer.pay(await quote(client, body)))
    assert resp.status == 200
    assert "amount" not in b64json(resp.headers["PAYMENT-RESPONSE"])


async def test_x_payment_header_is_accepted(client: TestClient, payer: Payer) -> None:
    body = chat_body()
    resp = await send(client, body, payer.pay(await quote(client, body)), name="X-PAYMENT")
    assert resp.status == 200


async def test_payment_up_front_without_a_402(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    # The spec lets a client that knows the requirements skip the probe.
    body = chat_body("first try")
    requirement = gw.quote(gw.price_for(body)).to_json()
    resp = await send(client, body, payer.pay(requirement))
    assert resp.status == 200
    assert len(gw.requests) == 1


async def test_underpayment_is_refused(gw: FakeGateway, client: TestClient, payer: Payer) -> None:
    body = chat_body()
    requirement = await quote(client, body)
    price = int(requirement["amount"])
    await assert_invalid(await send(client, body, payer.pay(requirement, value=price - 1)), "below")
    assert gw.settled == []
    assert gw.payments[-1].accepted is False and "below" in (gw.payments[-1].reason or "")


async def test_price_is_checked_for_this_body(client: TestClient, payer: Payer) -> None:
    # A quote learned for a cheap request does not cover a dearer one.
    requirement = await quote(client, chat_body(max_tokens=10))
    dearer = chat_body(max_tokens=1000)
    await assert_invalid(await send(client, dearer, payer.pay(requirement)), "below the price")


async def test_overpayment_is_accepted(gw: FakeGateway, client: TestClient, payer: Payer) -> None:
    body = chat_body()
    requirement = await quote(client, body)
    paid = int(requirement["amount"]) + 5000
    resp = await send(client, body, payer.pay(requirement, value=paid))
    assert resp.status == 200
    assert b64json(resp.headers["PAYMENT-RESPONSE"])["amount"] == str(paid)
    assert gw.settled[0].amount == paid


async def test_replayed_nonce_is_payment_replay(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    body = chat_body()
    header = payer.pay(await quote(client, body))
    assert (await send(client, body, header)).status == 200
    again = await send(client, body, header)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "PAYMENT_REPLAY"
    assert len(gw.settled) == 1
    assert [p.accepted for p in gw.payments] == [True, False]


async def test_expired_and_future_windows_are_refused(client: TestClient, payer: Payer) -> None:
    body = chat_body()
    requirement = await quote(client, body)
    now = int(time.time())
    expired = payer.pay(requirement, valid_after=now - 900, valid_before=now - 1)
    await assert_invalid(await send(client, body, expired), "not valid now")
    future = payer.pay(requirement, valid_after=now + 600, valid_before=now + 900)
    await assert_invalid(await send(client, body, future), "not valid now")


async def test_wrong_pay_to_is_refused(client: TestClient, payer: Payer) -> None:
    body = chat_body()
    requirement = await quote(client, body)
    stranger = Account.create().address
    await assert_invalid(await send(client, body, payer.pay(requirement, to=stranger)), "payTo")
    moved = {**requirement, "payTo": stranger}
    await assert_invalid(await send(client, body, payer.pay(moved)), "payTo")


async def test_signature_from_another_key_is_refused(client: TestClient, payer: Payer) -> None:
    body = chat_body()
    header = payer.pay(await quote(client, body), signer=Account.create())
    await assert_invalid(await send(client, body, header), "invalid signature")


async def test_value_must_equal_accepted_amount(client: TestClient, payer: Payer) -> None:
    body = chat_body()
    requirement = await quote(client, body)
    price = int(requirement["amount"])
    header = payer.pay(requirement, value=price, accepted_amount=price + 1)
    await assert_invalid(await send(client, body, header), "does not equal accepted.amount")


async def test_foreign_network_or_asset_is_refused(client: TestClient, payer: Payer) -> None:
    body = chat_body()
    requirement = await quote(client, body)
    await assert_invalid(
        await send(client, body, payer.pay({**requirement, "network": "eip155:8453"})), "network"
    )
    await assert_invalid(
        await send(client, body, payer.pay({**requirement, "asset": "0x" + "11" * 20})), "asset"
    )


async def test_high_s_signature_is_refused(client: TestClient, payer: Payer) -> None:
    # Same signer, same digest, the malleable twin: USDC's ECRecover rejects it.
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    body = chat_body()
    payment = b64json(payer.pay(await quote(client, body)))
    raw = bytes.fromhex(payment["payload"]["signature"][2:])
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (n - s).to_bytes(32, "big") + bytes((55 - raw[64],))
    payment["payload"]["signature"] = "0x" + twin.hex()
    header = base64.b64encode(json.dumps(payment).encode()).decode()
    await assert_invalid(await send(client, body, header), "high-s")


@pytest.mark.parametrize(
    "header",
    ["not base64!", base64.b64encode(b"[]").decode(), base64.b64encode(b"{}").decode()],
)
async def test_malformed_payment_is_refused(
    gw: FakeGateway, client: TestClient, header: str
) -> None:
    resp = await send(client, chat_body(), header)
    await assert_invalid(resp, "")
    assert gw.payments[-1].accepted is False


async def test_payment_for_a_free_model_is_not_used(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    requirement = await quote(client, chat_body())
    resp = await send(client, chat_body(model=FREE_MODEL), payer.pay(requirement))
    assert resp.status == 200
    assert "PAYMENT-RESPONSE" not in resp.headers
    assert gw.settled == [] and gw.payments[-1].reason == "free model: payment not used"


async def test_verify_none_skips_only_the_signature(
    aiohttp_client: AiohttpClient, payer: Payer
) -> None:
    gw = FakeGateway(verify="none")
    client = await aiohttp_client(gw.app)
    body = chat_body()
    requirement = await quote(client, body)
    forged = payer.pay(requirement, signer=Account.create())
    assert (await send(client, body, forged)).status == 200
    # Everything but the signature is still checked.
    short = payer.pay(requirement, value=int(requirement["amount"]) - 1)
    await assert_invalid(await send(client, body, short), "below")
