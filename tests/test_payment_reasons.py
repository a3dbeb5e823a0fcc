"""Why a payment was refused reaches the client, the log and the metrics.

Against a gateway built from the official x402 SDK (its resource server puts the
facilitator's reason in a fresh 402 and a failed settlement's in PAYMENT-RESPONSE)
and against the fake gateway's BlockRun-shaped refusals.
"""

from __future__ import annotations

import logging
import time

import pytest

from blockrun_proxy.app import METRICS_KEY
from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.x402 import Signer, decode_header

pytest.importorskip("x402")

from support.calls import PRICED_MODEL, TEST_NETWORK, chat, post

from blockrun_proxy.testing.official import OfficialGateway


def refusals(proxy, reason: str) -> float:
    registry = proxy.app[METRICS_KEY].registry
    proxy.app[METRICS_KEY].sync()
    value = registry.get_sample_value("blockrun_proxy_payment_refusals_total", {"reason": reason})
    return value or 0.0


async def test_unfunded_wallet_gets_the_facilitators_reason(start_proxy, wallet_key, caplog):
    caplog.set_level(logging.INFO, logger="blockrun_proxy")
    payer = Signer(wallet_key).address
    async with OfficialGateway(balances={payer: 0}) as gateway:
        proxy = await start_proxy(api_url=gateway.base_url)
        reply = await post(proxy, chat(PRICED_MODEL, max_tokens=64))
    assert reply.status == 402
    error = reply.json["error"]
    assert error["code"] == "invalid_exact_evm_insufficient_balance"
    assert "invalid_exact_evm_insufficient_balance" in error["message"]
    assert "nothing was charged" in error["message"]
    assert refusals(proxy, "invalid_exact_evm_insufficient_balance") == 1
    assert any("invalid_exact_evm_insufficient_balance" in r.getMessage() for r in caplog.records)


async def test_failed_settlement_reason_and_header_are_passed_on(start_proxy):
    async with OfficialGateway() as gateway:
        gateway.facilitator.fail_settlements.append("invalid_exact_evm_nonce_already_used")
        proxy = await start_proxy(api_url=gateway.base_url)
        reply = await post(proxy, chat(PRICED_MODEL, max_tokens=64))
    # After the payment was sent: 424, never retried, never signed again.
    assert reply.status == 424 and reply.headers["x-should-retry"] == "false"
    error = reply.json["error"]
    assert error["code"] == "invalid_exact_evm_nonce_already_used"
    assert "invalid_exact_evm_nonce_already_used" in error["message"]
    settlement = decode_header(reply.headers["PAYMENT-RESPONSE"])
    assert settlement["success"] is False
    assert settlement["errorReason"] == "invalid_exact_evm_nonce_already_used"
    assert refusals(proxy, "invalid_exact_evm_nonce_already_used") == 1


async def test_blockrun_shaped_refusal_keeps_its_generic_code_and_says_why(start_proxy):
    # A gateway whose clock runs hours ahead finds every authorization expired.
    async with FakeGateway(network=TEST_NETWORK, clock=lambda: time.time() + 10_000) as gateway:
        proxy = await start_proxy(api_url=gateway.base_url)
        reply = await post(proxy, chat(PRICED_MODEL, max_tokens=64))
    assert reply.status == 402 and reply.code == "payment_not_accepted"
    message = reply.json["error"]["message"]
    assert "PAYMENT_INVALID" in message and "authorization not valid now" in message
    assert refusals(proxy, "other") == 1
