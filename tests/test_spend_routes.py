"""GET /v1/spend and the /spend page's files, against a real proxy and the fake gateway."""

from __future__ import annotations

import logging
import math
import secrets
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.calls import PRICED_MODEL, chat, post
from support.redis_server import RedisServer

from blockrun_proxy.app import BALANCE_KEY, CORE_KEY, create_app
from blockrun_proxy.config import Settings
from blockrun_proxy.server import WatchedBalance, plug_balance
from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.wallet.watcher import BalanceWatcher


async def get(proxy: Any, path: str, token: str | None = None) -> tuple[int, Any, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.url + path, headers=headers) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


async def spend(proxy: Any, query: str = "", token: str | None = None) -> dict[str, Any]:
    # /v1/spend waits at most 0.5 s for the records still queued (SPEND_SETTLE_SECONDS):
    # on a loaded machine the ledger's write can take longer, and the answer would not
    # have the last call yet. These tests compare exact totals: let the writer finish.
    recorder = proxy.app[CORE_KEY].recorder
    assert await recorder.flush(REDIS_TIMEOUT)
    status, _, body = await get(proxy, "/v1/spend" + query, token)
    assert status == 200, body
    return orjson.loads(body)


REDIS_TIMEOUT = 10.0


def settled_total(gateway: FakeGateway) -> int:
    return sum(payment.amount for payment in gateway.settled)


async def test_spend_adds_up_to_what_the_gateway_settled(
    start_proxy: Any, gateway: FakeGateway, tmp_path: Path
) -> None:
    proxy = await start_proxy(state_dir=tmp_path / "state", budget_usd=Decimal("5"))
    for index in range(4):
        reply = await post(proxy, chat(PRICED_MODEL, f"hello {index}", max_tokens=50 * (index + 1)))
        assert reply.status == 200
    gateway.misbehave.fail_after_settle = 1
    failed = await post(proxy, chat(PRICED_MODEL, "this one breaks", max_tokens=10))
    assert failed.status == 424
    free = await post(proxy, chat("nvidia/deepseek-v4-flash"))
    assert free.status == 200

    doc = await spend(proxy)
    assert doc["unit"] == "micro-USDC"
    totals = doc["totals"]
    assert totals["calls"] == 5  # the free call is not the ledger's business
    assert totals["failed_after_payment"] == 1
    accepted = sum(p.amount for p in gateway.payments if p.accepted)
    assert totals["signed"] == accepted
    ok_settled = sum(c["settled"] or 0 for c in doc["last_calls"])
    assert totals["settled"] == ok_settled == settled_total(gateway) - gateway.settled[-1].amount
    (model,) = doc["per_model"]
    assert model["model"] == PRICED_MODEL and model["calls"] == 5
    assert sum(hour["signed"] for hour in doc["per_hour"]) == totals["signed"]
    assert len(doc["per_hour"]) == 24
    first = doc["last_calls"][0]
    assert first["outcome"] == "failed_after_payment" and first["status"] == 424
    assert first["request_id"] == failed.headers["x-request-id"]
    assert all(c["settlement"].startswith("0x") for c in doc["last_calls"][1:])
    budget = doc["budget"]
    assert budget == {
        "limit": 5_000_000,
        "window_seconds": 86400.0,
        "spent": accepted,
        "left": 5_000_000 - accepted,
        "shared": False,
    }
    assert doc["wallet"]["address"] == proxy.app[CORE_KEY].payer.address
    assert doc["wallet"]["balance"] is None  # no balance provider: "unknown"
    assert doc["ledger"]["backend"] == "sqlite"
    assert (tmp_path / "state" / "spend.sqlite3").is_file()


async def test_the_ledger_survives_a_restart(start_proxy: Any, tmp_path: Path) -> None:
    first = await start_proxy(state_dir=tmp_path)
    assert (await post(first, chat(PRICED_MODEL))).status == 200
    before = (await spend(first))["totals"]
    second = await start_proxy(state_dir=tmp_path)
    assert (await spend(second))["totals"] == before


async def test_a_refused_payment_is_recorded_with_nothing_signed(
    start_proxy: Any, gateway: FakeGateway
) -> None:
    proxy = await start_proxy(budget_usd=Decimal("0.000001"))
    reply = await post(proxy, chat(PRICED_MODEL))
    assert reply.status == 402 and reply.code == "budget_exceeded"
    doc = await spend(proxy)
    (call,) = doc["last_calls"]
    assert (call["outcome"], call["signed"], call["error"]) == ("refused", 0, "budget_exceeded")
    assert doc["ledger"]["backend"] == "memory"  # tests run with state_dir=None
    assert not gateway.settled


