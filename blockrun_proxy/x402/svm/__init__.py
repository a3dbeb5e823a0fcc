"""x402 ``exact`` on Solana (SVM): network table, policy, transaction, signer, payment.

Importing this package loads no solders (about 16 ms): the table and the policy are
pure Python, and the modules that build and sign import solders on first use.
"""

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
