"""A gateway that asks for what the payer policy forbids gets no signature and a clear 402.

Cold: the hostile 402 is the first the proxy sees. Warm: the quote model trusts
the model id and the gateway then turns hostile; a payment signed up front
carries only the last *accepted* requirement, so nothing hostile is ever signed,
and after the hostile 402 nothing is signed up front any more.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from support.calls import PRICED_MODEL, chat, post
from support.payments import chat_requests, warm_body, warm_up

from blockrun_proxy.config import DEFAULT_MAX_AUTH_SECONDS, DEFAULT_MAX_PRICE_USD, usd_to_atomic

# The payment rules hold whichever HTTP client talks to the gateway.
pytestmark = pytest.mark.both_clients

SEPOLIA = "eip155:84532"
SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
STRANGER = "0x00000000000000000000000000000000BadBad00"

# knob on the fake, hostile value, the refusal code, a word the message must name
HOSTILE = [
    ("price_multiplier", 10_000.0, "amount_over_cap", "cap"),
    ("network", "eip155:8453", "network_not_allowed", "eip155:8453"),
    ("network", "eip155:5042", "network_not_allowed", "eip155:5042"),
    ("asset", "0x" + "ab" * 20, "asset_mismatch", "0x" + "ab" * 20),
    ("pay_to", STRANGER, "pay_to_not_allowed", STRANGER),
    ("max_timeout_seconds", 10**9, "timeout_too_long", str(10**9)),
    (
        "resource_url",
        "https://evil.example/api/v1/chat/completions",
        "resource_host_mismatch",
        "evil.example",
    ),
    ("scheme", "upto", "scheme_not_supported", "upto"),
]
IDS = [f"{knob}={code}" for knob, _, code, _ in HOSTILE]


def assert_clear_refusal(reply, code: str, named: str) -> None:
    assert reply.status == 402
    error = reply.json["error"]
    assert error["code"] == code and error["type"] == "payment_error"
    assert named.lower() in error["message"].lower()


def assert_only_safe_payments(gateway, since: int) -> None:
    """Every payment header the gateway received asked for exactly what the policy allows."""
    cap = usd_to_atomic(DEFAULT_MAX_PRICE_USD)
    host = urlsplit(gateway.base_url).hostname
    for request in chat_requests(gateway, since):
        if request.payment is None:
            continue
        accepted = request.payment["accepted"]
        assert accepted["scheme"] == "exact"
        assert accepted["network"] == SEPOLIA and accepted["asset"] == SEPOLIA_USDC
        assert accepted["payTo"] == gateway.pay_to
        assert accepted["maxTimeoutSeconds"] <= DEFAULT_MAX_AUTH_SECONDS
        assert 0 < int(accepted["amount"]) <= cap
        assert urlsplit(request.payment["resource"]["url"]).hostname == host


@pytest.mark.parametrize(("knob", "value", "code", "named"), HOSTILE, ids=IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_hostile_quote_gets_no_signature(
    start_proxy, gateway, knob, value, code, named, stream
):
    proxy = await start_proxy(pay_to=(gateway.pay_to,))  # payTo pinned to the real one
    setattr(gateway.misbehave, knob, value)
    reply = await post(proxy, chat(PRICED_MODEL, stream=stream))
    assert_clear_refusal(reply, code, named)
    assert gateway.payments == []
    assert [r.payment for r in chat_requests(gateway)] == [None]


async def test_an_unpinned_payto_is_paid_a_pinned_one_is_required(start_proxy, gateway):
    gateway.misbehave.pay_to = STRANGER
    unpinned = await start_proxy()
    assert (await post(unpinned, chat(PRICED_MODEL))).status == 200  # the user allowed any payTo
    pinned = await start_proxy(pay_to=(gateway.pay_to.upper().replace("0X", "0x"),))
    assert_clear_refusal(await post(pinned, chat(PRICED_MODEL)), "pay_to_not_allowed", STRANGER)
    assert len(gateway.payments) == 1


@pytest.mark.parametrize(("knob", "value", "code", "named"), HOSTILE, ids=IDS)
async def test_a_trusted_model_turning_hostile_never_signs_anything_hostile(
    start_proxy, gateway, knob, value, code, named
):
    proxy = await start_proxy(pay_to=(gateway.pay_to,))
    await warm_up(proxy)
    setattr(gateway.misbehave, knob, value)
    before, pay_before = len(gateway.requests), len(gateway.payments)
    first = await post(proxy, warm_body(PRICED_MODEL, stream=False))
    second = await post(proxy, warm_body(PRICED_MODEL, stream=False))
    assert_only_safe_payments(gateway, before)
    if first.status == 200:
        # The gateway still takes the old, safe requirement (the fake does not check the
        # resource or the authorization's lifetime against its new quote): paid safely,
        # and the hostile 402 is never seen, so never signed.
        assert knob in ("resource_url", "max_timeout_seconds")
        assert second.status == 200
        return
    # Presigned from the last good 402, refused as not used, then the hostile 402 is refused.
    assert_clear_refusal(first, code, named)
    assert_clear_refusal(second, code, named)
    calls = chat_requests(gateway, before)
    assert [r.payment is not None for r in calls] == [True, False, False]
    assert not any(r.accepted for r in gateway.payments[pay_before:])  # nothing charged


ZERO_ADDRESS = "0x" + "0" * 40


async def test_the_zero_address_is_never_paid_even_with_no_payto_pinned(start_proxy, gateway):
    proxy = await start_proxy()  # any payTo allowed ...
    await warm_up(proxy)
    gateway.misbehave.pay_to = ZERO_ADDRESS  # ... but not one that burns the money
    before, pay_before = len(gateway.requests), len(gateway.payments)
    cold = await post(proxy, chat(PRICED_MODEL))
    assert_clear_refusal(cold, "pay_to_not_allowed", "zero address")
    warm = await post(proxy, warm_body(PRICED_MODEL, stream=False))
    assert_clear_refusal(warm, "pay_to_not_allowed", "zero address")
    assert not any(r.accepted for r in gateway.payments[pay_before:])
    assert all(
        r.payment["payload"]["authorization"]["to"] != ZERO_ADDRESS
        for r in chat_requests(gateway, before)
        if r.payment is not None
    )


@pytest.mark.parametrize(
    ("knob", "value"),
    [("accepts_copies", 40), ("accepts_copies", 1_000), ("required_padding", 10 * 1024 * 1024)],
    ids=["40-accepts", "1000-accepts", "10MB-header"],
)
async def test_an_oversized_offer_is_a_bad_payment_requirement(proxy, gateway, knob, value):
    setattr(gateway.misbehave, knob, value)
    reply = await post(proxy, chat(PRICED_MODEL))
    assert reply.status == 502 and reply.code == "bad_payment_requirement"
    assert "x-should-retry" not in reply.headers  # nothing was paid
    assert gateway.payments == []
    assert len(chat_requests(gateway)) == 1  # the gateway answered: asking again is pointless
