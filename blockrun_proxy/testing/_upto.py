"""The fake gateway's upto mode: pay a ceiling, settle the cost of what was produced.

With ``FakeGateway(upto=UptoMode(ledger))`` the 402 lists the exact requirement first,
then an upto one for the same price as its ceiling (``extra.assetTransferMethod:
"permit2"``, ``extra.facilitatorAddress``), and declares the ``eip2612GasSponsoring``
extension when ``gas_sponsoring`` is set. An upto payment is judged by the OFFICIAL x402
package's upto facilitator (``UptoEvmFacilitatorScheme.verify``), run against
``FakeFacilitatorSigner``: a facilitator signer whose chain is the in-memory
``UsdcLedger`` (balances, the wallet's allowance to Permit2, EIP-2612 and Permit2
nonces), so a short allowance without a permit is ``permit2_allowance_required`` exactly
as the package decides it. Settlement goes through the package's ``settle`` too, with the
amount set to the cost of the tokens actually produced (never above the ceiling), and
``PAYMENT-RESPONSE.amount`` reports it.

The package and eth_account load on the first upto payment, and every call into them
runs in a worker thread (they are synchronous and take milliseconds): the fake's event
loop keeps serving meanwhile. The ledger's lock makes a Permit2 nonce spendable once
even when two settlements race.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blockrun_proxy.testing._ledger import PERMIT2_ADDRESS, LedgerError, UsdcLedger
from blockrun_proxy.testing._networks import NETWORKS

# A recognisable, keyless facilitator address (the witness binds settlement to it).
DEFAULT_FACILITATOR = "0x000000000000000000000000000000000000FaC1"
EIP2612_GAS_SPONSORING_KEY = "eip2612GasSponsoring"
# A stand-in for the bytecode at the USDC address: the verifier checks the asset is a contract.
_CONTRACT_CODE = bytes.fromhex("6080604052")


@dataclass
class UptoMode:
    """The fake gateway's upto settings; mutable between calls like ``Misbehavior``."""

    ledger: UsdcLedger
    facilitator: str = DEFAULT_FACILITATOR
    gas_sponsoring: bool = False
    only_upto: bool = False  # list upto alone (no exact requirement)
    # Hostile shaping: merged into the upto requirement's ``extra`` (a None value deletes).
    extra_overrides: dict[str, Any] = field(default_factory=dict)
    # A lying gateway: report this in PAYMENT-RESPONSE.amount whatever was settled.
    reported_amount: int | None = None
    # Demos and benchmarks: a payer the ledger has never seen gets this much USDC and a
    # Permit2 allowance of the same on its first payment (0: nobody is funded).
    auto_fund: int = 0


def upto_requirement(exact: Mapping[str, Any], mode: UptoMode) -> dict[str, Any]:
    """The upto entry of ``accepts``, built from the exact one (same price: the ceiling)."""
    extra: dict[str, Any] = {
        **exact.get("extra", {}),
        "assetTransferMethod": "permit2",
        "facilitatorAddress": mode.facilitator,
    }
    for key, value in mode.extra_overrides.items():
        if value is None:
            extra.pop(key, None)
        else:
            extra[key] = value
    return {**exact, "scheme": "upto", "extra": extra}


def declared_extensions(mode: UptoMode) -> dict[str, Any] | None:
    """The 402's ``extensions``: the gas-sponsoring declaration, when enabled."""
    if not mode.gas_sponsoring:
        return None
    from x402.extensions.eip2612_gas_sponsoring import declare_eip2612_gas_sponsoring_extension

    return declare_eip2612_gas_sponsoring_extension()


def is_upto_payment(payment: Mapping[str, Any] | None) -> bool:
    accepted = (payment or {}).get("accepted")
    return isinstance(accepted, Mapping) and accepted.get("scheme") == "upto"


class UptoOutcome(enum.Enum):
    ACCEPTED = "accepted"
    INVALID = "invalid"
    REPLAY = "replay"


@dataclass(frozen=True)
class UptoVerdict:
    outcome: UptoOutcome
    reason: str | None = None
    payer: str = ""
    nonce: int | None = None  # the Permit2 nonce
    ceiling: int = 0


