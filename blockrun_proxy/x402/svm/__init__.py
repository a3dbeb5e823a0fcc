"""x402 ``exact`` on Solana (SVM): network table, policy, transaction, signer, payment.

Importing this package loads no solders (about 16 ms): the table and the policy are
pure Python, and the modules that build and sign import solders on first use. Nor does
it load its own modules until a name is asked for (PEP 562 ``__getattr__``): the payment
core asks whether a network is Solana's on every 402 (``networks``, a small table), but
a proxy that pays only on Base never loads the policy, transaction and signer modules
(several ms of startup).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base58 import is_pubkey
    from .networks import (
        SOLANA_DEVNET,
        SOLANA_MAINNET,
        SOLANA_NETWORKS,
        SolanaNetwork,
        default_rpc_url,
        is_solana_network,
        solana_network_for,
    )
    from .payment import SignedSvmPayment, sign_svm_payment
    from .policy import SvmPolicy
    from .signer import SolanaSigner, solana_secret
    from .transaction import TransferPlan, audit_message, build_message, sign_transfer

# Where each exported name lives.
_EXPORTS = {
    "is_pubkey": "._base58",
    "SOLANA_DEVNET": ".networks",
    "SOLANA_MAINNET": ".networks",
    "SOLANA_NETWORKS": ".networks",
    "SolanaNetwork": ".networks",
    "default_rpc_url": ".networks",
    "is_solana_network": ".networks",
    "solana_network_for": ".networks",
    "SignedSvmPayment": ".payment",
    "sign_svm_payment": ".payment",
    "SvmPolicy": ".policy",
    "SolanaSigner": ".signer",
    "solana_secret": ".signer",
    "TransferPlan": ".transaction",
    "audit_message": ".transaction",
    "build_message": ".transaction",
    "sign_transfer": ".transaction",
}

__all__ = [
    "SOLANA_DEVNET",
    "SOLANA_MAINNET",
    "SOLANA_NETWORKS",
    "SignedSvmPayment",
    "SolanaNetwork",
    "SolanaSigner",
    "SvmPolicy",
    "TransferPlan",
    "audit_message",
    "build_message",
    "default_rpc_url",
    "is_pubkey",
    "is_solana_network",
    "sign_svm_payment",
    "sign_transfer",
    "solana_network_for",
    "solana_secret",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, found without this hook
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
