"""The fake gateway's own SVM ``exact`` verifier, for when the official one is not installed.

``serve --demo`` ships with the package, and the official verifier needs ``x402[svm]``
(``solana`` and its dependencies), which only the ``dev`` extra installs. This is an
independent rendering of the same checks, written from the x402 SVM spec, with the
same reason codes; tests run both on the same payments to keep them in agreement.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

TOKEN_PROGRAMS = (
    "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
    "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb",
)
COMPUTE_BUDGET = "ComputeBudget111111111111111111111111111111"
MEMO = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"
LIGHTHOUSE = "L2TExMFKdjpN9kozasaurPirfHy9P8sbXoAN1qA3S95"
ATA_PROGRAM = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"
MAX_PRICE_MICROLAMPORTS = 5_000_000


class _Invalid(Exception):
    def __init__(self, reason: str, payer: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.payer = payer


def builtin_verify(
    payment: Mapping[str, Any],
    requirement: Mapping[str, Any],
    fee_payers: list[str],
    blockhash_valid: Callable[[str], bool] | None = None,
) -> tuple[bool, str | None, str]:
    """(valid, invalid reason, payer), as the official ``ExactSvmScheme.verify`` answers."""
    try:
        return True, None, _verify(payment, requirement, fee_payers, blockhash_valid)
    except _Invalid as exc:
        return False, exc.reason, exc.payer


def _verify(
    payment: Mapping[str, Any],
    requirement: Mapping[str, Any],
    fee_payers: list[str],
    blockhash_valid: Callable[[str], bool] | None,
) -> str:
    from solders.pubkey import Pubkey
    from solders.transaction import VersionedTransaction

    accepted = payment.get("accepted")
    if not isinstance(accepted, dict) or accepted.get("scheme") != "exact":
        raise _Invalid("unsupported_scheme")
    if requirement.get("scheme") != "exact":
        raise _Invalid("unsupported_scheme")
    if accepted.get("network") != requirement.get("network"):
        raise _Invalid("network_mismatch")
    extra = requirement.get("extra") or {}
    fee_payer = extra.get("feePayer")
    if not isinstance(fee_payer, str) or not fee_payer:
        raise _Invalid("invalid_exact_svm_payload_missing_fee_payer")
    if fee_payer not in fee_payers:
        raise _Invalid("fee_payer_not_managed_by_facilitator")
    payload = payment.get("payload")
    encoded = payload.get("transaction") if isinstance(payload, dict) else None
    try:
        tx = VersionedTransaction.from_bytes(base64.b64decode(str(encoded), validate=True))
    except (binascii.Error, ValueError):
        raise _Invalid("invalid_exact_svm_payload_transaction_could_not_be_decoded") from None
    message = tx.message
    keys = [str(k) for k in message.account_keys]
    ixs = [
        (keys[ix.program_id_index], list(ix.accounts), bytes(ix.data))
        for ix in message.instructions
    ]
    if not 3 <= len(ixs) <= 6:
        raise _Invalid("invalid_exact_svm_payload_transaction_instructions_length")
    program, _, data = ixs[0]
    if program != COMPUTE_BUDGET or data[:1] != b"\x02":
        raise _Invalid(
            "invalid_exact_svm_payload_transaction_instructions_compute_limit_instruction"
        )
    program, _, data = ixs[1]
    if program != COMPUTE_BUDGET or len(data) < 9 or data[:1] != b"\x03":
        raise _Invalid(
            "invalid_exact_svm_payload_transaction_instructions_compute_price_instruction"
        )
    if int.from_bytes(data[1:9], "little") > MAX_PRICE_MICROLAMPORTS:
        raise _Invalid(
            "invalid_exact_svm_payload_transaction_instructions_compute_price_instruction_too_high"
        )
    program, accounts, data = ixs[2]
    if program not in TOKEN_PROGRAMS or len(accounts) < 4 or len(data) < 10 or data[0] != 12:
        raise _Invalid("invalid_exact_svm_payload_no_transfer_instruction")
    _source, mint, destination, authority = (keys[i] for i in accounts[:4])
    for position, (extra_program, _, _) in enumerate(ixs[3:]):
        if extra_program not in (MEMO, LIGHTHOUSE):
            which = ("fourth", "fifth", "sixth")[position]
            raise _Invalid(f"invalid_exact_svm_payload_unknown_{which}_instruction", authority)
    memo = extra.get("memo")
    if isinstance(memo, str) and memo:
        memos = [d for p, _, d in ixs[3:] if p == MEMO]
        if len(memos) != 1:
            raise _Invalid("invalid_exact_svm_payload_memo_count", authority)
        if memos[0] != memo.encode("utf-8"):
            raise _Invalid("invalid_exact_svm_payload_memo_mismatch", authority)
    if authority in fee_payers:
        raise _Invalid(
            "invalid_exact_svm_payload_transaction_fee_payer_transferring_funds", authority
        )
    if mint != requirement.get("asset"):
        raise _Invalid("invalid_exact_svm_payload_mint_mismatch", authority)
    expected, _bump = Pubkey.find_program_address(
        [
            bytes(Pubkey.from_string(str(requirement.get("payTo")))),
            bytes(Pubkey.from_string(program)),
            bytes(Pubkey.from_string(mint)),
        ],
        Pubkey.from_string(ATA_PROGRAM),
    )
    if destination != str(expected):
        raise _Invalid("invalid_exact_svm_payload_recipient_mismatch", authority)
    if int.from_bytes(data[1:9], "little") < int(str(requirement.get("amount"))):
        raise _Invalid("invalid_exact_svm_payload_amount_insufficient", authority)
    # The simulation a facilitator runs: here, that the fee payer is the first account,
    # every other signature verifies and the blockhash is live.
    signed = b"\x80" + bytes(message)
    signers = message.header.num_required_signatures
    if keys[0] != fee_payer or len(tx.signatures) != signers:
        raise _Invalid(
            "transaction_simulation_failed: fee payer is not the first signer", authority
        )
    for index in range(1, signers):
        if not tx.signatures[index].verify(message.account_keys[index], signed):
            raise _Invalid(
                "transaction_simulation_failed: signature verification failed", authority
            )
    blockhash = str(message.recent_blockhash)
    if blockhash_valid is not None and not blockhash_valid(blockhash):
        raise _Invalid(
            f"transaction_simulation_failed: Blockhash not found: {blockhash}", authority
        )
    return authority
