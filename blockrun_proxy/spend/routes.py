"""``GET /v1/spend`` (JSON, behind the token) and ``GET /spend`` (the page that reads it).

The page is three static files shipped in the package (``spend/static``): no build step,
no CDN, nothing fetched from elsewhere, a Content-Security-Policy that allows only this
origin. The page shell holds no data, so it is served without the token (a browser
cannot attach a bearer token to a navigation); its script reads ``/v1/spend`` with the
token in an ``Authorization`` header. The page takes the token from the URL fragment
(``/spend#token=...``, never sent to any server) or asks for it, and keeps it in
``sessionStorage`` for the tab. No cookie: a cookie would ride along on another site's
requests, a header set by script never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from blockrun_proxy.budget import BudgetUsage
from blockrun_proxy.errors import BudgetStoreUnavailable, InvalidRequest, LedgerUnavailable
from blockrun_proxy.redis_link import RedisUnavailable
from blockrun_proxy.spend.ledger import Ledger, read_summary
from blockrun_proxy.spend.summary import (
    DEFAULT_HOURS,
    DEFAULT_LAST,
    MAX_HOURS,
    MAX_LAST,
    budget_json,
    spend_json,
)

PAGE_PATH = "/spend"
ASSETS = {
    "spend.js": "text/javascript",
    "spend.css": "text/css",
}
PAGE_PATHS = frozenset({PAGE_PATH, *(f"{PAGE_PATH}/{name}" for name in ASSETS)})
# The page loads only its own script and style, talks only to this origin, and may not be
# framed (clickjacking) or send a referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BalanceSource(Protocol):
    """The wallet's USDC balance as last read: (atomic units, unix time read), or None;
    and whether that reading is below ``--low-balance-usd``."""

    def latest(self) -> tuple[int, float] | None: ...

    def low(self) -> bool: ...


class BalanceSlot:
    """Where the balance reader goes once it runs: ``latest()`` is None ("unknown") until
    then, or when it has not read the balance yet."""

    def __init__(self) -> None:
        self.source: BalanceSource | None = None

    def latest(self) -> tuple[int, float] | None:
        return None if self.source is None else self.source.latest()

    def low(self) -> bool:
        return self.source is not None and self.source.low()


BudgetReader = Callable[[], Awaitable[BudgetUsage | None]]


class SpendView:
    """What the spend routes read: the ledger, the budget, the wallet."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        budget: BudgetReader,
        budget_shared: bool,
        address: Callable[[], str | None],
        balance: Callable[[], BalanceSource | None] = lambda: None,
        dropped: Callable[[], int] = lambda: 0,
        store_state: Callable[[], str | None] = lambda: None,
        settle: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.ledger = ledger
        self.budget = budget
        self.budget_shared = budget_shared
        self.address = address
        self.balance = balance
        self.dropped = dropped
        self.store_state = store_state
        self.settle = settle  # lets the records still queued reach the ledger first
        self.files = StaticFiles()

    async def document(self, *, hours: int, last: int) -> dict[str, Any]:
        if self.settle is not None:
            await self.settle()
        try:
            summary = await read_summary(self.ledger, now=time.time(), hours=hours, last=last)
        except RedisUnavailable as exc:
            raise LedgerUnavailable(
                f"the spend ledger could not be read: {exc}", headers={"Retry-After": "5"}
            ) from exc
        budget: dict[str, Any] | None
        try:
            budget = budget_json(await self.budget(), shared=self.budget_shared)
        except BudgetStoreUnavailable:
            budget = {"error": "the shared budget store (Redis) did not answer"}
        source = self.balance()
        latest = source.latest() if source is not None else None
        wallet = {
            "address": self.address(),
            "balance": None if latest is None else latest[0],
            "balance_at": None if latest is None else latest[1],
            # Below --low-balance-usd (false when unknown or without a threshold).
            "low": source is not None and source.low(),
        }
        ledger = {"backend": self.ledger.backend, "dropped": self.dropped()}
        state = self.store_state()
        if state is not None:
            ledger["store"] = state
        return spend_json(summary, hours=hours, budget=budget, wallet=wallet, ledger=ledger)


SPEND_KEY = web.AppKey("spend", SpendView)


class StaticFiles:
    """The page's files, read from the package once (off the loop) and kept."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] | None = None

    async def get(self, name: str) -> bytes:
        if self._files is None:
            self._files = await asyncio.get_running_loop().run_in_executor(None, _read_static)
        return self._files[name]


def _read_static() -> dict[str, bytes]:
    root = resources.files("blockrun_proxy.spend") / "static"
    return {name: (root / name).read_bytes() for name in ("index.html", *ASSETS)}


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(
            f"query parameter {name} must be an integer from {low} to {high}",
            code="invalid_query",
        )
    return value


async def spend_api(request: web.Request) -> web.Response:
    hours = query_int(request, "hours", DEFAULT_HOURS, 1, MAX_HOURS)
    last = query_int(request, "last", DEFAULT_LAST, 0, MAX_LAST)
    document = await request.app[SPEND_KEY].document(hours=hours, last=last)
    return web.json_response(document, headers={"Cache-Control": "no-store"})


async def spend_page(request: web.Request) -> web.Response:
    return await _static(request, "index.html", "text/html")


async def spend_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return await _static(request, name, ASSETS[name])


async def _static(request: web.Request, name: str, content_type: str) -> web.Response:
    return web.Response(
        body=await request.app[SPEND_KEY].files.get(name),
        content_type=content_type,
        charset="utf-8",
        headers=PAGE_HEADERS,
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/spend", spend_api)
    router.add_get(PAGE_PATH, spend_page)
    router.add_get(PAGE_PATH + "/{name}", spend_asset)
