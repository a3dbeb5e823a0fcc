"""An in-memory USDC token (and the ETH that pays gas) for the fake RPC and the fake facilitator.

It keeps what the chain would: balances, ``allowance(owner, spender)``, EIP-2612
``nonces(owner)``, account nonces, the Permit2 nonces already spent, and receipts. The
fake JSON-RPC server (``_rpc.py``) reads it and applies signed ``approve`` transactions;
the fake gateway's upto facilitator (``_upto.py``) settles Permit2 transfers against it,
so an ``approve-permit2`` sent to the fake RPC is what lets the fake gateway's verifier
accept an upto payment, as on chain.

The facilitator runs the official x402 verifier in a worker thread, so every mutation
takes ``lock``. Addresses are keys in lower case. Errors carry the revert reason a
contract would give.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field

from blockrun_proxy.testing._networks import NETWORKS

PERMIT2_ADDRESS = "0x000000000022D473030F116dDEE9F6B43aC78BA3"


class LedgerError(Exception):
    """A transfer or approval the token would revert; ``reason`` names the revert."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LedgerReceipt:
    transaction_hash: str
    block_number: int
    status: int  # 1 success, 0 reverted
    gas_used: int
    sender: str
    description: str


@dataclass(frozen=True)
class Permit2Transfer:
    """One settled Permit2 transfer (an upto settlement)."""

    owner: str
    to: str
    amount: int
    nonce: int
    transaction_hash: str


@dataclass
class UsdcLedger:
    network: str = "eip155:84532"
    balances: dict[str, int] = field(default_factory=dict)
    eth: dict[str, int] = field(default_factory=dict)
    allowances: dict[tuple[str, str], int] = field(default_factory=dict)
    permit_nonces: dict[str, int] = field(default_factory=dict)
    account_nonces: dict[str, int] = field(default_factory=dict)
    permit2_nonces_used: set[tuple[str, int]] = field(default_factory=set)
    receipts: dict[str, LedgerReceipt] = field(default_factory=dict)
    transfers: list[Permit2Transfer] = field(default_factory=list)
    block: int = 1_000
    # Re-entrant: a settlement holds it across its checks and its transfer.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _tx_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}")

    @property
    def chain_id(self) -> int:
        return NETWORKS[self.network].chain_id

    @property
    def usdc(self) -> str:
        return NETWORKS[self.network].usdc

    # -------------------------------------------------------------------- reads

    def balance_of(self, owner: str) -> int:
        return self.balances.get(owner.lower(), 0)

    def allowance(self, owner: str, spender: str) -> int:
        return self.allowances.get((owner.lower(), spender.lower()), 0)

    def permit_nonce(self, owner: str) -> int:
        return self.permit_nonces.get(owner.lower(), 0)

    def account_nonce(self, address: str) -> int:
        return self.account_nonces.get(address.lower(), 0)

    def eth_balance(self, address: str) -> int:
        return self.eth.get(address.lower(), 0)

    # ---------------------------------------------------------------- mutations

    def fund(self, address: str, *, usdc: int = 0, eth: int = 0) -> None:
        """Give ``address`` USDC (atomic units) and ETH (wei): the tests' faucet."""
        with self.lock:
            key = address.lower()
            self.balances[key] = self.balances.get(key, 0) + usdc
            self.eth[key] = self.eth.get(key, 0) + eth

    def approve(self, owner: str, spender: str, value: int) -> None:
        """``approve`` as an ERC-20 does it: the allowance is SET, not added to."""
        with self.lock:
            self.allowances[(owner.lower(), spender.lower())] = value

    def apply_permit(
        self, owner: str, spender: str, value: int, nonce: int, deadline: int, now: int
    ) -> None:
        """An EIP-2612 ``permit`` whose signature the caller has verified."""
        with self.lock:
            if deadline < now:
                raise LedgerError("FiatTokenV2: permit is expired")
            if nonce != self.permit_nonces.get(owner.lower(), 0):
                raise LedgerError("EIP2612: invalid signature")  # USDC's wording for a bad nonce
            self.permit_nonces[owner.lower()] = nonce + 1
            self.allowances[(owner.lower(), spender.lower())] = value

    def check_permit2_pull(self, owner: str, amount: int, nonce: int) -> None:
        """Raise the revert a Permit2 ``permitWitnessTransferFrom`` of ``amount`` would hit."""
        key = owner.lower()
        if (key, nonce) in self.permit2_nonces_used:
            raise LedgerError("InvalidNonce")
        if self.allowances.get((key, PERMIT2_ADDRESS.lower()), 0) < amount:
            raise LedgerError("TRANSFER_FROM_FAILED: allowance")
        if self.balances.get(key, 0) < amount:
            raise LedgerError("TRANSFER_FROM_FAILED: balance")

    def permit2_pull(self, owner: str, to: str, amount: int, nonce: int) -> Permit2Transfer:
        """Move ``amount`` from ``owner`` to ``to`` through Permit2, spending ``nonce``."""
        with self.lock:
            self.check_permit2_pull(owner, amount, nonce)
            key, payee = owner.lower(), to.lower()
            self.permit2_nonces_used.add((key, nonce))
            self.allowances[(key, PERMIT2_ADDRESS.lower())] -= amount
            self.balances[key] -= amount
            self.balances[payee] = self.balances.get(payee, 0) + amount
            tx = self._receipt(owner, f"permit2 {amount} to {to}", status=1, gas_used=90_000)
            transfer = Permit2Transfer(owner, to, amount, nonce, tx.transaction_hash)
            self.transfers.append(transfer)
            return transfer

    def record_transaction(
        self, sender: str, description: str, *, status: int, gas_used: int, tx_hash: str | None
    ) -> LedgerReceipt:
        """Mine a transaction from ``sender``: its account nonce moves on, a receipt is kept."""
        with self.lock:
            key = sender.lower()
            self.account_nonces[key] = self.account_nonces.get(key, 0) + 1
            return self._receipt(sender, description, status=status, gas_used=gas_used, tx=tx_hash)

    def _receipt(
        self, sender: str, description: str, *, status: int, gas_used: int, tx: str | None = None
    ) -> LedgerReceipt:
        self.block += 1
        if tx is None:
            seed = f"fake-tx-{next(self._tx_ids)}-{description}".encode()
            tx = "0x" + hashlib.sha256(seed).hexdigest()
        receipt = LedgerReceipt(tx, self.block, status, gas_used, sender, description)
        self.receipts[tx.lower()] = receipt
        return receipt
