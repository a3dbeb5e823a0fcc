"""``blockrun-proxy spend``: the /v1/spend document, read from the ledger directly.

No proxy needs to run: the ledger is the fleet's Redis (``--redis-url``) or the local
SQLite file under ``--state-dir`` (opened read-only; a running proxy may be writing it).
"""

from __future__ import annotations

import time
from typing import Any

from blockrun_proxy.budget import BudgetUsage
from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.config import Settings
from blockrun_proxy.errors import BudgetStoreUnavailable
from blockrun_proxy.redis_link import RedisLink, RedisUnavailable
from blockrun_proxy.spend.ledger import Ledger, ledger_path, read_summary
from blockrun_proxy.spend.summary import HOUR, budget_json, first_hour, spend_json


class NoLedger(Exception):
    """There is no ledger to read where the settings point."""


async def read_report(settings: Settings, *, hours: int, last: int) -> dict[str, Any]:
    link = RedisLink.from_settings(settings)
    try:
        return await _read(settings, link, hours=hours, last=last)
    except RedisUnavailable as exc:
        raise NoLedger(f"cannot read the spend ledger: {exc}") from None
    finally:
        if link is not None:
            await link.aclose()


async def _read(
    settings: Settings, link: RedisLink | None, *, hours: int, last: int
) -> dict[str, Any]:
    ledger: Ledger
    if link is not None:
        from blockrun_proxy.spend.redis_ledger import RedisLedger

        ledger = RedisLedger(link, retention_seconds=settings.ledger_retention_seconds)
        where = f"{link.url} (prefix {link.prefix})"
    else:
        from blockrun_proxy.spend.sqlite_ledger import SqliteLedger

        path = ledger_path(settings.state_dir)
        if path is None or not path.exists():
            raise NoLedger(
                f"no spend ledger at {path} yet: a proxy writes it there once a paid call "
                "has finished (see --state-dir; with --redis-url, pass the same URL here)"
            )
        ledger = SqliteLedger(
            path, retention_seconds=settings.ledger_retention_seconds, read_only=True
        )
        where = str(path)
    now = time.time()
    try:
        summary = await read_summary(ledger, now=now, hours=hours, last=last)
        budget = await _budget(settings, link, ledger, now)
    finally:
        await ledger.aclose()
    return spend_json(
        summary,
        hours=hours,
        budget=budget,
        wallet={"address": None, "balance": None, "balance_at": None},
        ledger={"backend": ledger.backend, "dropped": 0, "store": where},
    )


async def _budget(
    settings: Settings, link: RedisLink | None, ledger: Ledger, now: float
) -> dict[str, Any] | None:
    limit = settings.budget_atomic
    if limit is None:
        return None
    window = settings.budget_window_seconds
    if link is not None:
        store = RedisBudgetStore(link, limit, window)
        try:
            return budget_json(await store.usage(), shared=True)
        except BudgetStoreUnavailable:
            return {"error": "the shared budget store (Redis) did not answer"}
    # A local proxy keeps its budget in memory: the closest the ledger can say is what was
    # signed in the hours the window touches (it may over-count by up to an hour).
    hours = max(1, int(-(-window // HOUR)))
    since = first_hour(now, hours)
    rows = await ledger.hour_rows(since, since + (hours - 1) * HOUR)
    spent = sum(totals.signed for _, _, totals in rows)
    return budget_json(BudgetUsage(limit, window, spent), shared=False)