async def test_spend_is_behind_the_token_and_the_page_is_not(start_proxy: Any) -> None:
    token = secrets.token_hex(16)
    proxy = await start_proxy(token=token)
    status, _, body = await get(proxy, "/v1/spend")
    assert status == 401 and orjson.loads(body)["error"]["code"] == "invalid_proxy_token"
    assert (await spend(proxy, token=token))["totals"]["calls"] == 0
    for path, kind in (
        ("/spend", "text/html"),
        ("/spend/spend.js", "text/javascript"),
        ("/spend/spend.css", "text/css"),
    ):
        status, headers, body = await get(proxy, path)  # no token: a shell without data
        assert status == 200 and headers["Content-Type"].startswith(kind), path
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert token.encode() not in body
    status, _, _ = await get(proxy, "/spend/other.js")
    assert status == 401  # anything else under /spend is behind the token like the rest
    status, _, _ = await get(proxy, "/spend/other.js", token)
    assert status == 404


async def test_the_page_loads_nothing_from_elsewhere(start_proxy: Any) -> None:
    proxy = await start_proxy()
    for path in ("/spend", "/spend/spend.js", "/spend/spend.css"):
        _, _, body = await get(proxy, path)
        text = body.decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text
    _, _, script = await get(proxy, "/spend/spend.js")
    assert b"innerHTML" not in script  # data goes in as text only
    assert b"document.cookie" not in script and b"localStorage" not in script


@pytest.mark.parametrize("query", ["?hours=0", "?hours=10000", "?last=-1", "?hours=abc"])
async def test_bad_queries_get_an_openai_shaped_400(start_proxy: Any, query: str) -> None:
    proxy = await start_proxy()
    status, _, body = await get(proxy, "/v1/spend" + query)
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "invalid_query"


async def test_readyz_and_spend_show_the_balance_the_watcher_read(
    aiohttp_client: Any, wallet_key: str
) -> None:
    app = create_app(Settings(wallet_key=wallet_key, state_dir=None))
    client = await aiohttp_client(app)
    readyz = await (await client.get("/readyz")).json()
    assert readyz["balance_usd"] == "unknown"  # no reader (no --rpc-url)
    assert (await (await client.get("/v1/spend")).json())["wallet"]["balance"] is None

    async def read_balance() -> int:
        return 12_345_678

    watcher = BalanceWatcher(read_balance)
    app[BALANCE_KEY].source = WatchedBalance(watcher)  # what serve does with --rpc-url
    readyz = await (await client.get("/readyz")).json()
    assert readyz["balance_usd"] == "unknown"  # not read yet
    await watcher.refresh()
    readyz = await (await client.get("/readyz")).json()
    assert readyz["balance_usd"] == "12.345678"
    wallet = (await (await client.get("/v1/spend")).json())["wallet"]
    assert wallet["balance"] == 12_345_678
    assert abs(wallet["balance_at"] - time.time()) < 5  # wall-clock time of the reading


def metric(text: bytes, name: str) -> float:
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} is not exported")


