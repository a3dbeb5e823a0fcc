"""``wallet approve-permit2``: one bounded USDC ``approve(Permit2, N)``, sent through an RPC.

The upto scheme pays through Permit2, which can pull only what the wallet has approved
it for. This sends that approval once, for a bounded amount: never an unlimited one
(a Permit2 allowance is spendable by any Permit2 signature the wallet ever gives), and
never more than ``MAX_APPROVE_ATOMIC``. The amount is SET (ERC-20 approve), not added.

Planning reads the chain (chain id, current allowance, account nonce, fees, ETH for
gas) and refuses what would be wrong to send; sending signs an EIP-1559 transaction
with eth_account (imported here only: it costs about a second) and waits for its receipt.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from blockrun_proxy.evm_rpc import SELECTOR_APPROVE, EvmRpc, Receipt, RpcError
from blockrun_proxy.wallet.chain import check_chain
from blockrun_proxy.x402 import PERMIT2_ADDRESS, Network, usd
from blockrun_proxy.x402._abi import address_word, uint_word

# $1,000: far above what a sidecar's calls need between two approvals, far below
# "unlimited". Approve again (it replaces the allowance) when it runs low.
MAX_APPROVE_ATOMIC = 1_000 * 10**6
# The official x402 package's ERC20_APPROVE_GAS_LIMIT; USDC's approve uses ~40-56k.
APPROVE_GAS_LIMIT = 70_000
# A node quoting more than this per gas is broken or hostile (Base runs near 0.01 gwei):
# refuse rather than let it set the price of the transaction.
MAX_FEE_PER_GAS = 50 * 10**9
# Used when the node does not answer eth_maxPriorityFeePerGas: 0.001 gwei.
FALLBACK_PRIORITY_FEE = 10**6


class ApprovalRefused(Exception):
    """An approval that must not be sent as asked; nothing was signed."""


def check_amount(amount: int) -> None:
    """ApprovalRefused for a zero, negative or over-the-bound amount."""
    if amount <= 0:
        raise ApprovalRefused("--amount-usd must be positive")
    if amount > MAX_APPROVE_ATOMIC:
        raise ApprovalRefused(
            f"refusing to approve ${usd(amount)}: the bound is ${usd(MAX_APPROVE_ATOMIC)} "
            "(approve a smaller amount, and again when it runs low)"
        )


def approve_calldata(spender: str, amount: int) -> bytes:
    return SELECTOR_APPROVE + address_word(spender) + uint_word(amount)


def format_eth(wei: int) -> str:
    return f"{Decimal(wei).scaleb(-18):.6f}"


@dataclass(frozen=True, slots=True)
class ApprovalPlan:
    """The approval transaction as it will be signed, and the chain state it was built on."""

    network: Network
    owner: str
    amount: int  # atomic USDC Permit2 may pull afterwards
    current_allowance: int
    nonce: int
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    eth_wei: int

    @property
    def max_gas_cost_wei(self) -> int:
        return self.gas * self.max_fee_per_gas

    @property
    def needed(self) -> bool:
        """False when the allowance already is exactly ``amount``: nothing to send."""
        return self.current_allowance != self.amount

    def transaction(self) -> dict[str, Any]:
        """The EIP-1559 transaction, as eth_account's ``sign_transaction`` takes it."""
        return {
            "type": 2,
            "chainId": self.network.chain_id,
            "nonce": self.nonce,
            "to": self.network.usdc,
            "value": 0,
            "data": approve_calldata(PERMIT2_ADDRESS, self.amount),
            "gas": self.gas,
            "maxFeePerGas": self.max_fee_per_gas,
            "maxPriorityFeePerGas": self.max_priority_fee_per_gas,
        }


async def plan_approval(rpc: EvmRpc, network: Network, owner: str, amount: int) -> ApprovalPlan:
    """Read what the transaction needs; ApprovalRefused / RpcError when it must not be sent."""
    check_amount(amount)
    await check_chain(rpc, network)
    current = await rpc.allowance(network.usdc, owner, PERMIT2_ADDRESS)
    nonce = await rpc.transaction_count(owner, "pending")
    try:
        priority = await rpc.max_priority_fee()
    except RpcError:
        priority = FALLBACK_PRIORITY_FEE
    try:
        base = await rpc.next_base_fee()
    except RpcError:
        base = await rpc.gas_price()
    # Twice the base fee: still included if the base fee climbs for a few blocks.
    max_fee = 2 * base + priority
    if max_fee > MAX_FEE_PER_GAS:
        raise ApprovalRefused(
            f"{rpc.endpoint} quotes {max_fee} wei per gas, over the {MAX_FEE_PER_GAS} bound; "
            "is it the right network?"
        )
    eth = await rpc.native_balance(owner)
    plan = ApprovalPlan(
        network=network,
        owner=owner,
        amount=amount,
        current_allowance=current,
        nonce=nonce,
        gas=APPROVE_GAS_LIMIT,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=priority,
        eth_wei=eth,
    )
    if plan.needed and eth < plan.max_gas_cost_wei:
        raise ApprovalRefused(
            f"{owner} holds {format_eth(eth)} ETH on {network.name}; the approval may cost up "
            f"to {format_eth(plan.max_gas_cost_wei)} ETH in gas. Send it a little ETH first."
        )
    return plan


async def send_approval(
    rpc: EvmRpc,
    plan: ApprovalPlan,
    private_key: str,
    *,
    receipt_timeout: float = 120.0,
    poll_interval: float = 2.0,
) -> Receipt:
    """Sign ``plan`` with the wallet key, broadcast it, and wait until it is mined.

    RpcError when the node refuses it, it is not mined in time, or it reverted.
    """
    from eth_account import Account

    account = Account.from_key(private_key)
    if account.address.lower() != plan.owner.lower():
        raise ValueError("the wallet key does not belong to the planned owner")
    signed = account.sign_transaction(plan.transaction())
    raw, expected = bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()
    tx_hash = await rpc.send_raw_transaction(raw)
    if tx_hash.lower() != expected:
        raise RpcError(f"{rpc.endpoint} reported hash {tx_hash}, the transaction is {expected}")
    receipt = await rpc.wait_for_receipt(tx_hash, timeout=receipt_timeout, interval=poll_interval)
    if not receipt.succeeded:
        raise RpcError(f"the approval {tx_hash} was mined but reverted")
    return receipt
