"""The Solana policy refuses every hostile requirement with the right code, and the hostile
set as a whole gets zero signatures."""

from __future__ import annotations

from typing import Any

import pytest
from support.svm import (
    CAP,
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

from blockrun_proxy.x402 import NETWORKS, Refusal, Requirement
from blockrun_proxy.x402.svm import SvmPolicy, sign_svm_payment
from blockrun_proxy.x402.svm.networks import COMPUTE_BUDGET_PROGRAM, MEMO_PROGRAM, TOKEN_PROGRAM

SIGNER = CountingSigner()
OURS = SIGNER.address
TESTNET = "solana:4uhcVJyU9pJkvQyS88uRDiswHXSCkY3z"  # real, but not in our table
BASE_USDC = NETWORKS["eip155:8453"].usdc


def extra(**values: Any) -> dict[str, Any]:
    return {"extra": values}


# (name, changes to the requirement, policy overrides, refusal code)
HOSTILE: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("foreign mint", {"asset": new_address()}, {}, "asset_mismatch"),
    ("devnet mint on mainnet", {"asset": DEVNET.usdc_mint}, {}, "asset_mismatch"),
    ("an EVM asset", {"asset": BASE_USDC}, {}, "asset_mismatch"),
    ("mint in lower case", {"asset": MAINNET.usdc_mint.lower()}, {}, "asset_mismatch"),
    (
        "network not allowed",
        {"network": DEVNET.caip2, "asset": DEVNET.usdc_mint},
        {},
        "network_not_allowed",
    ),
    (
        "allowed but unknown network",
        {"network": TESTNET},
        {"networks": frozenset({MAINNET.caip2, TESTNET})},
        "unknown_network",
    ),
    ("upto scheme", {"scheme": "upto"}, {}, "scheme_not_supported"),
    ("zero amount", {"amount": "0"}, {}, "amount_invalid"),
    ("over the cap", {"amount": str(CAP + 1)}, {}, "amount_over_cap"),
    ("over u64", {"amount": str(1 << 64)}, {"max_amount": 1 << 70}, "amount_over_cap"),
    ("payTo an EVM address", {"payTo": "0x" + "11" * 20}, {}, "pay_to_not_allowed"),
    ("payTo 31 bytes", {"payTo": "1" + new_address()[:30]}, {}, "pay_to_not_allowed"),
    ("payTo ourselves", {"payTo": OURS}, {}, "pay_to_not_allowed"),
    ("payTo not pinned", {}, {"pay_to": frozenset({new_address()})}, "pay_to_not_allowed"),
    (
        "pins only EVM addresses",
        {},
        {"pay_to": frozenset({"0x" + "11" * 20})},
        "pay_to_not_allowed",
    ),
    ("no feePayer", extra(), {}, "fee_payer_invalid"),
    ("empty feePayer", extra(feePayer=""), {}, "fee_payer_invalid"),
    ("numeric feePayer", extra(feePayer=123), {}, "fee_payer_invalid"),
    ("feePayer not base58", extra(feePayer="0OIl" * 10), {}, "fee_payer_invalid"),
    ("feePayer is our key", extra(feePayer=OURS), {}, "fee_payer_invalid"),
    ("feePayer is the mint", extra(feePayer=MAINNET.usdc_mint), {}, "fee_payer_invalid"),
    ("feePayer is the token program", extra(feePayer=TOKEN_PROGRAM), {}, "fee_payer_invalid"),
    ("feePayer is a program", extra(feePayer=COMPUTE_BUDGET_PROGRAM), {}, "fee_payer_invalid"),
    ("feePayer is the memo program", extra(feePayer=MEMO_PROGRAM), {}, "fee_payer_invalid"),
    (
        "memo over 256 bytes",
        extra(feePayer=new_address(), memo="x" * 257),
        {},
        "memo_invalid",
    ),
    ("no timeout", {"maxTimeoutSeconds": 0}, {}, "timeout_too_long"),
    ("hour-long timeout", {"maxTimeoutSeconds": 3600}, {}, "timeout_too_long"),
    (
        "resource on another host",
        {"resource": "https://evil.example/api/v1/chat/completions"},
        {},
        "resource_host_mismatch",
    ),
]


