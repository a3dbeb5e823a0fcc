"""Payments that never left the process use up no budget and count in no metric.

The issue's case: ``--budget-usd 0.1`` and 40 calls while the gateway refuses
connections. Each call signs up front (the quote model is warm), every send is
refused a connection, so no signature reached anyone: the budget and the sent
metrics must be exactly as before, and a normal paid call must then succeed.
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

from support.calls import FRACTIONAL_MODEL, post
from support.payments import priced, warm_body, warm_up

from blockrun_proxy.app import CORE_KEY, METRICS_KEY

OUTAGE_CALLS = 40


def sent_metrics(proxy) -> tuple[float | None, float | None]:
    metrics = proxy.app[METRICS_KEY]
    metrics.sync()
    read = metrics.registry.get_sample_value
    return read("blockrun_proxy_payments_sent_total"), read("blockrun_proxy_sent_micro_usdc_total")


async def test_an_outage_spends_no_budget(start_proxy, gateway):
    # One send per call, no replays: the test needs no retry delays to make its point.
    proxy = await start_proxy(budget_usd=Decimal("0.1"), paid_replays=0)
    await warm_up(proxy, FRACTIONAL_MODEL)
    budget = proxy.app[CORE_KEY].payer.budget
    assert budget is not None
    spent = (await budget.usage()).spent
    metrics_before = sent_metrics(proxy)
    assert metrics_before == (40, spent)
    body = warm_body(FRACTIONAL_MODEL)
    # The outage would eat the rest of the budget if unsent payments counted.
    assert spent + OUTAGE_CALLS * priced(gateway, body) > 100_000

    port = urlsplit(gateway.base_url).port
    await gateway.close()
    stats = proxy.app[CORE_KEY].quotes.stats
    presigned = stats.presigned
    for _ in range(OUTAGE_CALLS):
        reply = await post(proxy, body)
        assert reply.status == 502 and reply.code == "gateway_unreachable"
        assert "x-should-retry" not in reply.headers  # nothing was paid
    assert stats.presigned - presigned == OUTAGE_CALLS  # each one signed, none sent
    assert (await budget.usage()).spent == spent
    assert sent_metrics(proxy) == metrics_before

    await gateway.start(port=port)
    reply = await post(proxy, body)
    assert reply.status == 200, reply.body
    price = priced(gateway, body)
    assert (await budget.usage()).spent == spent + price
    assert sent_metrics(proxy) == (41, spent + price)


async def test_a_payment_that_may_have_reached_the_gateway_counts(start_proxy, gateway):
    # A timeout after the paid send is not proof of anything: the gateway may be serving
    # (and charging) it. Only a connection never made releases a reservation.
    proxy = await start_proxy(budget_usd=Decimal("1"), idle_timeout_seconds=0.3)
    await warm_up(proxy, FRACTIONAL_MODEL)
    budget = proxy.app[CORE_KEY].payer.budget
    assert budget is not None
    spent = (await budget.usage()).spent
    body = warm_body(FRACTIONAL_MODEL)
    gateway.misbehave.delay_seconds = 1.0
    reply = await post(proxy, body)
    assert reply.status == 424 and reply.code == "paid_call_timeout"
    price = priced(gateway, body)
    assert (await budget.usage()).spent == spent + price
    assert sent_metrics(proxy) == (41, spent + price)
