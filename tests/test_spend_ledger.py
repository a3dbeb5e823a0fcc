"""The spend ledger: what a call records, the stores (memory, SQLite, Redis), the recorder."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from support.redis_server import RedisServer

from blockrun_proxy.exchange import CLIENT_CLOSED, Exchange
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.ledger import Ledger, read_summary
from blockrun_proxy.spend.recorder import Recorder
from blockrun_proxy.spend.records import SpendRecord, outcome_of, record_for
from blockrun_proxy.spend.redis_ledger import RedisLedger
from blockrun_proxy.spend.sqlite_ledger import SqliteLedger
from blockrun_proxy.spend.summary import HOUR, hour_of

# Half past the current hour: the Redis ledger's hours expire at absolute times.
NOW = time.time() // HOUR * HOUR + 1800
RETENTION = 30 * 86400.0


def exchange(**fields: Any) -> Exchange:
    ex = Exchange("req-1", "POST", "/v1/chat/completions")
    ex.model = "openai/gpt-5.5"
    for name, value in fields.items():
        setattr(ex, name, value)
    return ex


def call(status: int, signed: int = 0, cost: int | None = None, **kw: Any) -> dict[str, Any]:
    return {"status": status, "signed_atomic": signed, "cost_atomic": cost, **kw}


FAILED = "failed_after_payment"


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        (call(200, 1000, 1000), "ok"),
        (call(CLIENT_CLOSED, 1000, 1000), "ok"),  # hung up mid-stream: it was served
        (call(424, 1000, upstream_error="paid_call_failed"), FAILED),
        (call(200, 1000, 1000, upstream_error="stream_broken"), FAILED),
        (call(CLIENT_CLOSED, 1000), FAILED),  # hung up while the paid call was out
        (call(402, 1000, refusal="payment_not_accepted"), "refused"),
        (call(502, 1000, upstream_error="gateway_unreachable"), "refused"),
        (call(402, refusal="budget_exceeded"), "refused"),
        (call(503, refusal="budget_store_unavailable"), "refused"),
        (call(200), None),  # a free model
        (call(400, refusal="invalid_request"), None),
        (call(503, refusal="proxy_draining"), None),
        (call(502, upstream_error="gateway_unreachable"), None),
    ],
)
def test_outcome_of_a_call(fields: dict[str, Any], outcome: str | None) -> None:
    assert outcome_of(exchange(**fields)) == outcome


def test_a_record_keeps_what_the_page_shows() -> None:
    ex = exchange(status=200, signed_atomic=1200, cost_atomic=1100, settlement_tx="0xabc")
    record = record_for(ex, now=NOW, replica="pod-a:1")
    assert record == SpendRecord(
        NOW, "req-1", "openai/gpt-5.5", "/v1/chat/completions", 200, "ok", 1200, 1100,
        "0xabc", None, "pod-a:1",
    )  # fmt: skip
    assert SpendRecord.from_dict(record.to_dict()) == record
    failed = record_for(exchange(status=424, signed_atomic=900), now=NOW, replica="r")
    assert failed is not None and failed.settled is None
    assert SpendRecord.from_dict({"ts": "x"}) is None
    assert SpendRecord.from_dict({**record.to_dict(), "outcome": "weird"}) is None
    long = record_for(
        exchange(status=402, refusal="budget_exceeded", model="m" * 500), now=NOW, replica="r"
    )
    assert long is not None and len(long.model) == 128  # a client's string, bounded


def rec(ts: float, model: str, outcome: str = "ok", signed: int = 1000, **kw: Any) -> SpendRecord:
    settled = kw.pop("settled", signed if outcome == "ok" else None)
    return SpendRecord(
        ts, kw.pop("request_id", f"r{ts}"), model, "/v1/chat/completions", 200, outcome,
        signed, settled, None, None, "r",
    )  # fmt: skip


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        link = RedisLink(server.url, timeout=10.0, prefix="test")  # not about timeouts
        yield RedisLedger(link, retention_seconds=RETENTION, max_records=1000)
        await link.aclose()
        return
    path = tmp_path / "state" / "spend.sqlite3" if request.param == "sqlite" else None
    store = SqliteLedger(path, retention_seconds=RETENTION, max_records=1000, clock=lambda: NOW)
    yield store
    await store.aclose()


async def test_totals_per_hour_and_model_and_the_last_calls(ledger: Ledger) -> None:
    await ledger.append(
        [
            rec(NOW - 2 * HOUR, "a", signed=100),
            rec(NOW - HOUR, "a", signed=200),
            rec(NOW - HOUR, "b", "failed_after_payment", signed=300),
        ]
    )
    await ledger.append([rec(NOW, "b", signed=400), rec(NOW + 1, "b", "refused", signed=0)])
    summary = await read_summary(ledger, now=NOW + 2, hours=2, last=3)
    assert sorted(summary.per_hour) == [hour_of(NOW) - HOUR, hour_of(NOW)]  # 2 hours shown
    assert summary.totals.calls == 4  # the call 2 hours ago is outside
    assert summary.totals.signed == 900
    assert summary.totals.settled == 600  # failed and refused calls settled nothing known
    assert summary.per_model["a"].signed == 200
    assert summary.per_model["b"].failed_after_payment == 1
    assert summary.per_model["b"].refused == 1
    assert summary.per_hour[hour_of(NOW)].signed == 400
    assert [r.ts for r in summary.last] == [NOW + 1, NOW, NOW - HOUR]  # newest first
    week = await read_summary(ledger, now=NOW + 2, hours=24 * 7, last=0)
    assert week.totals.signed == 1000 and week.last == []


async def test_call_records_are_capped(ledger: Ledger) -> None:
    for start in range(0, 3000, 500):
        await ledger.append([rec(NOW + i / 1000, "m", signed=1) for i in range(start, start + 500)])
    last = await ledger.last(5000)
    assert 1000 <= len(last) <= 1200  # Redis trims approximately, SQLite exactly
    assert last[0].ts == NOW + 2.999
    summary = await read_summary(ledger, now=NOW + 3, hours=1, last=0)
    assert summary.totals.calls == 3000  # the hourly totals stay exact


async def test_sqlite_drops_what_is_older_than_the_retention(tmp_path: Path) -> None:
    clock = [NOW]
    store = SqliteLedger(
        tmp_path / "spend.sqlite3", retention_seconds=2 * 86400, clock=lambda: clock[0]
    )
    try:
        await store.append([rec(NOW, "old")])
        clock[0] = NOW + 3 * 86400
        await store.append([rec(clock[0], "new")])
        assert [r.model for r in await store.last(10)] == ["new"]
        rows = await store.hour_rows(hour_of(NOW) - 10 * 86400, hour_of(clock[0]))
        assert [model for _, model, _ in rows] == ["new"]
    finally:
        await store.aclose()


async def test_redis_hours_expire_after_the_retention(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, timeout=10.0, prefix="test")  # not about timeouts
    try:
        now = time.time()
        await RedisLedger(link, retention_seconds=86400).append([rec(now, "m")])
        key = f"test:ledger:hour:{hour_of(now)}"
        expires = await link.client.expiretime(key)
        assert expires == hour_of(now) + HOUR + 86400
    finally:
        await link.aclose()


async def test_sqlite_runs_in_its_own_thread_and_files_are_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    original = SqliteLedger._append

    def spy(self: SqliteLedger, records: Sequence[SpendRecord]) -> None:
        seen.append(threading.current_thread().name)
        original(self, records)

    monkeypatch.setattr(SqliteLedger, "_append", spy)
    path = tmp_path / "spend.sqlite3"
    writer = SqliteLedger(path, retention_seconds=RETENTION)
    other = SqliteLedger(path, retention_seconds=RETENTION)  # another --workers process
    reader = SqliteLedger(path, retention_seconds=RETENTION, read_only=True)
    await writer.append([rec(NOW, "a")])
    await other.append([rec(NOW + 1, "b")])
    try:
        assert seen and all(name.startswith("spend-ledger") for name in seen)
        assert [r.model for r in await reader.last(10)] == ["b", "a"]
    finally:
        for store in (writer, other, reader):
            await store.aclose()


async def test_an_unwritable_state_dir_keeps_the_ledger_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SqliteLedger(blocker / "spend.sqlite3", retention_seconds=RETENTION)
    try:
        await store.append([rec(NOW, "m")])
        assert [r.model for r in await store.last(5)] == ["m"]
        assert store.backend == "memory"  # and the page says so
    finally:
        await store.aclose()


async def test_a_read_only_ledger_that_does_not_exist_reads_empty(tmp_path: Path) -> None:
    reader = SqliteLedger(tmp_path / "none.sqlite3", retention_seconds=RETENTION, read_only=True)
    try:
        assert await reader.last(5) == []
        assert not (tmp_path / "none.sqlite3").exists()  # reading never creates it
    finally:
        await reader.aclose()


class FlakyLedger:
    backend = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.records: list[SpendRecord] = []
        self.closed = False

    async def append(self, records: Sequence[SpendRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("down")
        self.records += records

    async def hour_rows(self, since: int, until: int) -> list[Any]:
        return []

    async def last(self, count: int) -> list[SpendRecord]:
        return []

    async def aclose(self) -> None:
        self.closed = True


def paid(request_id: str) -> Exchange:
    ex = exchange(status=200, signed_atomic=10, cost_atomic=10)
    ex.request_id = request_id
    return ex


async def test_the_recorder_never_waits_and_counts_what_it_drops() -> None:
    ledger = FlakyLedger(failures=0)
    recorder = Recorder(ledger, replica="r", capacity=3)
    for index in range(5):  # not started yet: nothing drains the queue
        recorder.observe(paid(f"q{index}"))
    recorder.observe(exchange(status=200))  # free: not a ledger record
    assert recorder.dropped == 2
    recorder.start()
    await recorder.flush()
    assert [r.request_id for r in ledger.records] == ["q0", "q1", "q2"]
    await recorder.aclose()
    assert ledger.closed


async def test_the_recorder_retries_a_failing_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    from blockrun_proxy.spend import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "RETRY_DELAYS", (0.01,))
    ledger = FlakyLedger(failures=2)
    recorder = Recorder(ledger, replica="r")
    recorder.start()
    recorder.observe(paid("a"))
    await recorder.flush()
    recorder.observe(paid("b"))
    await recorder.aclose()
    assert [r.request_id for r in ledger.records] == ["a", "b"]
    assert recorder.write_errors == 2 and recorder.dropped == 0


async def test_closing_gives_up_on_a_dead_ledger_in_bounded_time() -> None:
    ledger = FlakyLedger(failures=10**9)
    recorder = Recorder(ledger, replica="r")
    recorder.start()
    recorder.observe(paid("a"))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(recorder.aclose(timeout=0.5), 2)
    assert recorder.dropped == 1 and ledger.records == []


class CountingLedger(FlakyLedger):
    """Remembers each batch it was handed: one hand-off per batch is the point."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.batches: list[int] = []

    async def append(self, records: Sequence[SpendRecord]) -> None:
        self.batches.append(len(records))
        await super().append(records)


