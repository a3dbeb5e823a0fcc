"""``python -m bench.signing``: what one payment signature costs, per scheme.

Each function below builds complete ``PAYMENT-SIGNATURE`` values the way the proxy does
(digest, ECDSA sign, payload JSON, base64) and returns microseconds per payment, the
median of several batches. One function per scheme and rail; ``main`` prints one
markdown table. Solana: ``sign_svm_payment`` (plan, compile the v0 message, audit it,
ed25519 via solders, base64, header), warm and for a new payTo (both associated token
accounts derived), with the build / audit / sign split and the official x402 client's
``create_payment_payload`` for the same transaction (checked byte-identical). The
API-key rail signs nothing. "per call, through the rail" is what one paid call costs the
proxy's payer on each rail as the gateway drives it (``rails.Rails``: choose against the
policy, reserve in the budget, sign, mark sent, commit), with a warm blockhash on Solana.
The eth_account rows sign the same typed
data through ``encode_typed_data`` (what the official x402 client and blockrun-llm do)
for scale. Bounded: a few seconds. A command, not a test.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from blockrun_proxy.x402 import (
    NETWORKS,
    Requirement,
    Signer,
    new_permit2_nonce,
    sign_payment,
    sign_upto_payment,
)

NETWORK = NETWORKS["eip155:8453"]
PAY_TO = "0x1111111111111111111111111111111111111111"
FACILITATOR = "0x2222222222222222222222222222222222222222"
RESOURCE = {"url": "https://blockrun.ai/api/v1/chat/completions"}
SPONSORING = {"eip2612GasSponsoring": {"info": {"description": "permit", "version": "1"}}}
BATCH = 200
BATCHES = 7


def requirement(scheme: str, amount: int = 12_345) -> Requirement:
    extra: dict[str, Any] = {"name": NETWORK.domain_name, "version": NETWORK.domain_version}
    if scheme == "upto":
        extra |= {"assetTransferMethod": "permit2", "facilitatorAddress": FACILITATOR}
    raw = {
        "scheme": scheme,
        "network": NETWORK.caip2,
        "amount": str(amount),
        "asset": NETWORK.usdc,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": extra,
    }
    return Requirement(scheme, NETWORK.caip2, amount, NETWORK.usdc, PAY_TO, 300, extra, raw)


def per_call_us(
    sign_one: Callable[[], object], batch: int = BATCH, batches: int = BATCHES
) -> float:
    """Median over ``batches`` of the mean microseconds per call in a batch."""
    sign_one()  # warm: the first call loads Keccak and hashes the domain separator
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            sign_one()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(samples)


# --- one function per scheme -------------------------------------------------------------


def exact_evm(signer: Signer) -> float:
    """EIP-3009 TransferWithAuthorization, the exact scheme."""
    req = requirement("exact")
    return per_call_us(lambda: sign_payment(signer, req, NETWORK, RESOURCE, now=int(time.time())))


def upto_evm(signer: Signer, *, new_ceilings: bool = False) -> float:
    """Permit2 PermitWitnessTransferFrom, the upto scheme (allowance already approved).

    ``new_ceilings``: every call a ceiling not seen before (the permitted-amount hash is
    cached per ceiling, so this is the worst case; a repeated ceiling is the common one).
    """
    if not new_ceilings:
        req = requirement("upto")
        return per_call_us(
            lambda: sign_upto_payment(
                signer, req, NETWORK, RESOURCE, now=int(time.time()), nonce=new_permit2_nonce()
            )
        )
    reqs = iter([requirement("upto", 10_000 + i) for i in range(BATCH * (BATCHES + 1))])
    return per_call_us(
        lambda: sign_upto_payment(
            signer, next(reqs), NETWORK, RESOURCE, now=int(time.time()), nonce=new_permit2_nonce()
        )
    )


def upto_evm_with_permit(signer: Signer) -> float:
    """Upto plus the sponsored EIP-2612 permit (two signatures per payment)."""
    req = requirement("upto")
    return per_call_us(
        lambda: sign_upto_payment(
            signer,
            req,
            NETWORK,
            RESOURCE,
            now=int(time.time()),
            nonce=new_permit2_nonce(),
            permit_nonce=0,
            extensions=SPONSORING,
        )
    )


def exact_evm_eth_account(key: str) -> float:
    """The exact typed data through eth_account (the reference path), signature only."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    message = {
        "domain": {
            "name": NETWORK.domain_name,
            "version": NETWORK.domain_version,
            "chainId": NETWORK.chain_id,
            "verifyingContract": NETWORK.usdc,
        },
        "types": {
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ]
        },
        "message": {
            "from": Account.from_key(key).address,
            "to": PAY_TO,
            "value": 12_345,
            "validAfter": 0,
            "validBefore": 2**40,
            "nonce": secrets.token_bytes(32),
        },
    }
    account = Account.from_key(key)
    return per_call_us(
        lambda: account.sign_message(
            encode_typed_data(message["domain"], message["types"], message["message"])
        ),
        batch=50,
    )


