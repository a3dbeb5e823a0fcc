"""Signing up front, end to end: a real proxy in front of the fake gateway over loopback.

Issue #3's bar: with a warm quote model, N paid calls with different prompts and
max_tokens cause N upstream requests (not 2N), and every settled amount is
exactly what the gateway priced, streamed and not.
"""

from __future__ import annotations

import math
import random
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from support.calls import FRACTIONAL_MODEL, PRICED_MODEL, post
from support.payments import chat_requests, priced, varied, warm_up

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.testing import ModelSpec
from blockrun_proxy.x402 import usd


def only_max_tokens(model: ModelSpec, body: Any) -> int:
    """A gateway that ignores the prompt: 7/20 uUSDC per reserved token + $0.0005."""
    reserved = body.get("max_tokens") or body.get("max_completion_tokens") or 4096
    return math.ceil(Fraction(7, 20) * min(reserved, model.max_output)) + 500


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    "pricing", [None, only_max_tokens], ids=["prompt-size-moves-price", "only-max-tokens"]
)
async def test_warm_paid_calls_take_one_round_trip_and_pay_exactly_the_price(
    start_proxy, gateway, stream, pricing
):
    gateway.pricing = pricing
    proxy = await start_proxy()
    await warm_up(proxy, PRICED_MODEL)
    stats = proxy.app[CORE_KEY].quotes.stats
    hits, misses = stats.hits, stats.misses
    before, paid_before = len(gateway.requests), len(gateway.settled)
    rng = random.Random(1)
    bodies = [varied(rng, PRICED_MODEL, stream=stream) for _ in range(12)]
    assert len({(len(b["messages"][0]["content"]), b["max_tokens"]) for b in bodies}) > 8
    for body in bodies:
        reply = await post(proxy, body)
        assert reply.status == 200, reply.body
        assert reply.headers["x-blockrun-cost-usd"] == usd(priced(gateway, body))
    sent = chat_requests(gateway, before)
    assert len(sent) == len(bodies)  # N, not 2N
    assert all(r.payment is not None for r in sent)  # each was paid on its first request
    settled = [s.amount for s in gateway.settled[paid_before:]]
    assert settled == [priced(gateway, b) for b in bodies]  # no over-payment, no under
    assert stats.hits - hits == len(bodies) and stats.misses == misses == 0
    assert stats.overpaid_atomic == 0


async def test_fractional_prices_never_over_pay_and_mostly_take_one_round_trip(
    start_proxy, gateway
):
    proxy = await start_proxy()
    await warm_up(proxy, FRACTIONAL_MODEL)
    before, paid_before = len(gateway.requests), len(gateway.settled)
    rng = random.Random(2)
    bodies = [varied(rng, FRACTIONAL_MODEL, stream=i % 2 == 0) for i in range(30)]
    for body in bodies:
        assert (await post(proxy, body)).status == 200
    assert [s.amount for s in gateway.settled[paid_before:]] == [priced(gateway, b) for b in bodies]
    # Amounts the learned formulas cannot pin yet are probed first (2 round trips).
    assert len(chat_requests(gateway, before)) <= 1.2 * len(bodies)


async def test_tolerance_buys_one_round_trip_with_counted_over_payment(start_proxy, gateway):
    proxy = await start_proxy(presign_tolerance_usd=Decimal("0.000002"))
    await warm_up(proxy, FRACTIONAL_MODEL)
    before, paid_before = len(gateway.requests), len(gateway.settled)
    rng = random.Random(2)
    bodies = [varied(rng, FRACTIONAL_MODEL) for _ in range(30)]
    for body in bodies:
        assert (await post(proxy, body)).status == 200
    assert len(chat_requests(gateway, before)) == len(bodies)
    settled = gateway.settled[paid_before:]
    over = [s.amount - priced(gateway, b) for s, b in zip(settled, bodies, strict=True)]
    assert all(0 <= o <= 2 for o in over)
    assert proxy.app[CORE_KEY].quotes.stats.overpaid_atomic >= sum(over)


async def test_presign_disabled_learns_but_always_probes(start_proxy, gateway):
    proxy = await start_proxy(presign=False)
    rng = random.Random(4)
    for _ in range(25):
        assert (await post(proxy, varied(rng))).status == 200
    assert all(
        [r.payment is None for r in pair] == [True, False]
        for pair in zip(chat_requests(gateway)[::2], chat_requests(gateway)[1::2], strict=True)
    )
    stats = proxy.app[CORE_KEY].quotes.stats
    assert stats.presigned == 0 and stats.shadow_exact > 0


async def test_budget_refuses_a_presign_and_the_payment_alike(start_proxy, gateway):
    proxy = await start_proxy(budget_usd=Decimal("100"))
    await warm_up(proxy, PRICED_MODEL)
    payer = proxy.app[CORE_KEY].payer
    assert payer.budget is not None
    spent = (await payer.budget.usage()).spent
    payer.budget.limit = spent + 1  # one more micro-USDC: no call fits
    before, pay_before = len(gateway.requests), len(gateway.payments)
    reply = await post(proxy, varied(random.Random(5)))
    assert reply.status == 402 and reply.code == "budget_exceeded"
    assert "budget" in reply.json["error"]["message"]
    assert gateway.payments[pay_before:] == []  # nothing signed, up front or after
    assert [r.payment for r in chat_requests(gateway, before)] == [None]  # probe only
    assert proxy.app[CORE_KEY].quotes.stats.declined == 1


async def test_budget_counts_what_was_sent_over_the_window(start_proxy, gateway):
    body = varied(random.Random(6))
    price = priced(gateway, body)
    proxy = await start_proxy(budget_usd=Decimal(2 * price) / 1_000_000)
    assert (await post(proxy, body)).status == 200
    assert (await post(proxy, body)).status == 200
    reply = await post(proxy, body)
    assert reply.status == 402 and reply.code == "budget_exceeded"
    assert len(gateway.settled) == 2
