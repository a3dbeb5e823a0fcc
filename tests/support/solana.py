"""Helpers for the fake gateway's Solana tests: a payer built on the official x402 client.

It signs with x402's own ``ExactSvmScheme`` client, not with anything in blockrun_proxy,
so these tests check the fake against the reference implementation.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from x402.mechanisms.svm import KeypairSigner
from x402.mechanisms.svm.exact.client import ExactSvmScheme
from x402.mechanisms.svm.mint_cache import MintMetadata
from x402.schemas import PaymentRequirements

TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"


class OfficialSolanaPayer:
    """A throwaway Solana wallet paying through the official x402 SVM client."""

    def __init__(self) -> None:
        self.keypair = Keypair()
        self.address = str(self.keypair.pubkey())

    def transaction(self, requirement: dict[str, Any], blockhash: str) -> str:
        scheme = ExactSvmScheme(KeypairSigner(self.keypair))
        network, mint = requirement["network"], requirement["asset"]
        # The real client reads the mint's decimals and program from the chain.
        scheme._mint_cache[(network, mint)] = MintMetadata(6, Pubkey.from_string(TOKEN_PROGRAM))
        scheme._clients[network] = object()  # never asked: the blockhash is given
        extra = dict(requirement.get("extra") or {}, recentBlockhash=blockhash)
        out = scheme.create_payment_payload(
            PaymentRequirements.model_validate(dict(requirement, extra=extra))
        )
        return str(out["transaction"])

    def header(self, requirement: dict[str, Any], blockhash: str, **over: Any) -> str:
        payload = {
            "x402Version": 2,
            "accepted": requirement,
            "payload": {"transaction": self.transaction(requirement, blockhash)},
            **over,
        }
        return base64.b64encode(json.dumps(payload).encode()).decode()
