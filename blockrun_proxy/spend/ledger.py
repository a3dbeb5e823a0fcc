"""The spend ledger: where paid calls are recorded, and read back as a summary.

Two stores behind one interface:

- ``RedisLedger`` (redis_ledger.py) when ``--redis-url`` is set: every replica writes to
  it, so the page and ``blockrun-proxy spend`` show the fleet's spend;
- ``SqliteLedger`` (sqlite_ledger.py) otherwise: a file under ``--state-dir``
  (``spend.sqlite3``), or memory when there is none.

Each keeps two things, both bounded: the last ``max_records`` calls (for "last calls"),
and per hour and model the totals of every call (for the charts), for ``retention``
seconds. Totals therefore stay exact after old call records have been dropped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from blockrun_proxy.config import Settings
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.records import SpendRecord
from blockrun_proxy.spend.summary import HOUR, HourRow, SpendSummary, first_hour, summarize

LEDGER_FILE = "spend.sqlite3"
# Call records kept (the hourly totals are kept for the whole retention).
DEFAULT_MAX_RECORDS = 100_000


class Ledger(Protocol):
    backend: str  # "redis", "sqlite" or "memory", for the page

    async def append(self, records: Sequence[SpendRecord]) -> None:
        """Store ``records``; raises on failure (the recorder retries)."""
        ...

    async def hour_rows(self, since: int, until: int) -> list[HourRow]:
        """Totals per (hour, model) for the hours starting in [since, until]."""
        ...

    async def last(self, count: int) -> list[SpendRecord]:
        """The ``count`` most recent records, newest first."""
        ...

    async def aclose(self) -> None: ...


def ledger_path(state_dir: Path | None) -> Path | None:
    return None if state_dir is None else state_dir / LEDGER_FILE


def open_ledger(settings: Settings, link: RedisLink | None) -> Ledger:
    """The ledger ``settings`` describe. Opens nothing yet: the first write does."""
    if link is not None:
        from blockrun_proxy.spend.redis_ledger import RedisLedger

        return RedisLedger(link, retention_seconds=settings.ledger_retention_seconds)
    from blockrun_proxy.spend.sqlite_ledger import SqliteLedger

    return SqliteLedger(
        ledger_path(settings.state_dir), retention_seconds=settings.ledger_retention_seconds
    )


async def read_summary(ledger: Ledger, *, now: float, hours: int, last: int) -> SpendSummary:
    since = first_hour(now, hours)
    rows = await ledger.hour_rows(since, since + (hours - 1) * HOUR)
    records = await ledger.last(last) if last > 0 else []
    return summarize(rows, records, since=since, until=now)


def replica_name() -> str:
    """Which process wrote a record: the host (a pod's name in Kubernetes) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"
