"""The exact scheme's Solana transaction: planned, built, audited, then signed.

Built exactly as the official ``x402`` package's SVM client builds it
(``x402/mechanisms/svm/exact/client.py``, 2.25), so its facilitator accepts it and,
for the same inputs, the bytes are identical (tests/x402/test_svm_official.py):

    0. ComputeBudget SetComputeUnitLimit(20_000)
    1. ComputeBudget SetComputeUnitPrice(1 micro-lamport)
    2. SPL Token TransferChecked(amount, decimals): our USDC associated token account
       -> payTo's, authority = us
    3. Memo: the 402's ``extra.memo`` when it sets one, else 16 random bytes as hex
       (the official client's nonce: two calls for the same amount in the same blockhash
       window are still two distinct transactions)

compiled as a v0 message with fee payer = ``extra.feePayer`` (the facilitator pays the
fee and signs slot 0 later) and no address lookup tables; we sign slot 1.

Before the key is used, ``audit_message`` reads the compiled message back and checks
it says exactly the plan and nothing else: eight accounts, the only writable ones the
fee payer and the two token accounts, our key a read-only signer, four instructions
with exactly the planned data. The audit is what makes "the proxy signs nothing but
this transfer" a checked fact rather than a property of the builder.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..refusal import Refusal
from ._base58 import is_pubkey
from .networks import (
    ASSOCIATED_TOKEN_PROGRAM,
    COMPUTE_BUDGET_PROGRAM,
    MEMO_PROGRAM,
    SolanaNetwork,
)

if TYPE_CHECKING:
    from solders.instruction import Instruction
    from solders.message import MessageV0
    from solders.pubkey import Pubkey
    from solders.transaction import VersionedTransaction

    from .signer import SolanaSigner

# The official client's values (x402 mechanisms/svm/constants.py). The facilitator pays
# the fee, so these cost us nothing; the audit still bounds them.
COMPUTE_UNIT_LIMIT = 20_000
COMPUTE_UNIT_PRICE_MICROLAMPORTS = 1
MAX_COMPUTE_UNIT_LIMIT = 200_000
MAX_COMPUTE_UNIT_PRICE_MICROLAMPORTS = 5_000_000  # the official verifier's ceiling
MAX_MEMO_BYTES = 256
MEMO_NONCE_BYTES = 16
U64_MAX = (1 << 64) - 1
# Instruction discriminators: ComputeBudget (2 = unit limit, 3 = unit price), SPL Token
# (12 = TransferChecked).
_SET_COMPUTE_UNIT_LIMIT = 2
_SET_COMPUTE_UNIT_PRICE = 3
_TRANSFER_CHECKED = 12
# A v0 message is signed with its version prefix byte.
_V0_PREFIX = b"\x80"


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """Everything the transaction will say, decided (and policy-checked) before building."""

    network: SolanaNetwork
    payer: str  # our address: the token authority, signer in slot 1
    fee_payer: str  # the facilitator's, signer in slot 0
    pay_to: str
    amount: int  # atomic units
    memo: bytes
    blockhash: str
    compute_unit_limit: int = COMPUTE_UNIT_LIMIT
    compute_unit_price: int = COMPUTE_UNIT_PRICE_MICROLAMPORTS


def new_memo() -> bytes:
    """The official client's nonce memo: 16 random bytes, hex-encoded."""
    return secrets.token_hex(MEMO_NONCE_BYTES).encode("ascii")


@functools.lru_cache(maxsize=256)
def associated_token_account(owner: str, mint: str, token_program: str) -> str:
    """The ATA of ``owner`` for ``mint``: PDA of [owner, token program, mint].

    Cached: our own ATA is the same for every payment, and payTo is usually one
    address; bounded because payTo comes from the gateway.
    """
    from solders.pubkey import Pubkey

    ata, _bump = Pubkey.find_program_address(
        [bytes(_pk(owner)), bytes(_pk(token_program)), bytes(_pk(mint))],
        _pk(ASSOCIATED_TOKEN_PROGRAM),
    )
    return str(ata)


def build_message(plan: TransferPlan) -> MessageV0:
    """The v0 message of ``plan``, compiled as the official client compiles it."""
    from solders.hash import Hash
    from solders.message import MessageV0

    return MessageV0.try_compile(
        payer=_pk(plan.fee_payer),
        instructions=_instructions(plan),
        address_lookup_table_accounts=[],
        recent_blockhash=Hash.from_string(plan.blockhash),
    )


def _instructions(plan: TransferPlan) -> list[Instruction]:
    from solders.instruction import AccountMeta, Instruction

    network = plan.network
    token_program = network.token_program
    source = associated_token_account(plan.payer, network.usdc_mint, token_program)
    destination = associated_token_account(plan.pay_to, network.usdc_mint, token_program)
    compute_budget = _pk(COMPUTE_BUDGET_PROGRAM)
    return [
        Instruction(compute_budget, _unit_limit_data(plan.compute_unit_limit), []),
        Instruction(compute_budget, _unit_price_data(plan.compute_unit_price), []),
        Instruction(
            _pk(token_program),
            _transfer_data(plan.amount, network.decimals),
            [
                AccountMeta(_pk(source), is_signer=False, is_writable=True),
                AccountMeta(_pk(network.usdc_mint), is_signer=False, is_writable=False),
                AccountMeta(_pk(destination), is_signer=False, is_writable=True),
                AccountMeta(_pk(plan.payer), is_signer=True, is_writable=False),
            ],
        ),
        Instruction(_pk(MEMO_PROGRAM), plan.memo, []),
    ]


