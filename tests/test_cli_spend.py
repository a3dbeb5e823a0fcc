"""``blockrun-proxy spend``: the ledger's table in the terminal, from SQLite or Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from click.testing import CliRunner, Result
from support.redis_server import RedisServer

from blockrun_proxy import cli
from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.records import SpendRecord
from blockrun_proxy.spend.redis_ledger import RedisLedger
from blockrun_proxy.spend.sqlite_ledger import SqliteLedger

NOW = time.time()


def records() -> list[SpendRecord]:
    def one(ago: float, model: str, outcome: str, signed: int, request_id: str) -> SpendRecord:
        settled = signed if outcome == "ok" else None
        return SpendRecord(
            NOW - ago, request_id, model, "/v1/chat/completions", 424 if settled is None else 200,
            outcome, signed, settled, "0xfeed" if settled else None, None, "pod-a:7",
        )  # fmt: skip

    return [
        one(7200, "openai/gpt-5.5", "ok", 1_500, "req-a"),
        one(60, "anthropic/claude-sonnet-4.6", "ok", 250_000, "req-b"),
        one(30, "openai/gpt-5.5", "failed_after_payment", 2_000, "req-c"),
    ]


def run(*args: str) -> Result:
    env = {"BLOCKRUN_PROXY_REDIS_URL": "", "BLOCKRUN_PROXY_BUDGET_USD": ""}
    return CliRunner().invoke(cli.main, ["spend", *args], env=env)


def test_prints_the_local_ledger(tmp_path: Path) -> None:
    async def write() -> None:
        ledger = SqliteLedger(tmp_path / "spend.sqlite3", retention_seconds=86400 * 30)
        await ledger.append(records())
        await ledger.aclose()

    asyncio.run(write())
    result = run("--state-dir", str(tmp_path), "--budget-usd", "1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "signed 0.253500, settled 0.251500, 3 paid calls, 1 failed after payment" in out
    assert "Budget: 0.253500 of 1.000000 used (25%), 0.746500 left per 24h" in out
    assert "Wallet balance: unknown" in out
    model_line = next(line for line in out.splitlines() if line.startswith("anthropic/"))
    assert model_line.split() == [
        "anthropic/claude-sonnet-4.6",
        "1",
        "0.250000",
        "0.250000",
        "0",
        "0",
    ]
    failed = next(line for line in out.splitlines() if "req-c" in line)
    assert "FAILED_AFTER_PAYMENT" in failed and "424" in failed
    assert out.index("req-c") < out.index("req-b") < out.index("req-a")  # newest first

    as_json = run("--state-dir", str(tmp_path), "--json", "--last", "1")
    doc = orjson.loads(as_json.output)
    assert doc["totals"]["signed"] == 253_500
    assert [call["request_id"] for call in doc["last_calls"]] == ["req-c"]
    assert doc["ledger"]["backend"] == "sqlite"


def test_says_where_it_looked_when_there_is_no_ledger(tmp_path: Path) -> None:
    result = run("--state-dir", str(tmp_path / "nothing"))
    assert result.exit_code == 1
    assert "no spend ledger at" in result.output and "nothing" in result.output
    assert not (tmp_path / "nothing").exists()  # looking created nothing


def test_prints_the_fleets_ledger_and_shared_budget_from_redis(redis_server: RedisServer) -> None:
    async def write() -> None:
        link = RedisLink(redis_server.url, timeout=10.0, prefix="fleet")  # not about timeouts
        await RedisLedger(link, retention_seconds=86400).append(records())
        store = RedisBudgetStore(link, 2_000_000, 3600)
        await store.commit(await store.reserve(300_000))
        await store.flush(5)
        await link.aclose()

    asyncio.run(write())
    result = run(
        "--redis-url", redis_server.url, "--redis-prefix", "fleet", "--redis-timeout", "10",
        "--budget-usd", "2", "--budget-window", "1h",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 paid calls" in result.output
    assert "Budget: 0.300000 of 2.000000 used (15%), 1.700000 left per 1h" in result.output
    assert "(shared by the fleet)" in result.output


def test_an_unreachable_redis_is_an_error_not_a_traceback(redis_server: RedisServer) -> None:
    redis_server.stop()
    result = run("--redis-url", redis_server.url, "--redis-timeout", "0.5")
    assert result.exit_code == 1
    assert "cannot read the spend ledger" in result.output
    assert "Traceback" not in result.output
