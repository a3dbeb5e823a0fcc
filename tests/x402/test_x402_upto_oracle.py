"""The official x402 upto facilitator accepts what our signer builds, and settles it.

The verifier is the package's own (``UptoEvmFacilitatorScheme``); its chain is the fake
gateway's in-memory USDC ledger (balances, the allowance to Permit2, EIP-2612 and
Permit2 nonces), read through ``FakeFacilitatorSigner``.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

import pytest
from x402.extensions.eip2612_gas_sponsoring import declare_eip2612_gas_sponsoring_extension
from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme
from x402.schemas import PaymentPayload, PaymentRequirements

from blockrun_proxy.testing import FakeFacilitatorSigner, UptoMode, UsdcLedger
from blockrun_proxy.x402 import (
    NETWORKS,
    PERMIT2_ADDRESS,
    Network,
    Requirement,
    Signer,
    decode_header,
    encode_header,
    new_permit2_nonce,
    sign_upto_payment,
)
from blockrun_proxy.x402.permit2 import Eip2612Permit, permit_digest
from blockrun_proxy.x402.upto import EIP2612_GAS_SPONSORING_KEY

FACILITATOR = "0x5555555555555555555555555555555555555555"


def upto_raw(network: Network, amount: int, pay_to: str, timeout: int) -> dict[str, Any]:
    return {
        "scheme": "upto",
        "network": network.caip2,
        "amount": str(amount),
        "asset": network.usdc,
        "payTo": pay_to,
        "maxTimeoutSeconds": timeout,
        "extra": {
            "name": network.domain_name,
            "version": network.domain_version,
            "assetTransferMethod": "permit2",
            "facilitatorAddress": FACILITATOR,
        },
    }


def as_requirement(raw: dict[str, Any]) -> Requirement:
    return Requirement(
        scheme="upto",
        network=raw["network"],
        amount=int(raw["amount"]),
        asset=raw["asset"],
        pay_to=raw["payTo"],
        max_timeout_seconds=raw["maxTimeoutSeconds"],
        extra=raw["extra"],
        raw=raw,
    )


def facilitator(ledger: UsdcLedger) -> UptoEvmFacilitatorScheme:
    return UptoEvmFacilitatorScheme(
        FakeFacilitatorSigner(UptoMode(ledger, facilitator=FACILITATOR))
    )


def official_verify(ledger: UsdcLedger, header: str, raw: dict[str, Any]) -> Any:
    payload = PaymentPayload.model_validate(decode_header(header))
    return facilitator(ledger).verify(payload, PaymentRequirements.model_validate(raw))


@pytest.mark.parametrize("seed", range(4))
def test_the_official_verifier_accepts_our_payments(seed: int) -> None:
    rng = random.Random(seed)
    for i in range(8):
        network = (NETWORKS["eip155:8453"], NETWORKS["eip155:84532"])[i % 2]
        signer = Signer(rng.randbytes(32))
        ceiling = rng.choice([1, 1000, 1_234_567, 50_000_000])
        raw = upto_raw(network, ceiling, "0x" + rng.randbytes(20).hex(), rng.choice([10, 300, 900]))
        ledger = UsdcLedger(network.caip2)
        ledger.fund(signer.address, usdc=ceiling)
        ledger.approve(signer.address, PERMIT2_ADDRESS, ceiling)
        signed = sign_upto_payment(
            signer,
            as_requirement(raw),
            network,
            {},
            now=int(time.time()),
            nonce=new_permit2_nonce(),
        )
        result = official_verify(ledger, signed.header, raw)
        assert result.is_valid, result.invalid_reason
        assert result.payer == signer.address


def test_short_allowance_without_a_permit_is_refused(wallet_key: str) -> None:
    signer, network = Signer(wallet_key), NETWORKS["eip155:84532"]
    raw = upto_raw(network, 10_000, "0x" + "12" * 20, 300)
    ledger = UsdcLedger(network.caip2)
    ledger.fund(signer.address, usdc=10**9)
    ledger.approve(signer.address, PERMIT2_ADDRESS, 9_999)
    signed = sign_upto_payment(
        signer, as_requirement(raw), network, {}, now=int(time.time()), nonce=1
    )
    result = official_verify(ledger, signed.header, raw)
    assert not result.is_valid and result.invalid_reason == "permit2_allowance_required"


def test_a_permit_covers_a_short_allowance_and_settles_the_actual_amount(wallet_key: str):
    signer, network = Signer(wallet_key), NETWORKS["eip155:84532"]
    raw = upto_raw(network, 40_000, "0x" + "12" * 20, 300)
    ledger = UsdcLedger(network.caip2)
    ledger.fund(signer.address, usdc=100_000)
    ledger.permit_nonces[signer.address.lower()] = 3
    signed = sign_upto_payment(
        signer,
        as_requirement(raw),
        network,
        {},
        now=int(time.time()),
        nonce=new_permit2_nonce(),
        permit_nonce=3,
        extensions=declare_eip2612_gas_sponsoring_extension(),
    )
    assert official_verify(ledger, signed.header, raw).is_valid
    payload = PaymentPayload.model_validate(decode_header(signed.header))
    settled = facilitator(ledger).settle(
        payload, PaymentRequirements.model_validate({**raw, "amount": "12500"})
    )
    assert settled.success, settled.error_reason
    assert settled.amount == "12500"
    assert ledger.balance_of(signer.address) == 100_000 - 12_500
    assert ledger.allowance(signer.address, PERMIT2_ADDRESS) == 40_000 - 12_500
    assert ledger.permit_nonce(signer.address) == 4
    # The same payment again: its Permit2 nonce is spent.
    again = facilitator(ledger).settle(
        payload, PaymentRequirements.model_validate({**raw, "amount": "1"})
    )
    assert not again.success


def test_settling_more_than_the_ceiling_is_impossible(wallet_key: str) -> None:
    signer, network = Signer(wallet_key), NETWORKS["eip155:84532"]
    raw = upto_raw(network, 5_000, "0x" + "12" * 20, 300)
    ledger = UsdcLedger(network.caip2)
    ledger.fund(signer.address, usdc=10**9)
    ledger.approve(signer.address, PERMIT2_ADDRESS, 10**9)
    signed = sign_upto_payment(
        signer, as_requirement(raw), network, {}, now=int(time.time()), nonce=9
    )
    payload = PaymentPayload.model_validate(decode_header(signed.header))
    over = facilitator(ledger).settle(
        payload, PaymentRequirements.model_validate({**raw, "amount": "5001"})
    )
    assert not over.success
    assert ledger.balance_of(signer.address) == 10**9


def test_a_permit_for_other_than_the_ceiling_never_settles(wallet_key: str) -> None:
    """A permit value other than the ceiling (what we never sign) fails verification."""
    signer, network = Signer(wallet_key), NETWORKS["eip155:84532"]
    raw = upto_raw(network, 40_000, "0x" + "12" * 20, 300)
    ledger = UsdcLedger(network.caip2)
    ledger.fund(signer.address, usdc=10**9)
    now = int(time.time())
    signed = sign_upto_payment(
        signer,
        as_requirement(raw),
        network,
        {},
        now=now,
        nonce=5,
        permit_nonce=0,
        extensions=declare_eip2612_gas_sponsoring_extension(),
    )
    doc = decode_header(signed.header)
    unlimited = Eip2612Permit(signer.address, PERMIT2_ADDRESS, 2**256 - 1, 0, now + 300)
    info = doc["extensions"][EIP2612_GAS_SPONSORING_KEY]["info"]
    info["amount"] = str(unlimited.value)
    info["signature"] = signer.sign_digest(permit_digest(network, unlimited))
    result = official_verify(ledger, encode_header(doc), raw)
    assert not result.is_valid
    assert ledger.permit_nonce(signer.address) == 0


def test_a_tampered_ceiling_does_not_verify(wallet_key: str) -> None:
    signer, network = Signer(wallet_key), NETWORKS["eip155:84532"]
    raw = upto_raw(network, 1000, "0x" + "12" * 20, 300)
    ledger = UsdcLedger(network.caip2)
    ledger.fund(signer.address, usdc=10**9)
    ledger.approve(signer.address, PERMIT2_ADDRESS, 10**9)
    signed = sign_upto_payment(
        signer, as_requirement(raw), network, {}, now=int(time.time()), nonce=secrets.randbits(256)
    )
    doc = decode_header(signed.header)
    doc["payload"]["permit2Authorization"]["permitted"]["amount"] = "100000"
    raised = {**raw, "amount": "100000"}
    result = official_verify(ledger, encode_header(doc), raised)
    assert not result.is_valid and result.invalid_reason == "invalid_permit2_signature"
