"""The oracle: the official x402 package's SVM code agrees with what the proxy signs.

Its facilitator verifier (``ExactSvmScheme.verify``) must accept every payment the proxy
builds, with ``FakeFacilitator`` as its signer (whose simulation checks every signature
and the blockhash); and its client, given the same memo and blockhash, must produce the
very same transaction bytes (ed25519 is deterministic).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from support.svm import (
    DEVNET,
    MAINNET,
    RESOURCE,
    CountingSigner,
    new_address,
    new_blockhash,
    offer,
    policy,
    raw_requirement,
)
from x402.mechanisms.svm import KeypairSigner
from x402.mechanisms.svm.exact import client as official_client
from x402.mechanisms.svm.mint_cache import MintMetadata
from x402.schemas import PaymentRequirements

from blockrun_proxy.testing import FakeFacilitator, FakeSolanaRpc, verify_svm_payment
from blockrun_proxy.x402.svm import SignedSvmPayment, SolanaNetwork, sign_svm_payment
from blockrun_proxy.x402.svm._base58 import b58encode


def pay(
    signer: CountingSigner, raw: dict[str, Any], blockhash: str, **kwargs: Any
) -> SignedSvmPayment:
    network = MAINNET if raw["network"] == MAINNET.caip2 else DEVNET
    parsed = offer(raw)
    requirement, chosen = policy(networks=frozenset({network.caip2})).select(parsed, signer.address)
    assert chosen is network
    return sign_svm_payment(
        signer, requirement, network, parsed.resource, blockhash=blockhash, **kwargs
    )


def decoded(payment: SignedSvmPayment) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(base64.b64decode(payment.header, validate=True))
    return doc


@pytest.mark.parametrize("network", [MAINNET, DEVNET], ids=["mainnet", "devnet"])
@pytest.mark.parametrize("amount", ["1", "2500", "50000"])
def test_the_official_verifier_accepts_what_the_proxy_signs(
    network: SolanaNetwork, amount: str
) -> None:
    rpc = FakeSolanaRpc()
    blockhash, _ = rpc.latest_blockhash()
    facilitator = FakeFacilitator(rpc)
    raw = raw_requirement(
        facilitator.fee_payer, network=network.caip2, asset=network.usdc_mint, amount=amount
    )
    payment = pay(CountingSigner(), raw, blockhash)
    assert verify_svm_payment(decoded(payment), raw, facilitator)[:2] == (True, None)


def test_the_verifier_names_the_proxy_wallet_as_payer() -> None:
    rpc = FakeSolanaRpc()
    facilitator = FakeFacilitator(rpc)
    signer = CountingSigner()
    raw = raw_requirement(facilitator.fee_payer)
    payment = pay(signer, raw, rpc.latest_blockhash()[0])
    assert verify_svm_payment(decoded(payment), raw, facilitator) == (True, None, signer.address)
    assert signer.signatures == 1


def test_the_oracle_can_fail() -> None:
    """A verifier that accepts everything proves nothing: tampering is caught."""
    rpc = FakeSolanaRpc()
    facilitator = FakeFacilitator(rpc)
    raw = raw_requirement(facilitator.fee_payer)
    payment = pay(CountingSigner(), raw, rpc.latest_blockhash()[0])

    # A different price than the one signed for.
    dearer = dict(raw, amount="2501")
    assert verify_svm_payment(decoded(payment), dearer, facilitator)[1] == (
        "invalid_exact_svm_payload_amount_insufficient"
    )
    # Another recipient.
    elsewhere = dict(raw, payTo=new_address())
    assert verify_svm_payment(decoded(payment), elsewhere, facilitator)[1] == (
        "invalid_exact_svm_payload_recipient_mismatch"
    )
    # One flipped byte in the signed message: our signature no longer verifies.
    tx = bytearray(base64.b64decode(payment.transaction))
    tx[-40] ^= 1
    doc = decoded(payment)
    doc["payload"]["transaction"] = base64.b64encode(bytes(tx)).decode()
    valid, reason, _ = verify_svm_payment(doc, raw, facilitator)
    assert not valid and reason is not None and "signature" in reason
    # A blockhash the cluster never issued.
    stale = pay(CountingSigner(), raw, new_blockhash())
    valid, reason, _ = verify_svm_payment(decoded(stale), raw, facilitator)
    assert not valid and reason is not None and "Blockhash not found" in reason


def official_transaction(
    keypair_signer: KeypairSigner, raw: dict[str, Any], blockhash: str, memo: str | None
) -> str:
    """The official client's transaction for ``raw``: its mint lookup answered from our
    table (the real client asks the chain), its blockhash passed in the 402's extra."""
    scheme = official_client.ExactSvmScheme(keypair_signer)
    network = raw["network"]
    token_program = MAINNET.token_program
    scheme._mint_cache[(network, raw["asset"])] = MintMetadata(
        decimals=6, token_program=Pubkey.from_string(token_program)
    )
    scheme._clients[network] = object()  # never asked: the blockhash is given
    extra = dict(raw["extra"], recentBlockhash=blockhash)
    if memo is not None:
        extra["memo"] = memo
    out = scheme.create_payment_payload(PaymentRequirements.model_validate(dict(raw, extra=extra)))
    return str(out["transaction"])