async def test_records_of_a_busy_moment_reach_the_ledger_as_one_batch() -> None:
    ledger = CountingLedger()
    recorder = Recorder(ledger, replica="r", linger=0.2)
    recorder.start()
    for index in range(5):  # five calls finishing on five turns of the loop
        recorder.observe(paid(f"q{index}"))
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert ledger.batches == []  # still lingering for company
    await asyncio.sleep(0.3)
    assert ledger.batches == [5]
    await recorder.aclose()


async def test_a_flush_or_a_full_batch_does_not_wait_out_the_linger() -> None:
    ledger = CountingLedger()
    recorder = Recorder(ledger, replica="r", batch=3, linger=3600)
    recorder.start()
    recorder.observe(paid("a"))
    await asyncio.sleep(0)
    assert await recorder.flush(2)  # /v1/spend: the call that just finished is there
    assert [r.request_id for r in ledger.records] == ["a"]
    for name in "bcd":  # a batch fills: written at once, without a flush
        recorder.observe(paid(name))
    await asyncio.sleep(0.05)
    assert ledger.batches == [1, 3]
    await recorder.aclose()


async def test_closing_writes_the_lingering_batch() -> None:
    ledger = CountingLedger()
    recorder = Recorder(ledger, replica="r", linger=3600)
    recorder.start()
    recorder.observe(paid("a"))
    recorder.observe(paid("b"))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(recorder.aclose(), 2)
    assert ledger.batches == [2] and recorder.dropped == 0
