"""Build the ``PAYMENT-SIGNATURE`` header for one Solana exact requirement.

The policy decides WHETHER to pay (svm/policy.py); this module turns an accepted
requirement into the partially signed transaction the official client would send,
wrapped in the same v2 envelope as on EVM: ``{x402Version: 2, resource, accepted,
payload: {transaction: <base64>}, extensions}``. It re-checks the facts that decide
what the signature means (scheme, network, mint, fee payer), as payment.py does on EVM.

One call, one transaction: the returned ``SignedSvmPayment.header`` is what every
replay of the call resends. Solana drops a transaction whose signatures it has already
seen, so resending the same bytes can land at most once; a NEW transaction for the same
call (another memo or blockhash) could land as well, and is never built here twice for
one call (the caller keeps the payment and replays it).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..payment import X402_VERSION, with_builder_code
from ..refusal import Refusal
from ..wire import Requirement, encode_header
from .networks import SolanaNetwork, canonical_solana_network
from .signer import SolanaSigner
from .transaction import TransferPlan, new_memo, sign_transfer


@dataclass(frozen=True, slots=True)
class SignedSvmPayment:
    """A signed Solana payment ready to send, with what it authorizes."""

    header: str  # PAYMENT-SIGNATURE value: base64 JSON
    transaction: str  # payload.transaction: base64 of the partially signed transaction
    requirement: Requirement
    network: SolanaNetwork
    amount: int  # atomic units transferred (== requirement.amount)
    fee_payer: str
    blockhash: str
    # After this block height the transaction can never land (None if not known): the
    # moment a payment that was refused as "not used" is provably unspendable.
    last_valid_block_height: int | None
    # sha256 of the message, hex: what every signer commits to, so it names the payment
    # (the official facilitator keys its duplicate-settlement cache on it).
    message_hash: str


def sign_svm_payment(
    signer: SolanaSigner,
    requirement: Requirement,
    network: SolanaNetwork,
    resource: Mapping[str, Any],
    *,
    blockhash: str,
    last_valid_block_height: int | None = None,
    extensions: Mapping[str, Any] | None = None,
    memo: bytes | None = None,
) -> SignedSvmPayment:
    """Sign ``requirement`` as an SPL TransferChecked of exactly ``amount`` USDC.

    ``blockhash`` is ours (from the RPC cache), never the 402's ``extra.recentBlockhash``.
    ``memo`` is injectable for tests; by default the 402's ``extra.memo`` or a random one.
    """
    fee_payer = _check_meaning(requirement, network)
    seller_memo = requirement.extra.get("memo")
    if memo is None:
        memo = (
            seller_memo.encode("utf-8")
            if isinstance(seller_memo, str) and seller_memo
            else new_memo()
        )
    plan = TransferPlan(
        network=network,
        payer=signer.address,
        fee_payer=fee_payer,
        pay_to=requirement.pay_to,
        amount=requirement.amount,
        memo=memo,
        blockhash=blockhash,
    )
    tx = sign_transfer(signer, plan)
    transaction = base64.b64encode(bytes(tx)).decode("ascii")
    payload: dict[str, Any] = {"x402Version": X402_VERSION}
    if resource:
        payload["resource"] = resource
    payload["accepted"] = requirement.raw
    payload["payload"] = {"transaction": transaction}
    payload["extensions"] = with_builder_code(extensions)
    return SignedSvmPayment(
        header=encode_header(payload),
        transaction=transaction,
        requirement=requirement,
        network=network,
        amount=requirement.amount,
        fee_payer=fee_payer,
        blockhash=blockhash,
        last_valid_block_height=last_valid_block_height,
        message_hash=hashlib.sha256(bytes(tx.message)).hexdigest(),
    )


def _check_meaning(requirement: Requirement, network: SolanaNetwork) -> str:
    """Refuse anything that would not mean "pay exactly amount USDC here"; the fee payer."""
    if requirement.scheme != "exact":
        raise Refusal(
            f"x402 scheme {requirement.scheme!r} cannot be signed as a Solana exact transfer",
            code="scheme_not_supported",
        )
    if canonical_solana_network(requirement.network) != network.caip2:
        raise ValueError(f"requirement is for {requirement.network}, signing on {network.caip2}")
    if requirement.asset != network.usdc_mint:
        raise Refusal(
            f"asset {requirement.asset} is not USDC on {network.name} ({network.usdc_mint})",
            code="asset_mismatch",
        )
    fee_payer = requirement.extra.get("feePayer")
    if not isinstance(fee_payer, str) or not fee_payer:
        raise Refusal("the Solana requirement names no extra.feePayer", code="fee_payer_invalid")
    return fee_payer
