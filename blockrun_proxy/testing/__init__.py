"""A fake BlockRun x402 gateway for tests, demos and benchmarks.

It answers on loopback the way the real gateway does (quotes, 402 challenges,
EIP-3009 verification, settlement, SSE streams; upto payments verified by the
official x402 facilitator against an in-memory USDC ledger, which ``FakeRpc`` also
serves as JSON-RPC) on every route BlockRun serves that the proxy relays (chat,
Anthropic Messages, Gemini, images, audio, video jobs, search; docs/PROTOCOL.md
section 9) and can be told to misbehave.
It is an independent implementation of the gateway side, so it also checks the
proxy's signer. Importing it is cheap: eth_account is loaded on first use.

Besides Base (``FakeGateway``) it plays the other two rails: ``SolanaFakeGateway``
(x402 exact on Solana, judged by the official x402 SVM verifier, with its own
``FakeSolanaRpc``) and ``ApiKeyFakeGateway`` (prepaid credit, ``Bearer brk_...``).
x402 and solders are loaded on first use too.
"""

from blockrun_proxy.testing._apikey import ApiKeyFakeGateway, Charge
from blockrun_proxy.testing._catalogue import DEFAULT_MEDIA, MediaSpec
from blockrun_proxy.testing._gateway import (
    API_PREFIX,
    DEFAULT_NETWORK,
    DEFAULT_PAY_TO,
    FakeGateway,
)
from blockrun_proxy.testing._ledger import LedgerError, Permit2Transfer, UsdcLedger
from blockrun_proxy.testing._misbehavior import Misbehavior
from blockrun_proxy.testing._models import DEFAULT_MODELS, ModelSpec, PricingFn, default_price
from blockrun_proxy.testing._networks import NETWORKS, Network
from blockrun_proxy.testing._records import (
    AcceptedPayment,
    PaymentRecord,
    RecordedRequest,
    SettledPayment,
)
from blockrun_proxy.testing._rpc import FakeRpc, RpcMisbehavior
from blockrun_proxy.testing._solana import (
    DEFAULT_SOLANA_NETWORK,
    DEFAULT_SOLANA_PAY_TO,
    SOLANA_DEVNET,
    SOLANA_MAINNET,
    SOLANA_USDC,
    FakeFacilitator,
    SolanaFakeGateway,
    verify_svm_payment,
)
from blockrun_proxy.testing._solana_rpc import FakeSolanaRpc, SolanaRpcMisbehavior
from blockrun_proxy.testing._upto import DEFAULT_FACILITATOR, FakeFacilitatorSigner, UptoMode
from blockrun_proxy.testing._verify import VerifyMode

__all__ = [
    "API_PREFIX",
    "DEFAULT_FACILITATOR",
    "DEFAULT_MEDIA",
    "DEFAULT_MODELS",
    "DEFAULT_NETWORK",
    "DEFAULT_PAY_TO",
    "DEFAULT_SOLANA_NETWORK",
    "DEFAULT_SOLANA_PAY_TO",
    "NETWORKS",
    "SOLANA_DEVNET",
    "SOLANA_MAINNET",
    "SOLANA_USDC",
    "AcceptedPayment",
    "ApiKeyFakeGateway",
    "Charge",
    "FakeFacilitator",
    "FakeFacilitatorSigner",
    "FakeGateway",
    "FakeRpc",
    "FakeSolanaRpc",
    "LedgerError",
    "MediaSpec",
    "Misbehavior",
    "ModelSpec",
    "Network",
    "PaymentRecord",
    "Permit2Transfer",
    "PricingFn",
    "RecordedRequest",
    "RpcMisbehavior",
    "SettledPayment",
    "SolanaFakeGateway",
    "SolanaRpcMisbehavior",
    "UptoMode",
    "UsdcLedger",
    "VerifyMode",
    "default_price",
    "verify_svm_payment",
]
