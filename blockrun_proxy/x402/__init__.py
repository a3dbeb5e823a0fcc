"""The x402 protocol: wire format, payer policy, and the fast signers (EIP-3009 exact,
Permit2 upto).

Nothing here imports eth_account or blockrun_llm (about a second of startup);
signing uses coincurve and pycryptodome's Keccak directly.
"""

from .networks import NETWORKS, Network, network_for
from .payment import (
    SETTLEMENT_ANOMALIES,
    SignedPayment,
    settled_cost,
    sign_payment,
)
from .permit2 import (
    PERMIT2_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
    Eip2612Permit,
    UptoAuthorization,
)
from .policy import KNOWN_SCHEMES, PayerPolicy, usd
from .reasons import reason_code, refusal_reason
from .refusal import Refusal
from .signer import (
    Authorization,
    Signer,
    checksum_address,
    recover_transfer_signer,
    transfer_digest,
)
from .upto import (
    EIP2612_GAS_SPONSORING_KEY,
    UPTO_SCHEME,
    SignedEvmPayment,
    SignedUptoPayment,
    gas_sponsoring_declared,
    new_permit2_nonce,
    sign_upto_payment,
    upto_terms,
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
    "EIP2612_GAS_SPONSORING_KEY",
    "KNOWN_SCHEMES",
    "NETWORKS",
    "PERMIT2_ADDRESS",
    "SETTLEMENT_ANOMALIES",
    "UPTO_SCHEME",
    "X402_UPTO_PERMIT2_PROXY_ADDRESS",
    "Authorization",
    "Eip2612Permit",
    "Network",
    "PayerPolicy",
    "PaymentRequired",
    "PaymentResponse",
    "Refusal",
    "Requirement",
    "SignedEvmPayment",
    "SignedPayment",
    "SignedUptoPayment",
    "Signer",
    "UptoAuthorization",
    "checksum_address",
    "decode_header",
    "encode_header",
    "gas_sponsoring_declared",
    "network_for",
    "new_permit2_nonce",
    "parse_payment_required",
    "parse_payment_response",
    "reason_code",
    "recover_transfer_signer",
    "refusal_reason",
    "settled_cost",
    "sign_payment",
    "sign_upto_payment",
    "transfer_digest",
    "upto_terms",
    "usd",
]
