"""The /docs page in a real headless browser: Swagger UI renders the proxy's own routes
from /openapi.json, read with the token, every file served by the proxy itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from support.browser import browser, needs_chromium

from blockrun_proxy.routes import ROUTES

pytestmark = needs_chromium
TOKEN = "docs-page-token-0123456789"


async def test_the_page_renders_every_route_with_the_token(start_proxy, tmp_path: Path) -> None:
    proxy = await start_proxy(token=TOKEN)
    origin = urlsplit(proxy.url).netloc
    hosts: set[str] = set()
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
        await page.goto(f"{proxy.url}/docs")
        await page.wait_for_selector("#token-form:not([hidden])")  # no token yet: asked
        await page.fill("#token", TOKEN)
        await page.click("#token-form button")
        await page.wait_for_selector("body[data-ready]")
        await page.wait_for_selector(".opblock-summary-path", timeout=15_000)
        shown: list[Any] = await page.eval_on_selector_all(
            ".opblock-summary-path", "nodes => nodes.map(n => n.getAttribute('data-path'))"
        )
        assert not await page.is_visible("text=Try it out")  # read only
        await page.screenshot(path=str(tmp_path / "docs-page.png"))
        # Reopened with the token in the fragment: no form.
        fresh = await context.new_page()
        await fresh.goto(f"{proxy.url}/docs#token={TOKEN}")
        await fresh.wait_for_selector("body[data-ready]")
        assert await fresh.evaluate("location.hash") == ""  # wiped from the address bar
    for route in ROUTES:
        assert route.label in shown, route.label
    assert "/v1/{path}" in shown and "/healthz" in shown
    assert hosts == {origin}  # nothing fetched from anywhere else
