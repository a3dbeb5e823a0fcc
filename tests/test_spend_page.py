"""The /spend page in a real headless browser: it shows the figures /v1/spend has.

Debian's chromium (``apt-get install -y chromium``; .ci/run installs it) driven by
playwright, never a browser playwright downloads. Each run saves a screenshot under the
test's tmp dir; ``BLOCKRUN_PROXY_UPDATE_SCREENSHOT=1`` also writes docs/spend-page.png
(the README's picture).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.browser import browser as chromium
from support.browser import needs_chromium
from support.calls import FRACTIONAL_MODEL, PRICED_MODEL, chat, post
from support.servers import WORKTREE

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.exchange import Exchange
from blockrun_proxy.server import plug_balance
from blockrun_proxy.spend.records import SpendRecord
from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.wallet.watcher import BalanceWatcher
from blockrun_proxy.x402 import usd

SCREENSHOT = Path(WORKTREE) / "docs" / "spend-page.png"

pytestmark = needs_chromium


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh chromium profile per test; the page's console errors fail the test."""
    async with chromium(tmp_path / "profile") as context:
        yield context


async def spend_json(url: str, token: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.get(url + "/v1/spend") as resp,
    ):
        assert resp.status == 200
        return await resp.json()


async def test_the_page_renders_the_figures_the_json_has(
    start_proxy: Any, gateway: FakeGateway, browser: Any, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    proxy = await start_proxy(token=token, state_dir=tmp_path / "state", budget_usd=Decimal("0.25"))
    # Earlier hours, as a proxy running since yesterday would have them.
    claude = "anthropic/claude-sonnet-4.6"
    earlier = [
        (20, FRACTIONAL_MODEL, 1_800, 3),
        (17, PRICED_MODEL, 24_000, 2),
        (13, claude, 31_000, 2),
        (9, PRICED_MODEL, 12_500, 4),
        (6, FRACTIONAL_MODEL, 2_200, 5),
        (3, claude, 18_000, 3),
        (1, PRICED_MODEL, 9_000, 2),
    ]
    now = time.time()
    history = [
        SpendRecord(
            ts=now - 3600 * hours_ago - 60,
            request_id=f"old-{hours_ago}-{n}",
            model=model,
            route="/v1/chat/completions",
            status=200,
            outcome="ok",
            signed=amount,
            settled=amount,
            settlement="0x" + "ab" * 32,
            error=None,
            replica="pod-b:1",
        )
        for hours_ago, model, amount, calls in earlier
        for n in range(calls)
    ]
    await proxy.app[CORE_KEY].recorder.ledger.append(history)
    client_headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=client_headers) as session:
        for index in range(6):
            model = PRICED_MODEL if index % 3 else FRACTIONAL_MODEL
            body = chat(model, "word " * (20 * index + 1), max_tokens=200 * (index + 1))
            async with session.post(proxy.base_url + "/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.read()
        gateway.misbehave.fail_after_settle = 1
        async with session.post(
            proxy.base_url + "/chat/completions", json=chat(PRICED_MODEL)
        ) as resp:
            assert resp.status == 424
            failed_id = resp.headers["x-request-id"]
    assert (await post(proxy, chat(PRICED_MODEL))).status == 401  # a client without the token

    # /v1/spend waits at most 0.5 s for queued records; on a loaded machine the ledger's
    # write can take longer. The JSON here and the page's own read must see the same.
    assert await proxy.app[CORE_KEY].recorder.flush(10)
    doc = await spend_json(proxy.url, token)
    totals = doc["totals"]
    assert totals["calls"] == 7 + len(history) and totals["failed_after_payment"] == 1
    assert len(doc["per_model"]) == 3

    page = await browser.new_page()
    await page.goto(f"{proxy.url}/spend#token={token}")
    await page.wait_for_selector("body[data-ready]")

    async def text(selector: str) -> str:
        return (await page.inner_text(selector)).strip()

    assert await text("#total-signed") == "$" + usd(totals["signed"])
    assert await text("#total-settled") == "$" + usd(totals["settled"])
    assert await text("#total-calls") == str(totals["calls"])
    assert await text("#total-failed") == "1"
    assert "alert" in (await page.get_attribute("#failed-card", "class") or "")
    budget = doc["budget"]
    assert await text("#budget-used") == "$" + usd(budget["spent"])
    assert await text("#budget-left") == "$" + usd(budget["left"])
    assert await text("#budget-limit") == "$0.250000"
    assert await text("#budget-window") == "24h"
    share = float(await page.get_attribute("#budget-gauge .used", "data-share") or "nan")
    assert share == pytest.approx(budget["spent"] / budget["limit"], abs=1e-4)
    assert await text("#wallet-balance") == "unknown"

    for model in doc["per_model"]:
        row = f'#models tr[data-model="{model["model"]}"]'
        assert await text(f"{row} td.signed") == "$" + usd(model["signed"])
        assert await text(f"{row} td.settled") == "$" + usd(model["settled"])
        bar = f'#model-chart rect[data-model="{model["model"]}"]'
        assert await page.get_attribute(bar, "data-signed") == str(model["signed"])

    bars = await page.eval_on_selector_all(
        "#hour-chart rect.bar", "bars => bars.map(b => Number(b.dataset.signed))"
    )
    assert bars == [hour["signed"] for hour in doc["per_hour"]]
    marks = await page.eval_on_selector_all(
        "#hour-chart .failed-mark", "marks => marks.map(m => Number(m.dataset.hour))"
    )
    assert marks == [h["hour"] for h in doc["per_hour"] if h["failed_after_payment"]]
    assert len(marks) == 1

    rows = page.locator("#calls tbody tr")
    assert await rows.count() == len(doc["last_calls"]) == 7 + len(history)
    failed_row = page.locator(f'#calls tr[data-request-id="{failed_id}"]')
    assert await failed_row.get_attribute("class") == "failed"
    assert "failed after payment" in await failed_row.inner_text()
    assert await page.locator("#calls tr.failed").count() == 1
    first_ok = doc["last_calls"][1]
    ok_row = page.locator(f'#calls tr[data-request-id="{first_ok["request_id"]}"]')
    assert "$" + usd(first_ok["settled"]) in await ok_row.inner_text()

    # The token left the address bar and stayed in this tab only: no cookie.
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate("sessionStorage.getItem('blockrun-proxy-token')") == token
    assert await page.evaluate("document.cookie") == ""

    shot = tmp_path / "spend-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("BLOCKRUN_PROXY_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


async def test_the_page_asks_for_the_token_it_needs(start_proxy: Any, browser: Any) -> None:
    token = secrets.token_hex(16)
    proxy = await start_proxy(token=token)
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/spend")
    await page.wait_for_selector("#token-form:not([hidden])")
    assert await page.is_hidden("#report")
    await page.fill("#token", "wrong")
    await page.click("#token-form button")
    await page.wait_for_function(
        "document.getElementById('status').textContent.includes('refused')"
    )
    await page.fill("#token", token)
    await page.click("#token-form button")
    await page.wait_for_selector("body[data-ready]")
    assert await page.is_visible("#report")
    assert await page.inner_text("#total-calls") == "0"
    assert await page.is_visible("#calls >> text=no paid calls yet")


async def test_a_model_name_is_shown_as_text_never_run(
    start_proxy: Any, gateway: FakeGateway, browser: Any
) -> None:
    """Model ids are the clients' strings: one that looks like markup stays text."""
    proxy = await start_proxy(budget_usd=Decimal("0.000001"))
    hostile = '<img src=x onerror="document.title=1">'
    reply = await post(proxy, chat(PRICED_MODEL))
    assert reply.status == 402  # the budget refuses: recorded with the model name
    exchange = Exchange("req-x", "POST", "/v1/chat/completions", status=402)
    exchange.model, exchange.refusal = hostile, "budget_exceeded"
    proxy.app[CORE_KEY].recorder.observe(exchange)
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/spend")
    await page.wait_for_selector("body[data-ready]")
    assert await page.title() == "Spend · blockrun-proxy"
    assert await page.locator("#calls img").count() == 0
    assert hostile in await page.inner_text("#calls")


async def test_a_low_wallet_balance_is_highlighted(start_proxy: Any, browser: Any) -> None:
    proxy = await start_proxy(low_balance_usd=Decimal("5"))

    async def read_balance() -> int:
        return 3_250_000

    watcher = BalanceWatcher(read_balance, low_balance=5_000_000)
    plug_balance(proxy.app, watcher)  # what serve does with --rpc-url
    await watcher.refresh()
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/spend")
    await page.wait_for_selector("body[data-ready]")
    assert (await page.inner_text("#wallet-balance")).strip() == "$3.250000"
    assert "alert" in (await page.get_attribute("#wallet-card", "class") or "")
    assert "below --low-balance-usd" in await page.inner_text("#wallet-address")
