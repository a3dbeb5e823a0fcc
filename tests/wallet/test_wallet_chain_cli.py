"""``wallet balance`` and ``wallet approve-permit2`` against the fake JSON-RPC node.

The CLI runs its own event loop (``asyncio.run``), so it is invoked in a worker thread
while the fake node serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from click.testing import CliRunner, Result

from blockrun_proxy.cli import main
from blockrun_proxy.evm_rpc import EvmRpc
from blockrun_proxy.testing import FakeRpc, UsdcLedger
from blockrun_proxy.wallet.approve import (
    MAX_APPROVE_ATOMIC,
    ApprovalRefused,
    plan_approval,
    send_approval,
)
from blockrun_proxy.x402 import NETWORKS, PERMIT2_ADDRESS, Signer

SEPOLIA = NETWORKS["eip155:84532"]
SECRET_PATH = "v2/s3cr3t-api-key"


@pytest.fixture
async def node() -> AsyncIterator[FakeRpc]:
    async with FakeRpc(UsdcLedger(SEPOLIA.caip2)) as fake:
        yield fake


@pytest.fixture
def owner(wallet_key: str) -> str:
    return Signer(wallet_key).address


async def cli(node: FakeRpc, key: str | None, *args: str, stdin: str | None = None) -> Result:
    assert node.url is not None
    env = {
        "BLOCKRUN_WALLET_KEY": key or "",
        "BLOCKRUN_PROXY_RPC_URL": node.url + SECRET_PATH,
        "BLOCKRUN_PROXY_NETWORKS": SEPOLIA.caip2,
    }
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, main, ["wallet", *args], input=stdin, env=env)
    assert "Traceback" not in result.output
    assert SECRET_PATH not in result.output
    if key:
        assert key not in result.output and key[2:] not in result.output
    return result


async def test_balance_shows_usdc_allowance_and_gas(
    node: FakeRpc, wallet_key: str, owner: str
) -> None:
    node.ledger.fund(owner, usdc=12_345_678, eth=3 * 10**15)
    node.ledger.approve(owner, PERMIT2_ADDRESS, 2_000_000)
    result = await cli(node, wallet_key, "balance")
    assert result.exit_code == 0, result.output
    assert owner in result.output and "Base Sepolia" in result.output
    assert "12.345678" in result.output
    assert "Permit2 allowance: 2.000000" in result.output
    assert "0.003000" in result.output


async def test_balance_of_another_address_needs_no_key(node: FakeRpc) -> None:
    other = "0x" + "ab" * 20
    node.ledger.fund(other, usdc=1)
    result = await cli(node, None, "balance", "--address", other)
    assert result.exit_code == 0, result.output
    assert "0.000001" in result.output


async def test_balance_refuses_an_endpoint_on_another_chain(node: FakeRpc, wallet_key: str) -> None:
    result = await cli(node, wallet_key, "balance", "--network", "eip155:8453")
    assert result.exit_code == 1
    assert "serves chain 84532, not Base (8453)" in result.output


async def test_balance_with_the_node_down_is_one_clean_line(node: FakeRpc, wallet_key: str) -> None:
    node.misbehave.http_error_next = 10
    result = await cli(node, wallet_key, "balance")
    assert result.exit_code == 1
    assert "HTTP 503" in result.output


async def test_no_wallet_is_a_clear_error(node: FakeRpc) -> None:
    result = await cli(node, None, "balance")
    assert result.exit_code == 1 and "wallet create" in result.output


async def test_approve_sends_one_bounded_approval(
    node: FakeRpc, wallet_key: str, owner: str
) -> None:
    node.ledger.fund(owner, eth=10**15)
    result = await cli(node, wallet_key, "approve-permit2", "--amount-usd", "25.5", "--yes")
    assert result.exit_code == 0, result.output
    assert node.ledger.allowance(owner, PERMIT2_ADDRESS) == 25_500_000
    assert "Permit2 allowance now: 25.500000" in result.output
    (tx,) = node.transactions
    assert tx["from"] == owner and tx["hash"] in result.output
    assert tx["chainId"] == SEPOLIA.chain_id and tx["to"].lower() == SEPOLIA.usdc.lower()
    assert tx["gas"] == 70_000 and tx["maxFeePerGas"] <= 2 * node.gas_price


async def test_approve_replaces_rather_than_adds(
    node: FakeRpc, wallet_key: str, owner: str
) -> None:
    node.ledger.fund(owner, eth=10**15)
    node.ledger.approve(owner, PERMIT2_ADDRESS, 9_000_000)
    result = await cli(node, wallet_key, "approve-permit2", "--amount-usd", "1", "--yes")
    assert result.exit_code == 0, result.output
    assert node.ledger.allowance(owner, PERMIT2_ADDRESS) == 1_000_000


async def test_approve_asks_first(node: FakeRpc, wallet_key: str, owner: str) -> None:
    node.ledger.fund(owner, eth=10**15)
    result = await cli(node, wallet_key, "approve-permit2", "--amount-usd", "5", stdin="n\n")
    assert result.exit_code == 1 and "not sent" in result.output
    assert node.transactions == []


async def test_approve_of_the_current_amount_sends_nothing(
    node: FakeRpc, wallet_key: str, owner: str
) -> None:
    node.ledger.approve(owner, PERMIT2_ADDRESS, 5_000_000)
    result = await cli(node, wallet_key, "approve-permit2", "--amount-usd", "5", "--yes")
    assert result.exit_code == 0 and "nothing to send" in result.output
    assert node.transactions == []


@pytest.mark.parametrize(
    "amount",
    ["0", "-1", "1000.000001", "1e30", str(2**256 - 1), "0.0000001", "NaN", "unlimited"],
)
async def test_approve_refuses_unbounded_or_odd_amounts(
    node: FakeRpc, wallet_key: str, owner: str, amount: str
) -> None:
    node.ledger.fund(owner, eth=10**15)
    result = await cli(node, wallet_key, "approve-permit2", "--amount-usd", amount, "--yes")
    assert result.exit_code == 2, result.output
    assert node.transactions == [] and node.calls == []


async def test_approve_without_gas_money_sends_nothing(
    node: FakeRpc, wallet_key: str, owner: str
) -> None:
    result = await cli(node, wallet_key, "approve-permit2", "--amount-usd", "5", "--yes")
    assert result.exit_code == 1 and "ETH" in result.output
    assert node.transactions == []


async def test_a_reverted_approval_is_reported(node: FakeRpc, wallet_key: str, owner: str) -> None:
    node.ledger.fund(owner, eth=10**15)
    node.misbehave.revert_next_tx = True
    result = await cli(node, wallet_key, "approve-permit2", "--amount-usd", "5", "--yes")
    assert result.exit_code == 1 and "reverted" in result.output
    assert node.ledger.allowance(owner, PERMIT2_ADDRESS) == 0


async def test_a_node_quoting_absurd_fees_is_refused(node: FakeRpc, wallet_key: str, owner: str):
    node.ledger.fund(owner, eth=10**21)
    node.gas_price = 10**12  # 1,000 gwei
    async with EvmRpc(node.url or "") as rpc:
        with pytest.raises(ApprovalRefused, match="per gas"):
            await plan_approval(rpc, SEPOLIA, owner, 1_000_000)
    assert node.transactions == []


async def test_plan_refuses_over_the_bound_without_reading_the_chain(
    node: FakeRpc, owner: str
) -> None:
    async with EvmRpc(node.url or "") as rpc:
        with pytest.raises(ApprovalRefused):
            await plan_approval(rpc, SEPOLIA, owner, MAX_APPROVE_ATOMIC + 1)
    assert node.calls == []


async def test_send_refuses_a_key_that_is_not_the_planned_owner(node: FakeRpc, owner: str) -> None:
    node.ledger.fund(owner, eth=10**15)
    async with EvmRpc(node.url or "") as rpc:
        plan = await plan_approval(rpc, SEPOLIA, owner, 1_000_000)
        with pytest.raises(ValueError, match="does not belong"):
            await send_approval(rpc, plan, "0x" + secrets.token_hex(32))
    assert node.transactions == []