def upto_evm_eth_account(key: str) -> float:
    """The upto typed data through eth_account, as the official x402 client signs it."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    from x402.mechanisms.evm.constants import (
        PERMIT2_ADDRESS,
        UPTO_PERMIT2_WITNESS_TYPES,
        X402_UPTO_PERMIT2_PROXY_ADDRESS,
    )

    domain = {"name": "Permit2", "chainId": NETWORK.chain_id, "verifyingContract": PERMIT2_ADDRESS}
    account = Account.from_key(key)

    def sign_one() -> object:
        message = {
            "permitted": {"token": NETWORK.usdc, "amount": 12_345},
            "spender": X402_UPTO_PERMIT2_PROXY_ADDRESS,
            "nonce": new_permit2_nonce(),
            "deadline": int(time.time()) + 300,
            "witness": {"to": PAY_TO, "facilitator": FACILITATOR, "validAfter": 0},
        }
        return account.sign_message(encode_typed_data(domain, UPTO_PERMIT2_WITNESS_TYPES, message))

    return per_call_us(sign_one, batch=50)


def import_ms(module_code: str, runs: int = 5) -> float:
    """Median wall time of a fresh interpreter running ``module_code``, minus a bare one."""

    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - started

    bare = statistics.median(run("pass") for _ in range(runs))
    loaded = statistics.median(run(module_code) for _ in range(runs))
    return max(0.0, loaded - bare) * 1e3


def solana_svm(rounds: int = BATCH) -> dict[str, float]:
    """The exact scheme on Solana, by step, and the official client for scale."""
    from solders.hash import Hash
    from solders.keypair import Keypair
    from solders.pubkey import Pubkey
    from x402.mechanisms.svm import KeypairSigner
    from x402.mechanisms.svm.exact.client import ExactSvmScheme
    from x402.mechanisms.svm.mint_cache import MintMetadata
    from x402.schemas import PaymentRequirements

    from blockrun_proxy.x402 import encode_header
    from blockrun_proxy.x402 import parse_payment_required as parse
    from blockrun_proxy.x402.svm import SOLANA_MAINNET as NET
    from blockrun_proxy.x402.svm import SolanaSigner, SvmPolicy, sign_svm_payment
    from blockrun_proxy.x402.svm import transaction as tx
    from blockrun_proxy.x402.svm._base58 import b58encode

    keypair = Keypair()
    signer = SolanaSigner(b58encode(bytes(keypair)))
    blockhash = str(Hash.new_unique())
    memo = "0123456789abcdef0123456789abcdef"

    def raw_for(pay_to: str) -> dict[str, Any]:
        return {
            "scheme": "exact",
            "network": NET.caip2,
            "amount": "2500",
            "asset": NET.usdc_mint,
            "payTo": pay_to,
            "maxTimeoutSeconds": 300,
            "extra": {"feePayer": str(Keypair().pubkey()), "memo": memo},
        }

    raw = raw_for(str(Keypair().pubkey()))
    resource = {"url": "https://sol.blockrun.ai/api/v1/chat/completions"}
    offer = parse(encode_header({"x402Version": 2, "resource": resource, "accepts": [raw]}), None)
    assert offer is not None
    policy = SvmPolicy(frozenset({NET.caip2}), 500_000, "sol.blockrun.ai")
    requirement, network = policy.select(offer, signer.address)

    def pay() -> Any:
        return sign_svm_payment(signer, requirement, network, resource, blockhash=blockhash)

    ours = pay()  # warm: solders loaded, both token accounts cached
    cold_offers = []
    for _ in range(rounds * BATCHES + 1):  # one more for per_call_us's warm-up call
        cold_raw = raw_for(str(Keypair().pubkey()))
        cold_offer = parse(encode_header({"x402Version": 2, "accepts": [cold_raw]}), None)
        assert cold_offer is not None
        cold_offers.append(cold_offer.accepts[0])
    cold_iter = iter(cold_offers)

    def pay_cold() -> Any:
        tx.associated_token_account.cache_clear()  # a new payTo, and our own account too
        return sign_svm_payment(signer, next(cold_iter), network, resource, blockhash=blockhash)

    plan = tx.TransferPlan(
        network,
        signer.address,
        raw["extra"]["feePayer"],
        raw["payTo"],
        2500,
        memo.encode(),
        blockhash,
    )
    message = tx.build_message(plan)
    message_bytes = b"\x80" + bytes(message)

    official = ExactSvmScheme(KeypairSigner(keypair))
    official._mint_cache[(NET.caip2, NET.usdc_mint)] = MintMetadata(
        6, Pubkey.from_string(NET.token_program)
    )
    official._clients[NET.caip2] = object()
    official_req = PaymentRequirements.model_validate(
        dict(raw, extra=dict(raw["extra"], recentBlockhash=blockhash))
    )
    if official.create_payment_payload(official_req)["transaction"] != ours.transaction:
        raise AssertionError("the proxy's transaction differs from the official client's")

    return {
        "policy": per_call_us(lambda: policy.select(offer, signer.address), batch=rounds),
        "payment": per_call_us(pay, batch=rounds),
        "payment, new payTo": per_call_us(pay_cold, batch=rounds),
        "build message": per_call_us(lambda: tx.build_message(plan), batch=rounds),
        "audit": per_call_us(lambda: tx.audit_message(message, plan), batch=rounds),
        "ed25519 sign": per_call_us(lambda: signer.sign_message(message_bytes), batch=rounds),
        "official client": per_call_us(
            lambda: official.create_payment_payload(official_req), rounds
        ),
    }


def per_rail_call() -> dict[str, float]:
    """One paid call's payment through ``rails.Rails`` on each rail, as the gateway makes
    it: policy, budget reservation, signature, sent, commit (an in-memory budget)."""
    import asyncio

    from solders.keypair import Keypair

    from blockrun_proxy.blockhash import Blockhash, BlockhashCache
    from blockrun_proxy.budget import MemoryBudgetStore
    from blockrun_proxy.payer import Payer
    from blockrun_proxy.rails import Rails
    from blockrun_proxy.solana_payer import SolanaPayer
    from blockrun_proxy.x402 import PayerPolicy, encode_header, parse_payment_required
    from blockrun_proxy.x402.svm import SOLANA_MAINNET as NET
    from blockrun_proxy.x402.svm import SolanaSigner, SvmPolicy
    from blockrun_proxy.x402.svm._base58 import b58encode

    class Warm(BlockhashCache):
        async def get(self) -> Blockhash:
            return Blockhash("11111111111111111111111111111111", 1_000, 0.0)

    host = "blockrun.ai"
    budget = MemoryBudgetStore(10**15, 86400)
    evm = Payer(
        Signer("0x" + secrets.token_hex(32)),
        PayerPolicy(networks=frozenset({NETWORK.caip2}), max_amount=10**6, gateway_host=host),
        budget=budget,
    )
    solana = SolanaPayer(
        SolanaSigner(b58encode(bytes(Keypair()))),
        SvmPolicy(frozenset({NET.caip2}), 10**6, host),
        Warm("http://127.0.0.1:9/"),
        budget=budget,
    )
    rails = Rails(evm, solana)
    resource = {"url": f"https://{host}/api/v1/chat/completions"}
    svm_raw = {
        "scheme": "exact",
        "network": NET.caip2,
        "amount": "2500",
        "asset": NET.usdc_mint,
        "payTo": str(Keypair().pubkey()),
        "maxTimeoutSeconds": 300,
        "extra": {"feePayer": str(Keypair().pubkey())},
    }
    offers = {}
    for rail, raw in (("base", requirement("exact").raw), ("solana", svm_raw)):
        doc = {"x402Version": 2, "resource": resource, "accepts": [raw]}
        offers[rail] = parse_payment_required(encode_header(doc), None)

    async def measure(rail: str) -> float:
        offer = offers[rail]
        assert offer is not None

        async def one() -> None:
            call = rails.begin_call()
            requirement_, network = rails.choose(offer)
            payment = await call.sign(requirement_, network, offer.resource)
            call.sent(payment)
            await call.finish()

        await one()  # warm
        samples = []
        for _ in range(BATCHES):
            start = time.perf_counter()
            for _ in range(BATCH):
                await one()
            samples.append((time.perf_counter() - start) / BATCH * 1e6)
        return statistics.median(samples)

    async def run() -> dict[str, float]:
        return {rail: await measure(rail) for rail in ("base", "solana")}

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signing", description=__doc__)
    parser.add_argument("--no-eth-account", action="store_true", help="skip the reference rows")
    args = parser.parse_args(argv)
    key = "0x" + secrets.token_hex(32)  # a throwaway key, never written anywhere
    signer = Signer(key)
    rows: list[tuple[str, float]] = [
        ("exact (EIP-3009), ours", exact_evm(signer)),
        ("upto (Permit2), ours", upto_evm(signer)),
        ("upto, a new ceiling every call, ours", upto_evm(signer, new_ceilings=True)),
        ("upto + EIP-2612 permit, ours", upto_evm_with_permit(signer)),
    ]
    if not args.no_eth_account:
        rows += [
            ("exact, eth_account signature only", exact_evm_eth_account(key)),
            ("upto, eth_account signature only", upto_evm_eth_account(key)),
        ]
    rows += [(f"solana: {step}", micros) for step, micros in solana_svm().items()]
    rows.append(("api key (nothing is signed)", 0.0))
    rows += [(f"per call, through the rail: {r}", us) for r, us in per_rail_call().items()]
    exact = rows[0][1]
    print("| payment | µs per payment | vs exact (ours) |")
    print("|---|---:|---:|")
    for name, micros in rows:
        print(f"| {name} | {micros:.1f} | {micros / exact:.2f}x |")
    solders_ms = import_ms(
        "import solders.keypair, solders.message, solders.transaction, solders.hash"
    )
    print(f"\nsolders import (once, on the first Solana payment): {solders_ms:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
