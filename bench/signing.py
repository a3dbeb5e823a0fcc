"""``python -m bench.signing``: what one payment's signature costs on each rail.

Per payment, in microseconds (median of batches), the whole ``PAYMENT-SIGNATURE``
header as the payer builds it after the policy passed:

- Base: the EIP-3009 signer (precomputed domain, coincurve) and its header;
- Solana: ``sign_svm_payment`` (plan, compile the v0 message, audit it, ed25519 via
  solders, base64, header), warm (our token account's address cached) and cold (the
  first payment to a new payTo derives both associated token accounts), with the
  build / audit / sign split, and the official x402 client's ``create_payment_payload``
  for the same transaction (checked byte-identical) for comparison;
- the policy check on each rail, and the import cost of solders (loaded lazily, once).

The API-key rail signs nothing (0). A command, not a test: about 10 s by default.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

BATCHES = 7


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    """Median over BATCHES batches of ``rounds`` calls, in microseconds per call."""
    samples = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        samples.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(samples)


def import_ms(module_code: str, runs: int = 5) -> float:
    """Median wall time of a fresh interpreter running ``module_code``, minus a bare one."""

    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - started

    bare = statistics.median(run("pass") for _ in range(runs))
    loaded = statistics.median(run(module_code) for _ in range(runs))
    return max(0.0, loaded - bare) * 1e3


def bench_base(rounds: int) -> dict[str, float]:
    import secrets

    from blockrun_proxy.x402 import NETWORKS, PayerPolicy, Signer, encode_header, sign_payment
    from blockrun_proxy.x402 import parse_payment_required as parse

    network = NETWORKS["eip155:8453"]
    signer = Signer(secrets.token_bytes(32))
    raw = {
        "scheme": "exact",
        "network": network.caip2,
        "amount": "2500",
        "asset": network.usdc,
        "payTo": "0x" + "11" * 20,
        "maxTimeoutSeconds": 300,
        "extra": {"name": network.domain_name, "version": network.domain_version},
    }
    resource = {"url": "https://blockrun.ai/api/v1/chat/completions"}
    offer = parse(encode_header({"x402Version": 2, "resource": resource, "accepts": [raw]}), None)
    assert offer is not None
    policy = PayerPolicy(frozenset({network.caip2}), 500_000, "blockrun.ai")
    requirement, chosen = policy.select(offer)
    now = int(time.time())
    sign_payment(signer, requirement, chosen, resource, now=now)  # warm: Keccak, domain
    return {
        "policy": per_call_us(lambda: policy.select(offer), rounds),
        "payment": per_call_us(
            lambda: sign_payment(signer, requirement, chosen, resource, now=now), rounds
        ),
    }


def bench_solana(rounds: int) -> dict[str, float]:
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
    for _ in range(rounds * BATCHES):
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
        "policy": per_call_us(lambda: policy.select(offer, signer.address), rounds),
        "payment": per_call_us(pay, rounds),
        "payment, new payTo": per_call_us(pay_cold, rounds),
        "build message": per_call_us(lambda: tx.build_message(plan), rounds),
        "audit": per_call_us(lambda: tx.audit_message(message, plan), rounds),
        "ed25519 sign": per_call_us(lambda: signer.sign_message(message_bytes), rounds),
        "official client": per_call_us(
            lambda: official.create_payment_payload(official_req), rounds
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signing", description=__doc__)
    parser.add_argument("--rounds", type=int, default=300, help="calls per batch")
    args = parser.parse_args(argv)
    base = bench_base(args.rounds)
    solana = bench_solana(args.rounds)
    solders_ms = import_ms(
        "import solders.keypair, solders.message, solders.transaction, solders.hash"
    )
    print("| rail | step | us per payment |")
    print("|---|---|---|")
    for step, value in base.items():
        print(f"| base | {step} | {value:.1f} |")
    for step, value in solana.items():
        print(f"| solana | {step} | {value:.1f} |")
    print("| api key | (nothing is signed) | 0 |")
    print(
        f"\nsolders import (once, on the first Solana payment or at startup): {solders_ms:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