async def test_a_low_balance_warns_once_flips_a_metric_and_shows_everywhere(
    start_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """--low-balance-usd: crossing it logs one warning and sets
    blockrun_proxy_wallet_balance_low, which /readyz and the spend page show too; a paid
    call asks the watcher for a fresh reading."""
    proxy = await start_proxy(low_balance_usd=Decimal("5"))
    chain = {"balance": 12_000_000}

    async def read_balance() -> int:
        return chain["balance"]

    watcher = BalanceWatcher(read_balance, low_balance=5_000_000)
    requested: list[bool] = []
    watcher.request_refresh = lambda: requested.append(True)  # type: ignore[method-assign]
    plug_balance(proxy.app, watcher)  # what serve does with --rpc-url

    async def state() -> tuple[dict[str, float], Any, Any]:
        _, _, text = await get(proxy, "/metrics")
        names = ("micro_usdc", "low", "age_seconds", "read_failures_total")
        metrics = {n: metric(text, f"blockrun_proxy_wallet_balance_{n}") for n in names}
        _, _, readyz = await get(proxy, "/readyz")
        return metrics, orjson.loads(readyz), (await spend(proxy))["wallet"]

    metrics, readyz, wallet = await state()
    assert math.isnan(metrics["micro_usdc"]) and math.isnan(metrics["age_seconds"])
    assert metrics["low"] == 0 and readyz["balance_low"] is False  # unknown is not low
    await watcher.refresh()
    metrics, readyz, wallet = await state()
    assert metrics["micro_usdc"] == 12_000_000 and metrics["low"] == 0
    assert (readyz["balance_usd"], readyz["balance_low"], wallet["low"]) == (
        "12.000000",
        False,
        False,
    )

    caplog.set_level(logging.INFO, logger="blockrun_proxy")
    chain["balance"] = 4_000_000  # crossed
    await watcher.refresh()
    chain["balance"] = 3_000_000  # still low: no second warning
    await watcher.refresh()
    metrics, readyz, wallet = await state()
    assert metrics["micro_usdc"] == 3_000_000 and metrics["low"] == 1
    assert (readyz["balance_usd"], readyz["balance_low"], wallet["low"]) == ("3.000000", True, True)
    assert readyz["ready"] is True  # informational: free models still work
    warnings = [r for r in caplog.records if "below --low-balance-usd" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    chain["balance"] = 6_000_000  # funded again
    await watcher.refresh()
    metrics, readyz, _ = await state()
    assert metrics["low"] == 0 and readyz["balance_low"] is False

    assert (await post(proxy, chat("nvidia/deepseek-v4-flash"))).status == 200
    assert requested == []  # a free call spends nothing
    assert (await post(proxy, chat(PRICED_MODEL))).status == 200
    assert requested == [True]  # the payment settled: read the balance again soon


# --- with the fleet store --------------------------------------------------------------------


async def test_a_proxy_on_redis_reserves_and_records_there(
    start_proxy: Any, gateway: FakeGateway, redis_server: RedisServer
) -> None:
    proxy = await start_proxy(
        # A generous bound: these tests are about where things are recorded, and a Redis
        # call on a loaded machine (the first: connect, load the script) can take seconds.
        redis_url=redis_server.url,
        budget_usd=Decimal("1"),
        redis_timeout_seconds=REDIS_TIMEOUT,
    )
    for index in range(3):
        assert (await post(proxy, chat(PRICED_MODEL, f"call {index}"))).status == 200
    doc = await spend(proxy)
    assert doc["ledger"]["backend"] == "redis"
    assert doc["ledger"]["store"] == "redis: ok"
    assert doc["budget"]["shared"] is True
    assert doc["budget"]["spent"] == settled_total(gateway) == doc["totals"]["settled"]
    assert proxy.app[CORE_KEY].payer.budget is proxy.app[CORE_KEY].budget  # the shared one


async def test_redis_down_means_no_signature_then_service_resumes(
    start_proxy: Any, gateway: FakeGateway, redis_server: RedisServer
) -> None:
    proxy = await start_proxy(
        # Stopped, Redis refuses connections at once: a generous bound costs nothing and
        # lets the first call after the restart (connect, load the script) take its time.
        redis_url=redis_server.url,
        budget_usd=Decimal("1"),
        redis_timeout_seconds=REDIS_TIMEOUT,
    )
    assert (await post(proxy, chat(PRICED_MODEL))).status == 200
    payments = len(gateway.payments)
    redis_server.stop()
    for _ in range(3):
        reply = await post(proxy, chat(PRICED_MODEL))
        assert reply.status == 503 and reply.code == "budget_store_unavailable"
        assert reply.headers["Retry-After"] == "1"
    assert len(gateway.payments) == payments  # not one signature without a reservation
    status, _, body = await get(proxy, "/readyz")
    assert status == 200 and "unreachable" in orjson.loads(body)["fleet_store"]
    status, _, body = await get(proxy, "/v1/spend")
    assert status == 503  # the ledger lives in Redis too: said plainly, not a 500
    assert orjson.loads(body)["error"]["code"] == "spend_ledger_unavailable"
    _, _, metrics = await get(proxy, "/metrics")
    assert b"blockrun_proxy_budget_store_unavailable_total 3.0" in metrics
    assert b'blockrun_proxy_refusals_total{reason="budget_store_unavailable"} 3.0' in metrics
    redis_server.start()
    assert (await post(proxy, chat(PRICED_MODEL))).status == 200
    await proxy.app[CORE_KEY].recorder.flush(5)
    doc = await spend(proxy)
    outcomes = sorted(c["outcome"] for c in doc["last_calls"])
    assert "ok" in outcomes  # the ledger writes again


async def test_a_payment_that_may_have_been_charged_stays_in_the_shared_budget(
    start_proxy: Any, gateway: FakeGateway, redis_server: RedisServer
) -> None:
    """Failed after payment: committed (it may have been charged); refused by the proxy or
    never signed: nothing held."""
    proxy = await start_proxy(
        # A generous bound: these tests are about where things are recorded, and a Redis
        # call on a loaded machine (the first: connect, load the script) can take seconds.
        redis_url=redis_server.url,
        budget_usd=Decimal("1"),
        redis_timeout_seconds=REDIS_TIMEOUT,
    )
    gateway.misbehave.fail_after_settle = 1
    failed = await post(proxy, chat(PRICED_MODEL))
    assert failed.status == 424
    signed = gateway.payments[-1].amount
    gateway.misbehave.fail_unpaid = 1  # an error before any payment: nothing to hold
    gateway.misbehave.fail_status = 400
    assert (await post(proxy, chat(PRICED_MODEL))).status == 400
    store = proxy.app[CORE_KEY].budget
    await store.flush(5)
    assert (await store.usage()).spent == signed
