"""``BalanceWatcher``: background reads, reads on demand, the low-balance flag, failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from decimal import Decimal

import pytest

from blockrun_proxy.config import Settings
from blockrun_proxy.evm_rpc import EvmRpc, RpcError
from blockrun_proxy.testing import FakeRpc, UsdcLedger
from blockrun_proxy.wallet.watcher import BalanceWatcher, watching
from blockrun_proxy.x402 import NETWORKS, Signer

WALLET = "0x1111111111111111111111111111111111111111"


class Chain:
    """A balance the test moves, read through the watcher's callable."""

    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.reads = 0
        self.fail = False

    async def read(self) -> int:
        self.reads += 1
        if self.fail:
            raise RpcError("eth_call to https://rpc.example: timed out")
        return self.balance


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def test_first_read_at_start_then_on_interval() -> None:
    chain = Chain(5_000_000)
    async with BalanceWatcher(chain.read, interval=0.05, min_gap=0) as watcher:
        await until(lambda: watcher.latest is not None)
        assert watcher.latest is not None and watcher.latest.atomic == 5_000_000
        assert watcher.latest.usd == "5.000000"
        await until(lambda: chain.reads >= 3)
    reads = chain.reads
    await asyncio.sleep(0.1)
    assert chain.reads == reads  # stopped means stopped


async def test_refresh_requests_read_soon_and_bursts_coalesce() -> None:
    chain = Chain(1)
    async with BalanceWatcher(chain.read, interval=60, min_gap=0.2) as watcher:
        await until(lambda: chain.reads == 1)
        for _ in range(50):  # fifty paid calls in a burst
            watcher.request_refresh()
        await until(lambda: chain.reads == 2, timeout=1.0)
        await asyncio.sleep(0.3)
        assert chain.reads == 2  # one read for the burst, not fifty


async def test_low_balance_warns_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain(10_000_000)
    watcher = BalanceWatcher(chain.read, low_balance=2_000_000)
    caplog.set_level(logging.INFO, logger="blockrun_proxy.wallet.watcher")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    await watcher.refresh()
    assert not watcher.low and warnings() == []
    chain.balance = 1_999_999
    await watcher.refresh()
    await watcher.refresh()
    assert watcher.low
    assert warnings() == [
        "wallet balance $1.999999 is below --low-balance-usd $2.000000: fund the wallet soon"
    ]
    chain.balance = 3_000_000
    await watcher.refresh()
    assert not watcher.low
    chain.balance = 0
    await watcher.refresh()
    assert watcher.low and len(warnings()) == 2


async def test_no_threshold_is_never_low() -> None:
    watcher = BalanceWatcher(Chain(0).read)
    await watcher.refresh()
    assert not watcher.low
    assert watcher.snapshot()["low_balance_usd"] is None


async def test_a_failed_read_keeps_the_last_good_one_and_the_loop_goes_on() -> None:
    now = [100.0]
    chain = Chain(7)
    watcher = BalanceWatcher(chain.read, interval=0.02, min_gap=0, clock=lambda: now[0])
    await watcher.refresh()
    chain.fail = True
    now[0] = 130.0
    with pytest.raises(RpcError):
        await watcher.refresh()
    assert watcher.latest is not None and watcher.latest.atomic == 7
    assert watcher.age() == 30.0
    snapshot = watcher.snapshot()
    assert snapshot["usdc"] == "0.000007" and snapshot["age_seconds"] == 30.0
    assert snapshot["failures"] == 1 and "timed out" in snapshot["last_error"]
    async with watcher:
        await until(lambda: watcher.failures >= 3)
        chain.fail = False
        await until(lambda: watcher.last_error is None)


async def test_before_the_first_read() -> None:
    watcher = BalanceWatcher(Chain(1).read)
    assert watcher.latest is None and watcher.age() is None
    assert watcher.snapshot()["usdc"] is None


def test_bad_timing_is_refused() -> None:
    with pytest.raises(ValueError):
        BalanceWatcher(Chain(1).read, interval=0)


async def test_for_wallet_reads_usdc_through_the_rpc() -> None:
    ledger = UsdcLedger("eip155:84532")
    ledger.fund(WALLET, usdc=4_200_000)
    async with FakeRpc(ledger) as node:
        assert node.url is not None
        async with EvmRpc(node.url) as rpc:
            watcher = BalanceWatcher.for_wallet(
                rpc, NETWORKS["eip155:84532"], WALLET, low_balance=5_000_000
            )
            reading = await watcher.refresh()
    assert reading.atomic == 4_200_000 and watcher.low


async def test_watching_follows_the_settings(wallet_key: str) -> None:
    ledger = UsdcLedger("eip155:84532")
    ledger.fund(Signer(wallet_key).address, usdc=1_000_000)
    async with FakeRpc(ledger) as node:
        settings = Settings(
            networks=("eip155:84532",),
            wallet_key=wallet_key,
            rpc_url=node.url,
            low_balance_usd=Decimal("2"),
        )
        async with watching(settings) as watcher:
            assert watcher is not None
            await until(lambda: watcher.latest is not None)
            assert watcher.latest is not None and watcher.latest.atomic == 1_000_000
            assert watcher.low
        for quiet in (Settings(wallet_key=wallet_key), Settings(rpc_url=node.url)):
            async with watching(quiet) as nothing:
                assert nothing is None
