"""The x402 protocol: wire format, payer policy, and the fast EIP-3009 signer.

Nothing here imports eth_account or blockrun_llm (about a second of startup);
signing uses coincurve and pycryptodome's Keccak directly.
"""

from .networks import NETWORKS, Network, network_for
from .payment import SignedPayment, sign_payment
from .policy import PayerPolicy, usd
from .reasons import reason_code, refusal_reason
from .refusal import Refusal
from .signer import (
    Authorization,
    Signer,
    checksum_address,
    recover_transfer_signer,
    transfer_digest,
)
from .wire import (
    PaymentRequired,
    PaymentResponse,
    Requirement,
    decode_header,
    encode_header,
    parse_payment_required,
    parse_payment_response,
)

__all__ = [
    "NETWORKS",
    "Authorization",
    "Network",
    "PayerPolicy",
    "PaymentRequired",
    "PaymentResponse",
    "Refusal",
    "Requirement",
    "SignedPayment",
    "Signer",
    "checksum_address",
    "decode_header",
    "encode_header",
    "network_for",
    "parse_payment_required",
    "parse_payment_response",
    "reason_code",
    "recover_transfer_signer",
    "refusal_reason",
    "sign_payment",
    "transfer_digest",
    "usd",
]