def verify_upto(
    mode: UptoMode, payment: Mapping[str, Any], requirement: Mapping[str, Any]
) -> UptoVerdict:
    """Judge an upto payment against this request's own upto requirement (synchronous).

    The ``accepted`` requirement must match ours field for field (``extra`` as a subset,
    as the official resource server matches it); then the official facilitator verifies.
    """
    from pydantic import ValidationError
    from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme
    from x402.schemas import PaymentPayload, PaymentRequirements

    mismatch = _requirement_mismatch(payment.get("accepted"), requirement)
    if mismatch is not None:
        return UptoVerdict(UptoOutcome.INVALID, mismatch)
    try:
        payload = PaymentPayload.model_validate(dict(payment))
        required = PaymentRequirements.model_validate(dict(requirement))
    except ValidationError as exc:
        return UptoVerdict(UptoOutcome.INVALID, f"invalid_payload: {exc.error_count()} error(s)")
    auth = payload.payload.get("permit2Authorization")
    auth = auth if isinstance(auth, dict) else {}
    payer, nonce = str(auth.get("from", "")), _int(auth.get("nonce"))
    _auto_fund(mode, payer)
    if nonce is not None and (payer.lower(), nonce) in mode.ledger.permit2_nonces_used:
        return UptoVerdict(UptoOutcome.REPLAY, "Permit2 nonce already used", payer, nonce)
    facilitator = UptoEvmFacilitatorScheme(FakeFacilitatorSigner(mode))
    result = facilitator.verify(payload, required)
    if not result.is_valid:
        return UptoVerdict(UptoOutcome.INVALID, result.invalid_reason, payer, nonce)
    return UptoVerdict(UptoOutcome.ACCEPTED, None, payer, nonce, int(required.amount))


def settle_upto(
    mode: UptoMode, payment: Mapping[str, Any], requirement: Mapping[str, Any], actual: int
) -> dict[str, Any]:
    """Settle ``actual`` (<= the ceiling) through the official facilitator; the receipt JSON."""
    from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme
    from x402.schemas import PaymentPayload, PaymentRequirements

    payload = PaymentPayload.model_validate(dict(payment))
    required = PaymentRequirements.model_validate({**requirement, "amount": str(actual)})
    response = UptoEvmFacilitatorScheme(FakeFacilitatorSigner(mode)).settle(payload, required)
    receipt: dict[str, Any] = {
        "success": response.success,
        "transaction": response.transaction,
        "network": response.network,
        "payer": response.payer,
    }
    if response.success:
        receipt["amount"] = response.amount
    else:
        receipt["errorReason"] = response.error_reason
    return receipt


def _auto_fund(mode: UptoMode, payer: str) -> None:
    ledger = mode.ledger
    if mode.auto_fund <= 0 or len(payer) != 42:
        return
    with ledger.lock:
        if payer.lower() not in ledger.balances:
            ledger.fund(payer, usdc=mode.auto_fund)
            ledger.approve(payer, PERMIT2_ADDRESS, mode.auto_fund)


def _requirement_mismatch(accepted: object, ours: Mapping[str, Any]) -> str | None:
    if not isinstance(accepted, Mapping):
        return "payment lacks an accepted requirement"
    for key in ("scheme", "network", "amount", "payTo", "maxTimeoutSeconds"):
        if str(accepted.get(key)) != str(ours.get(key)):
            return f"accepted.{key} {accepted.get(key)!r} does not match {ours.get(key)!r}"
    if str(accepted.get("asset", "")).lower() != str(ours.get("asset", "")).lower():
        return f"accepted.asset {accepted.get('asset')!r} does not match {ours.get('asset')!r}"
    extra = accepted.get("extra")
    extra = extra if isinstance(extra, Mapping) else {}
    for key, value in ours.get("extra", {}).items():
        if extra.get(key) != value:
            return f"accepted.extra.{key} {extra.get(key)!r} does not match {value!r}"
    return None


def _int(value: object) -> int | None:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


