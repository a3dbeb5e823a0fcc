"""The upto scheme's world for proxy tests: an in-memory chain, its JSON-RPC node, a fake
gateway that offers upto next to exact, and a wallet funded on that chain.

The fake gateway's upto payments are judged and settled by the official x402 facilitator
code against ``UsdcLedger``; ``FakeRpc`` serves the same ledger, so what the proxy reads
through ``--rpc-url`` (the Permit2 allowance, the EIP-2612 nonce) is what the facilitator
checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from blockrun_proxy.testing import FakeGateway, FakeRpc, UptoMode, UsdcLedger
from blockrun_proxy.x402 import PERMIT2_ADDRESS, Signer, decode_header
from support.calls import TEST_NETWORK
from support.payments import assert_one_nonce_per_call, payment_nonce

FUNDS = 10_000_000  # $10 of USDC, and as much Permit2 allowance, unless a test says less


@dataclass
class UptoChain:
    ledger: UsdcLedger
    node: FakeRpc
    mode: UptoMode

    @property
    def rpc_url(self) -> str:
        assert self.node.url is not None
        return self.node.url

    def fund(self, key: str, *, usdc: int = FUNDS, allowance: int | None = FUNDS) -> str:
        """Give the wallet of ``key`` USDC and (unless None) a Permit2 allowance."""
        address = Signer(key).address
        self.ledger.fund(address, usdc=usdc)
        if allowance is not None:
            self.ledger.approve(address, PERMIT2_ADDRESS, allowance)
        return address

    def allowance(self, key: str) -> int:
        return self.ledger.allowance(Signer(key).address, PERMIT2_ADDRESS)


@contextlib.asynccontextmanager
async def upto_chain(**mode: Any) -> AsyncIterator[UptoChain]:
    ledger = UsdcLedger(TEST_NETWORK)
    async with FakeRpc(ledger) as node:
        yield UptoChain(ledger, node, UptoMode(ledger, **mode))


@contextlib.asynccontextmanager
async def upto_gateway(chain: UptoChain, **options: Any) -> AsyncIterator[FakeGateway]:
    """A fake gateway offering exact then upto; on exit, checks that no client call ever
    carried two nonces (EIP-3009 or Permit2, or one of each)."""
    gw = FakeGateway(network=TEST_NETWORK, upto=chain.mode, **options)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()
    assert_one_nonce_per_call(gw)


def upto_settings(chain: UptoChain, scheme: str = "upto", **overrides: Any) -> dict[str, Any]:
    """``start_proxy`` keywords for a proxy paying ``scheme`` with the chain as its RPC."""
    return {"scheme": scheme, "rpc_url": chain.rpc_url, **overrides}


def sent_payments(gateway: FakeGateway, since: int = 0) -> list[dict[str, Any]]:
    """The decoded payments the gateway received, in order."""
    return [r.payment for r in gateway.requests[since:] if r.payment is not None]


def permit2_nonces(gateway: FakeGateway, since: int = 0) -> list[str]:
    """The distinct Permit2 nonces sent, in order."""
    seen: list[str] = []
    for payment in sent_payments(gateway, since):
        nonce = payment_nonce(payment)
        if nonce is not None and nonce.startswith("permit2:") and nonce not in seen:
            seen.append(nonce)
    return seen


def schemes_sent(gateway: FakeGateway, since: int = 0) -> list[str]:
    return [str(p.get("accepted", {}).get("scheme")) for p in sent_payments(gateway, since)]


def receipt(headers: Any) -> dict[str, Any]:
    """The PAYMENT-RESPONSE an answer carries, decoded."""
    return dict(decode_header(headers["PAYMENT-RESPONSE"]))