def audit_message(message: MessageV0, plan: TransferPlan) -> None:
    """Refusal (``transaction_mismatch``) unless ``message`` says exactly ``plan``."""
    network = plan.network
    source = associated_token_account(plan.payer, network.usdc_mint, network.token_program)
    destination = associated_token_account(plan.pay_to, network.usdc_mint, network.token_program)
    keys = [str(k) for k in message.account_keys]
    header = message.header
    n_readonly = header.num_readonly_unsigned_accounts
    _expect(list(message.address_table_lookups) == [], "uses address lookup tables")
    _expect(len(keys) == 8 and len(set(keys)) == 8, "does not have 8 distinct accounts")
    _expect(keys[:2] == [plan.fee_payer, plan.payer], "has other signers than planned")
    _expect(
        header.num_required_signatures == 2 and header.num_readonly_signed_accounts == 1,
        "has other signer slots than the fee payer's and ours (read-only)",
    )
    _expect(
        n_readonly == 4 and set(keys[2 : len(keys) - n_readonly]) == {source, destination},
        "makes other accounts writable than the two token accounts",
    )
    _expect(
        set(keys[-n_readonly:])
        == {network.usdc_mint, COMPUTE_BUDGET_PROGRAM, network.token_program, MEMO_PROGRAM},
        "has other read-only accounts than the mint and the three programs",
    )
    _expect(str(message.recent_blockhash) == plan.blockhash, "has another blockhash")
    _check_bounds(plan)
    index = {key: i for i, key in enumerate(keys)}
    expected = [
        (COMPUTE_BUDGET_PROGRAM, [], _unit_limit_data(plan.compute_unit_limit)),
        (COMPUTE_BUDGET_PROGRAM, [], _unit_price_data(plan.compute_unit_price)),
        (
            network.token_program,
            [index[source], index[network.usdc_mint], index[destination], index[plan.payer]],
            _transfer_data(plan.amount, network.decimals),
        ),
        (MEMO_PROGRAM, [], plan.memo),
    ]
    actual = [
        (keys[ix.program_id_index], list(ix.accounts), bytes(ix.data))
        for ix in message.instructions
    ]
    _expect(actual == expected, "has other instructions than the planned four")


def sign_transfer(signer: SolanaSigner, plan: TransferPlan) -> VersionedTransaction:
    """Build, audit, then sign ``plan``: our signature in slot 1, slot 0 left for the fee payer."""
    from solders.signature import Signature
    from solders.transaction import VersionedTransaction

    _check_plan(plan, signer.address)
    message = build_message(plan)
    audit_message(message, plan)
    signature = signer.sign_message(_V0_PREFIX + bytes(message))
    return VersionedTransaction.populate(message, [Signature.default(), signature])


def _check_plan(plan: TransferPlan, signer_address: str) -> None:
    """What the instruction encodings need to be true (the policy checked it first)."""
    _expect(plan.payer == signer_address, "is not paid from this signer's account")
    _expect(
        all(is_pubkey(a) for a in (plan.payer, plan.fee_payer, plan.pay_to, plan.blockhash)),
        "names an account or blockhash that is not 32 bytes of base58",
    )
    _check_bounds(plan)


def _check_bounds(plan: TransferPlan) -> None:
    _expect(0 < plan.amount <= U64_MAX, "has an amount outside 1..2^64-1")
    _expect(len(plan.memo) <= MAX_MEMO_BYTES, "has a memo over 256 bytes")
    _expect(
        1 <= plan.compute_unit_limit <= MAX_COMPUTE_UNIT_LIMIT
        and 0 <= plan.compute_unit_price <= MAX_COMPUTE_UNIT_PRICE_MICROLAMPORTS,
        "sets compute budget values out of bounds",
    )


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise Refusal(
            f"the Solana payment transaction {what}; nothing was signed",
            code="transaction_mismatch",
        )


def _unit_limit_data(units: int) -> bytes:
    return bytes((_SET_COMPUTE_UNIT_LIMIT,)) + units.to_bytes(4, "little")


def _unit_price_data(micro_lamports: int) -> bytes:
    return bytes((_SET_COMPUTE_UNIT_PRICE,)) + micro_lamports.to_bytes(8, "little")


def _transfer_data(amount: int, decimals: int) -> bytes:
    return bytes((_TRANSFER_CHECKED,)) + amount.to_bytes(8, "little") + bytes((decimals,))


def _pk(address: str) -> Pubkey:
    from solders.pubkey import Pubkey

    return Pubkey.from_string(address)