class FakeFacilitatorSigner:
    """The official package's ``FacilitatorEvmSigner``, over the in-memory ledger.

    Reads answer from the ledger; ``settle`` / ``settleWithPermit`` are simulated by
    ``read_contract`` (raising the revert the contracts would) and executed by
    ``write_contract``. The payer is an EOA (no code); USDC has code.
    """

    def __init__(self, mode: UptoMode) -> None:
        self.mode = mode
        self.ledger = mode.ledger

    def get_addresses(self) -> list[str]:
        return [self.mode.facilitator]

    def get_chain_id(self) -> int:
        return self.ledger.chain_id

    def get_code(self, address: str) -> bytes:
        return _CONTRACT_CODE if address.lower() == self.ledger.usdc.lower() else b""

    def get_balance(self, address: str, token_address: str) -> int:
        return self.ledger.balance_of(address)

    def read_contract(self, address: str, abi: Any, function_name: str, *args: Any) -> Any:
        ledger = self.ledger
        if function_name == "balanceOf":
            return ledger.balance_of(args[0])
        if function_name == "allowance":
            return ledger.allowance(args[0], args[1])
        if function_name == "nonces":
            return ledger.permit_nonce(args[0])
        if function_name == "settle":
            self._check_settle(*args)
            return None
        if function_name == "settleWithPermit":
            self._check_settle_with_permit(*args)
            return None
        raise LedgerError(f"unsupported call {function_name}")

    def write_contract(
        self,
        address: str,
        abi: Any,
        function_name: str,
        *args: Any,
        data_suffix: str | None = None,
    ) -> str:
        ledger = self.ledger
        with ledger.lock:  # one transaction: it applies whole or not at all
            if function_name == "settle":
                permit, amount, owner, witness, _signature = args
                self._check_settle(*args)
            elif function_name == "settleWithPermit":
                permit2612, permit, amount, owner, witness, _signature = args
                self._check_settle_with_permit(*args)
                value, deadline = permit2612[0], permit2612[1]
                nonce = ledger.permit_nonce(owner)
                ledger.apply_permit(
                    owner, PERMIT2_ADDRESS, value, nonce, deadline, int(time.time())
                )
            else:
                raise LedgerError(f"unsupported call {function_name}")
            return ledger.permit2_pull(owner, witness[0], amount, permit[1]).transaction_hash

    def wait_for_transaction_receipt(self, tx_hash: str) -> Any:
        from x402.mechanisms.evm.types import TransactionReceipt

        receipt = self.ledger.receipts[tx_hash.lower()]
        return TransactionReceipt(
            status=receipt.status, block_number=receipt.block_number, tx_hash=tx_hash
        )

    def verify_typed_data(self, *args: Any) -> bool:
        raise NotImplementedError("the strict verifier recovers EOA signatures itself")

    def send_transaction(self, to: str, data: bytes) -> str:
        raise NotImplementedError("the fake facilitator only settles")

    # ------------------------------------------------------------------ contracts

    def _check_settle(
        self, permit: Any, amount: int, owner: str, witness: Any, signature: bytes
    ) -> None:
        """x402UptoPermit2Proxy.settle's checks, then Permit2's transfer checks."""
        (_token, permitted), nonce, _deadline = permit
        if witness[1].lower() != self.mode.facilitator.lower():
            raise LedgerError("UnauthorizedFacilitator")
        if amount > permitted:
            raise LedgerError("AmountExceedsPermitted")
        with self.ledger.lock:
            self.ledger.check_permit2_pull(owner, amount, nonce)

    def _check_settle_with_permit(
        self,
        permit2612: Any,
        permit: Any,
        amount: int,
        owner: str,
        witness: Any,
        signature: bytes,
    ) -> None:
        """settleWithPermit: the EIP-2612 permit (value == permitted, signed by the owner)."""
        value, deadline, r, s, v = permit2612
        (_token, permitted), nonce, _deadline = permit
        if value != permitted:
            raise LedgerError("Permit2612AmountMismatch")
        ledger = self.ledger
        signer = _recover_permit(
            self.ledger.network, owner, value, ledger.permit_nonce(owner), deadline, r, s, v
        )
        if signer.lower() != owner.lower():
            raise LedgerError("EIP2612: invalid signature")
        if witness[1].lower() != self.mode.facilitator.lower():
            raise LedgerError("UnauthorizedFacilitator")
        if amount > permitted:
            raise LedgerError("AmountExceedsPermitted")
        with ledger.lock:
            if (owner.lower(), nonce) in ledger.permit2_nonces_used:
                raise LedgerError("InvalidNonce")
            if ledger.balance_of(owner) < amount:
                raise LedgerError("TRANSFER_FROM_FAILED: balance")


def _recover_permit(
    network: str, owner: str, value: int, nonce: int, deadline: int, r: bytes, s: bytes, v: int
) -> str:
    """Who signed ``permit(owner, Permit2, value, nonce, deadline)`` under the USDC domain."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    table = NETWORKS[network]
    domain = {
        "name": table.domain_name,
        "version": table.domain_version,
        "chainId": table.chain_id,
        "verifyingContract": table.usdc,
    }
    types = {
        "Permit": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "nonce", "type": "uint256"},
            {"name": "deadline", "type": "uint256"},
        ]
    }
    message = {
        "owner": owner,
        "spender": PERMIT2_ADDRESS,
        "value": value,
        "nonce": nonce,
        "deadline": deadline,
    }
    signable = encode_typed_data(domain, types, message)
    try:
        return str(Account.recover_message(signable, signature=bytes(r) + bytes(s) + bytes([v])))
    except Exception:  # eth_account raises several unrelated types for a bad signature
        return ""
