"""Shared pieces of the Solana (SVM) tests: generated keys, requirements, a counting signer."""

from __future__ import annotations

from typing import Any

from solders.hash import Hash
from solders.keypair import Keypair

from blockrun_proxy.x402 import PaymentRequired, encode_header, parse_payment_required
from blockrun_proxy.x402.svm import SOLANA_DEVNET, SOLANA_MAINNET, SolanaSigner, SvmPolicy
from blockrun_proxy.x402.svm._base58 import b58encode

MAINNET = SOLANA_MAINNET
DEVNET = SOLANA_DEVNET
RESOURCE = {
    "url": "https://sol.blockrun.ai/api/v1/chat/completions",
    "description": "openai/gpt-5 - 128000 max output tokens",
    "mimeType": "application/json",
}
CAP = 50_000  # $0.05


def new_key() -> str:
    """A fresh Solana key in base58 (generated per test: no key is ever committed)."""
    return b58encode(bytes(Keypair()))


def new_address() -> str:
    return str(Keypair().pubkey())


def new_blockhash() -> str:
    return str(Hash.new_unique())


class CountingSigner(SolanaSigner):
    """A SolanaSigner that counts how often its key was used."""

    def __init__(self, key: str | None = None) -> None:
        super().__init__(key or new_key())
        self.signatures = 0

    def sign_message(self, message: bytes) -> Any:
        self.signatures += 1
        return super().sign_message(message)


def raw_requirement(fee_payer: str | None = None, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "scheme": "exact",
        "network": MAINNET.caip2,
        "amount": "2500",
        "asset": MAINNET.usdc_mint,
        "payTo": new_address(),
        "maxTimeoutSeconds": 300,
        "extra": {"feePayer": fee_payer or new_address()},
    }
    raw.update(over)
    return raw


def offer(*accepts: dict[str, Any], resource: Any = RESOURCE, **top: Any) -> PaymentRequired:
    doc: dict[str, Any] = {"x402Version": 2, "resource": resource, "accepts": list(accepts)}
    doc.update(top)
    parsed = parse_payment_required(encode_header(doc), None)
    assert parsed is not None
    return parsed


def policy(**over: Any) -> SvmPolicy:
    fields: dict[str, Any] = {
        "networks": frozenset({MAINNET.caip2}),
        "max_amount": CAP,
        "gateway_host": "sol.blockrun.ai",
    }
    fields.update(over)
    return SvmPolicy(**fields)