@pytest.mark.parametrize("amount", ["1", "2500", "18446744073709551615"])
def test_bytes_equal_the_official_clients_with_a_seller_memo(amount: str) -> None:
    keypair = Keypair()
    signer = CountingSigner(b58encode(bytes(keypair)))
    blockhash = new_blockhash()
    memo = "blockrun call 0001"
    raw = raw_requirement(amount=amount)
    raw["extra"]["memo"] = memo
    ours = sign_svm_payment(
        signer,
        offer(raw).accepts[0],
        MAINNET,
        RESOURCE,
        blockhash=blockhash,
    )
    theirs = official_transaction(KeypairSigner(keypair), raw, blockhash, memo)
    assert ours.transaction == theirs


def test_bytes_equal_the_official_clients_with_its_random_nonce_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nonce = bytes(range(16))
    monkeypatch.setattr(official_client.os, "urandom", lambda n: nonce[:n])
    keypair = Keypair()
    signer = CountingSigner(b58encode(bytes(keypair)))
    blockhash = new_blockhash()
    raw = raw_requirement()
    ours = sign_svm_payment(
        signer,
        offer(raw).accepts[0],
        MAINNET,
        RESOURCE,
        blockhash=blockhash,
        memo=binascii.hexlify(nonce),
    )
    theirs = official_transaction(KeypairSigner(keypair), raw, blockhash, None)
    assert ours.transaction == theirs


def test_the_default_memo_is_a_fresh_nonce_per_payment() -> None:
    """Two payments of the same amount with the same blockhash are still two transactions."""
    signer = CountingSigner()
    blockhash = new_blockhash()
    raw = raw_requirement()
    first, second = (
        sign_svm_payment(signer, offer(raw).accepts[0], MAINNET, RESOURCE, blockhash=blockhash)
        for _ in range(2)
    )
    assert first.message_hash != second.message_hash
    memos = {memo_of(p) for p in (first, second)}
    assert len(memos) == 2 and all(len(m) == 32 for m in memos)


def memo_of(payment: SignedSvmPayment) -> bytes:
    tx = VersionedTransaction.from_bytes(base64.b64decode(payment.transaction))
    return bytes(tx.message.instructions[3].data)


def test_the_payment_header_is_the_v2_envelope() -> None:
    signer = CountingSigner()
    raw = raw_requirement()
    parsed = offer(raw, extensions={"builder-code": {"info": {"a": "app"}}})
    payment = sign_svm_payment(
        signer,
        parsed.accepts[0],
        MAINNET,
        parsed.resource,
        blockhash=new_blockhash(),
        extensions=parsed.extensions,
    )
    doc = decoded(payment)
    assert doc == {
        "x402Version": 2,
        "resource": RESOURCE,
        "accepted": raw,
        "payload": {"transaction": payment.transaction},
        "extensions": {"builder-code": {"info": {"a": "app", "s": ["blockrun"]}}},
    }
    assert payment.amount == 2500 and payment.fee_payer == raw["extra"]["feePayer"]
