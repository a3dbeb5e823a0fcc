"""/metrics over real HTTP: values after paid calls, refusals and gateway failures."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.calls import FRACTIONAL_MODEL, FREE_MODEL, JSON, chat, post
from support.servers import until

from blockrun_proxy.app import LIMITS_KEY, METRICS_KEY
from blockrun_proxy.metrics import Metrics

CHAT_ROUTE = "/v1/chat/completions"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(proxy, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/metrics", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return parse(await r.text())


async def counted(proxy, n: int, status: str = "200", route: str = CHAT_ROUTE) -> None:
    """The request is counted just after its last byte went out: wait for it."""
    registry = proxy.app[METRICS_KEY].registry
    labels = {"route": route, "status": status}
    await until(lambda: registry.get_sample_value("blockrun_proxy_requests_total", labels) == n)


async def test_a_paid_stream_then_a_refused_quote(proxy, gateway):
    reply = await post(proxy, chat(FRACTIONAL_MODEL, stream=True, max_tokens=32))
    assert reply.status == 200
    await counted(proxy, 1)
    (settled,) = gateway.settled
    m = await scrape(proxy)
    assert get(m, "blockrun_proxy_requests_total", route=CHAT_ROUTE, status="200") == 1
    assert get(m, "blockrun_proxy_payments_sent_total") == 1
    assert get(m, "blockrun_proxy_sent_micro_usdc_total") == settled.amount
    assert get(m, "blockrun_proxy_payments_settled_total") == 1
    assert get(m, "blockrun_proxy_settled_micro_usdc_total") == settled.amount
    assert get(m, "blockrun_proxy_relayed_bytes_total") == len(reply.body)
    assert get(m, "blockrun_proxy_time_to_first_byte_seconds_count", route=CHAT_ROUTE) == 1
    assert get(m, "blockrun_proxy_request_duration_seconds_count", route=CHAT_ROUTE) == 1
    assert get(m, "blockrun_proxy_open_streams") == 0
    assert get(m, "blockrun_proxy_upstream_inflight") == 0
    assert get(m, "blockrun_proxy_max_concurrent") == proxy.app[LIMITS_KEY].max_concurrent

    gateway.misbehave.price_multiplier = 10_000.0  # over the per-call cap: no signature
    reply = await post(proxy, chat(FRACTIONAL_MODEL, stream=True))
    assert reply.status == 402
    await counted(proxy, 1, status="402")
    m = await scrape(proxy)
    assert get(m, "blockrun_proxy_refusals_total", reason="amount_over_cap") == 1
    assert get(m, "blockrun_proxy_payments_sent_total") == 1  # unchanged
    assert get(m, "blockrun_proxy_settled_micro_usdc_total") == settled.amount
    assert get(m, "blockrun_proxy_upstream_errors_total", kind="http_402") == 0


async def test_gateway_failures_are_counted_by_kind(start_proxy, gateway):
    proxy = await start_proxy(probe_retries=0)
    gateway.misbehave.rate_limit = 1
    assert (await post(proxy, chat(FREE_MODEL))).status == 429
    gateway.misbehave.reset_after_events = 2
    cut = await post(proxy, chat(FREE_MODEL, stream=True))
    assert isinstance(cut.error, aiohttp.ClientPayloadError)  # cut, not a clean short body
    gateway.misbehave.reset_after_events = None
    dead = await start_proxy(api_url="http://127.0.0.1:9/api", probe_retries=0)
    assert (await post(dead, chat(FREE_MODEL))).status == 502
    await counted(proxy, 1, status="429")
    registry = proxy.app[METRICS_KEY].registry
    broken = {"kind": "stream_broken"}
    await until(lambda: registry.get_sample_value("blockrun_proxy_upstream_errors_total", broken))
    m = await scrape(proxy)
    assert get(m, "blockrun_proxy_upstream_errors_total", kind="http_429") == 1
    assert get(m, "blockrun_proxy_upstream_errors_total", kind="stream_broken") == 1
    assert get(m, "blockrun_proxy_payments_sent_total") == 0
    await counted(dead, 1, status="502")
    m = await scrape(dead)
    assert get(m, "blockrun_proxy_upstream_errors_total", kind="gateway_unreachable") == 1


@pytest.mark.parametrize(
    ("knob", "kind"),
    [("fail_after_settle", "paid_call_failed"), ("replay_on_paid", "payment_replay")],
)
async def test_failures_after_payment_count_as_gateway_errors_not_refusals(
    start_proxy, gateway, knob, kind
):
    # Answered 424 (so clients do not retry them into a second payment), but still the
    # gateway's failure: what pages someone about the gateway, not about the proxy.
    proxy = await start_proxy(paid_replays=0)
    setattr(gateway.misbehave, knob, 1 if knob == "fail_after_settle" else True)
    reply = await post(proxy, chat(FRACTIONAL_MODEL))
    assert reply.status == 424
    await counted(proxy, 1, status="424")
    m = await scrape(proxy)
    assert get(m, "blockrun_proxy_upstream_errors_total", kind=kind) == 1
    assert not any(name == "blockrun_proxy_refusals_total" for name, _ in m)
    assert get(m, "blockrun_proxy_payments_sent_total") == 1


async def test_metrics_need_the_token_when_one_is_set_and_never_show_secrets(
    start_proxy, gateway, wallet_key
):
    proxy = await start_proxy(token="tok-secret-123")
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/metrics") as r:
            assert r.status == 401
        headers = {"Authorization": "Bearer tok-secret-123", **JSON}
        async with s.post(
            proxy.base_url + "/chat/completions",
            data=orjson.dumps(chat(FRACTIONAL_MODEL)),
            headers=headers,
        ) as r:
            assert r.status == 200
        await counted(proxy, 1)
        async with s.get(proxy.url + "/metrics", headers=headers) as r:
            assert r.status == 200
            text = (await r.text()).lower()
    assert "blockrun_proxy_payments_sent_total 1.0" in text
    assert wallet_key.lower().removeprefix("0x") not in text
    assert "tok-secret-123" not in text


async def test_unmatched_paths_share_one_route_label(proxy):
    async with aiohttp.ClientSession() as s:
        for path in ("/a", "/b/c", "/v1/nope", "/v1/x/y", "/api/v1/z"):
            async with s.get(proxy.url + path) as r:
                assert r.status == 404
    await counted(proxy, 2, status="404", route="other")
    # Relayed paths (--routes all) share the relay's template, whatever their path.
    await counted(proxy, 3, status="404", route="/v1/{path}")
    m = await scrape(proxy)
    routes = {dict(labels).get("route") for name, labels in m if name.endswith("requests_total")}
    assert routes <= {"other", "/v1/{path}", "/metrics"}


async def test_quote_stats_are_exported_through_the_hook():
    from blockrun_proxy.quotes.book import QuoteStats

    metrics = Metrics()
    stats = QuoteStats()
    metrics.watch_quotes(lambda: stats)
    stats.hits, stats.probed, stats.misses, stats.overpaid_atomic = 3, 4, 1, 250
    m = parse((await metrics.render())[0].decode())
    assert get(m, "blockrun_proxy_quote_hits_total") == 3
    assert get(m, "blockrun_proxy_quote_misses_total") == 4  # calls that needed a 402
    assert get(m, "blockrun_proxy_quote_refused_total") == 1  # up-front payments refused
    assert get(m, "blockrun_proxy_quote_overpaid_micro_usdc_total") == 250
    stats.hits = 5
    m = parse((await metrics.render())[0].decode())
    assert get(m, "blockrun_proxy_quote_hits_total") == 5


def test_each_app_has_its_own_registry():
    first, second = Metrics(), Metrics()  # no "Duplicated timeseries" from a shared global
    first.requests.labels("/x", "200").inc()
    assert (
        second.registry.get_sample_value(
            "blockrun_proxy_requests_total", {"route": "/x", "status": "200"}
        )
        is None
    )


@pytest.mark.parametrize("value", [None, "not an int"])
async def test_a_missing_quote_source_exports_nothing_new(value):
    metrics = Metrics()
    metrics.watch_quotes(lambda: SimpleNamespace(hits=value, misses=value, overpaid_atomic=value))
    m = parse((await metrics.render())[0].decode())
    assert get(m, "blockrun_proxy_quote_hits_total") == 0
