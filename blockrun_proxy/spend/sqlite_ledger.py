"""The spend ledger in a local SQLite file (or in memory), for a proxy without Redis.

sqlite3 blocks, so every statement (and the import) runs in one worker thread of this
ledger's own (the connection lives and dies there): the event loop only awaits futures.
Several processes (``--workers N``) may share the file: it is in WAL mode, and a writer
waits up to ``BUSY_TIMEOUT_MS`` for another's lock (in its thread, never on the loop).

Retention: after every write, call records beyond the last ``max_records`` or older than
``retention_seconds`` are deleted, and hourly totals older than the retention too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import orjson

from blockrun_proxy.spend.ledger import DEFAULT_MAX_RECORDS
from blockrun_proxy.spend.records import FAILED_AFTER_PAYMENT, REFUSED, SpendRecord
from blockrun_proxy.spend.summary import HOUR, HourRow, Totals, hour_of

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger(__name__)
T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
CREATE TABLE IF NOT EXISTS hourly (
    hour INTEGER NOT NULL,
    model TEXT NOT NULL,
    calls INTEGER NOT NULL,
    signed INTEGER NOT NULL,
    settled INTEGER NOT NULL,
    failed_after_payment INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    PRIMARY KEY (hour, model)
) WITHOUT ROWID;
"""

ADD_TO_HOUR = """
INSERT INTO hourly VALUES (?, ?, 1, ?, ?, ?, ?)
ON CONFLICT (hour, model) DO UPDATE SET
    calls = calls + 1,
    signed = signed + excluded.signed,
    settled = settled + excluded.settled,
    failed_after_payment = failed_after_payment + excluded.failed_after_payment,
    refused = refused + excluded.refused
"""


class LedgerMissing(Exception):
    """A read-only ledger whose file does not exist (nothing was recorded there yet)."""


class SqliteLedger:
    def __init__(
        self,
        path: Path | None,
        *,
        retention_seconds: float,
        max_records: int | None = None,
        read_only: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.backend = "memory" if path is None else "sqlite"
        self._retention = retention_seconds
        self._max_records = DEFAULT_MAX_RECORDS if max_records is None else max_records
        self._read_only = read_only
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spend-ledger")
        self._db: sqlite3.Connection | None = None  # used in the worker thread only

    async def append(self, records: Sequence[SpendRecord]) -> None:
        await self._in_thread(lambda: self._append(records))

    async def hour_rows(self, since: int, until: int) -> list[HourRow]:
        return await self._in_thread(lambda: self._hour_rows(since, until))

    async def last(self, count: int) -> list[SpendRecord]:
        return await self._in_thread(lambda: self._last(count))

    async def aclose(self) -> None:
        await self._in_thread(self._close)
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------- the worker thread

    async def _in_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        import sqlite3  # here, in the worker thread: not part of the proxy's startup

        if self.path is None:
            db = sqlite3.connect(":memory:", isolation_level=None)
        elif self._read_only:
            if not self.path.exists():
                raise LedgerMissing(f"no spend ledger at {self.path} yet")
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        else:
            try:
                db = self._open_file()
            except OSError as exc:
                # A read-only filesystem or a state dir the process may not write: keep
                # the ledger in memory rather than lose every record (and say so once).
                log.warning(
                    "spend ledger: cannot use %s (%s); keeping it in memory instead "
                    "(set --state-dir to a writable directory)",
                    self.path,
                    exc,
                )
                self.backend = "memory"
                db = sqlite3.connect(":memory:", isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not self._read_only:
            db.executescript(SCHEMA)
        self._db = db
        return db

    def _open_file(self) -> sqlite3.Connection:
        import sqlite3

        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(self.path.parent, os.W_OK):  # a read-only filesystem, say
            raise PermissionError(f"{self.path.parent} is not writable")
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _append(self, records: Sequence[SpendRecord]) -> None:
        db = self._connection()
        now = self._clock()
        with db:  # one transaction per batch
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO calls (ts, record) VALUES (?, ?)",
                [(r.ts, orjson.dumps(r.to_dict()).decode()) for r in records],
            )
            db.executemany(
                ADD_TO_HOUR,
                [
                    (
                        hour_of(r.ts),
                        r.model,
                        r.signed,
                        r.settled or 0,
                        int(r.outcome == FAILED_AFTER_PAYMENT),
                        int(r.outcome == REFUSED),
                    )
                    for r in records
                ],
            )
            db.execute(
                "DELETE FROM calls WHERE id <= (SELECT MAX(id) FROM calls) - ? OR ts < ?",
                (self._max_records, now - self._retention),
            )
            db.execute("DELETE FROM hourly WHERE hour < ?", (hour_of(now - self._retention),))

    def _hour_rows(self, since: int, until: int) -> list[HourRow]:
        try:
            db = self._connection()
        except LedgerMissing:
            return []
        rows = db.execute(
            "SELECT hour, model, calls, signed, settled, failed_after_payment, refused "
            "FROM hourly WHERE hour >= ? AND hour < ?",
            (since, until + HOUR),
        ).fetchall()
        return [(int(row[0]), str(row[1]), Totals(*(int(v) for v in row[2:]))) for row in rows]

    def _last(self, count: int) -> list[SpendRecord]:
        try:
            db = self._connection()
        except LedgerMissing:
            return []
        rows = db.execute("SELECT record FROM calls ORDER BY id DESC LIMIT ?", (count,)).fetchall()
        records = (SpendRecord.from_dict(orjson.loads(row[0])) for row in rows)
        return [record for record in records if record is not None]

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