@pytest.mark.parametrize(
    ("changes", "overrides", "code"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_each_hostile_requirement_is_refused_with_its_code(
    changes: dict[str, Any], overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(Refusal) as exc:
        policy(**overrides).select(offer(raw_requirement(**changes)), OURS)
    assert exc.value.code == code
    assert exc.value.message


def test_the_hostile_set_gets_zero_signatures() -> None:
    """What a payer does with each: select, and sign only what passed."""
    signer = CountingSigner()
    refused = 0
    for _name, changes, overrides, _code in HOSTILE:
        changes = {k: (signer.address if v == OURS else v) for k, v in changes.items()}
        if changes.get("extra", {}).get("feePayer") == OURS:
            changes["extra"] = {"feePayer": signer.address}
        parsed = offer(raw_requirement(**changes))
        try:
            requirement, network = policy(**overrides).select(parsed, signer.address)
        except Refusal:
            refused += 1
            continue
        sign_svm_payment(signer, requirement, network, parsed.resource, blockhash=new_blockhash())
    assert refused == len(HOSTILE)
    assert signer.signatures == 0


def test_a_well_formed_requirement_passes() -> None:
    raw = raw_requirement()
    requirement, network = policy().select(offer(raw), OURS)
    assert network is MAINNET
    assert requirement.pay_to == raw["payTo"]


def test_pins_compare_exactly_and_accept_the_pinned_address() -> None:
    pay_to = new_address()
    pinned = policy(pay_to=frozenset({pay_to, "0x" + "11" * 20}))
    assert pinned.select(offer(raw_requirement(payTo=pay_to)), OURS)[1] is MAINNET
    with pytest.raises(Refusal):  # base58 is case-sensitive: another case is another key
        pinned.select(offer(raw_requirement(payTo=pay_to.swapcase())), OURS)


def test_v1_slugs_name_the_same_networks() -> None:
    raw = raw_requirement(network="solana")
    assert policy().select(offer(raw), OURS)[1] is MAINNET


def test_selection_skips_other_chains_and_unsupported_schemes() -> None:
    evm = {
        "scheme": "exact",
        "network": "eip155:8453",
        "amount": "1000",
        "asset": BASE_USDC,
        "payTo": "0x" + "22" * 20,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    upto = raw_requirement(scheme="upto")
    good = raw_requirement()
    requirement, _ = policy().select(offer(evm, upto, good), OURS)
    assert requirement.raw == good


def test_an_offer_without_solana_options_is_refused() -> None:
    evm = raw_requirement(network="eip155:8453", asset=BASE_USDC, payTo="0x" + "22" * 20)
    with pytest.raises(Refusal) as exc:
        policy().select(offer(evm), OURS)
    assert exc.value.code == "network_not_allowed"


def test_the_first_refusal_is_reported() -> None:
    with pytest.raises(Refusal) as exc:
        policy().select(
            offer(raw_requirement(amount=str(CAP + 1)), raw_requirement(asset=new_address())), OURS
        )
    assert exc.value.code == "amount_over_cap"


def test_a_seller_memo_within_bounds_is_accepted_and_a_non_string_is_ignored() -> None:
    for memo in ("a" * 256, "é" * 128, 42, None, ""):
        raw = raw_requirement(extra={"feePayer": new_address(), "memo": memo})
        policy().select(offer(raw), OURS)


def test_signing_rechecks_what_the_signature_means() -> None:
    """sign_svm_payment alone (without the policy) still refuses a foreign mint, a
    missing fee payer and another scheme."""
    signer = CountingSigner()
    cases = {
        "asset_mismatch": raw_requirement(asset=new_address()),
        "fee_payer_invalid": raw_requirement(extra={}),
        "scheme_not_supported": raw_requirement(scheme="upto"),
    }
    for code, raw in cases.items():
        requirement: Requirement = offer(raw).accepts[0]
        with pytest.raises(Refusal) as exc:
            sign_svm_payment(signer, requirement, MAINNET, RESOURCE, blockhash=new_blockhash())
        assert exc.value.code == code
    assert signer.signatures == 0


def test_policy_is_immutable_and_normalizes_networks() -> None:
    p = SvmPolicy(networks=frozenset({"solana"}), max_amount=1, gateway_host="SOL.blockrun.ai:443")
    assert p.networks == frozenset({MAINNET.caip2})
    assert p.gateway_host == "sol.blockrun.ai"
