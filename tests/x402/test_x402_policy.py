"""The payer policy refuses every hostile requirement with the right code."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from blockrun_proxy.x402 import (
    NETWORKS,
    PayerPolicy,
    PaymentRequired,
    Refusal,
    Requirement,
    usd,
)

BASE = NETWORKS["eip155:8453"]
SEPOLIA = NETWORKS["eip155:84532"]
PAY_TO = "0x1111111111111111111111111111111111111111"
RESOURCE = {"url": "https://blockrun.ai/api/v1/chat/completions"}


def req(**over: Any) -> Requirement:
    fields: dict[str, Any] = {
        "scheme": "exact",
        "network": BASE.caip2,
        "amount": 1000,
        "asset": BASE.usdc,
        "pay_to": PAY_TO,
        "max_timeout_seconds": 300,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    fields.update(over)
    raw = {
        "scheme": fields["scheme"],
        "network": fields["network"],
        "amount": str(fields["amount"]),
        "asset": fields["asset"],
        "payTo": fields["pay_to"],
        "maxTimeoutSeconds": fields["max_timeout_seconds"],
        "extra": fields["extra"],
    }
    return Requirement(raw=fields.pop("raw", raw), **fields)


POLICY = PayerPolicy(
    networks=frozenset({BASE.caip2}),
    max_amount=50_000,  # $0.05
    gateway_host="blockrun.ai",
)


def refusal(policy: PayerPolicy, requirement: Requirement, resource: Any = RESOURCE) -> str:
    with pytest.raises(Refusal) as exc:
        policy.check(requirement, resource)
    assert exc.value.code and exc.value.message
    return exc.value.code


def test_good_requirement_passes() -> None:
    assert POLICY.check(req(), RESOURCE) is BASE
    assert POLICY.check(req(amount=50_000), RESOURCE) is BASE  # the cap itself is allowed
    assert POLICY.check(req(asset=BASE.usdc.lower()), RESOURCE) is BASE
    assert POLICY.check(req(max_timeout_seconds=600), RESOURCE) is BASE


@pytest.mark.parametrize(
    ("hostile", "code"),
    [
        (req(scheme="upto", amount=10), "scheme_not_supported"),
        (req(scheme="EXACT"), "scheme_not_supported"),
        (req(network=SEPOLIA.caip2, asset=SEPOLIA.usdc), "network_not_allowed"),
        (req(network="eip155:1"), "network_not_allowed"),
        (req(asset=SEPOLIA.usdc), "asset_mismatch"),
        (req(asset="0x0000000000000000000000000000000000000000"), "asset_mismatch"),
        (req(asset="USDC"), "asset_mismatch"),
        (req(amount=50_001), "amount_over_cap"),
        (req(amount=2**256 - 1), "amount_over_cap"),
        (req(amount=0), "amount_invalid"),
        (req(amount=-5), "amount_invalid"),
        (req(pay_to="not-an-address"), "pay_to_not_allowed"),
        (req(pay_to="0x12"), "pay_to_not_allowed"),
        (req(pay_to="0x" + "0" * 40), "pay_to_not_allowed"),  # the zero address: burnt
        (req(pay_to="0x" + "0" * 39 + "g"), "pay_to_not_allowed"),
        (req(pay_to="0x" + "11" * 21), "pay_to_not_allowed"),  # 21 bytes
        (req(pay_to="11" * 20), "pay_to_not_allowed"),  # no 0x
        (req(max_timeout_seconds=601), "timeout_too_long"),
        (req(max_timeout_seconds=0), "timeout_too_long"),
        (req(max_timeout_seconds=-1), "timeout_too_long"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_refusal_codes(hostile: Requirement, code: str) -> None:
    assert refusal(POLICY, hostile) == code


def test_unknown_network_when_allowed_but_not_in_table() -> None:
    policy = dataclasses.replace(POLICY, networks=frozenset({BASE.caip2, "eip155:5042"}))
    assert refusal(policy, req(network="eip155:5042")) == "unknown_network"


def test_v1_network_slug_is_the_same_network() -> None:
    assert POLICY.check(req(network="base"), RESOURCE) is BASE
    assert refusal(POLICY, req(network="base-sepolia", asset=SEPOLIA.usdc)) == (
        "network_not_allowed"
    )


def test_amount_over_cap_message_gives_both_in_usd() -> None:
    with pytest.raises(Refusal) as exc:
        POLICY.check(req(amount=1_234_567), RESOURCE)
    assert "1.234567" in exc.value.message and "0.050000" in exc.value.message


def test_pay_to_allow_list_case_insensitive() -> None:
    other = "0x2222222222222222222222222222222222222222"
    policy = dataclasses.replace(POLICY, pay_to=frozenset({PAY_TO.upper().replace("0X", "0x")}))
    assert policy.check(req(), RESOURCE) is BASE
    assert refusal(policy, req(pay_to=other)) == "pay_to_not_allowed"
    assert refusal(POLICY, req(pay_to="garbage")) == "pay_to_not_allowed"
    assert POLICY.check(req(pay_to=other), RESOURCE) is BASE  # empty list = any


@pytest.mark.parametrize(
    "resource",
    [
        {"url": "https://evil.example/api/v1/chat/completions"},
        {"url": "https://blockrun.ai.evil.example/api"},
        {"url": "https://evilblockrun.ai/api"},
        {"url": "https://blockrun.ai@evil.example/api"},
        {"url": "blockrun.ai/api"},  # no scheme: no host to trust
        {"url": 12},
        {"url": "http://[::1"},  # unparseable
    ],
    ids=range(7),
)
def test_resource_host_mismatch(resource: dict[str, Any]) -> None:
    assert refusal(POLICY, req(), resource) == "resource_host_mismatch"


@pytest.mark.parametrize(
    "resource",
    [
        None,
        {},
        {"url": ""},
        {"description": "no url"},
        {"url": "https://BLOCKRUN.AI/api/v1/chat/completions"},
        {"url": "http://blockrun.ai:8443/api"},
        {"url": "https://blockrun.ai./api"},
    ],
    ids=range(7),
)
def test_resource_host_allowed(resource: dict[str, Any] | None) -> None:
    assert POLICY.check(req(), resource) is BASE


def test_gateway_host_with_port_and_case() -> None:
    policy = dataclasses.replace(POLICY, gateway_host="127.0.0.1:8402")
    assert policy.check(req(), {"url": "http://127.0.0.1:8402/v1/chat/completions"}) is BASE
    assert refusal(policy, req(), RESOURCE) == "resource_host_mismatch"
    policy = dataclasses.replace(POLICY, gateway_host="BlockRun.AI")
    assert policy.check(req(), RESOURCE) is BASE


def test_v1_requirement_resource_is_checked_too() -> None:
    raw = dict(req().raw, resource="https://evil.example/pay")
    assert refusal(POLICY, req(raw=raw), None) == "resource_host_mismatch"
    raw = dict(req().raw, resource="https://blockrun.ai/api/v1/chat/completions")
    assert POLICY.check(req(raw=raw), None) is BASE


def offer(*reqs: Requirement, resource: Any = RESOURCE) -> PaymentRequired:
    return PaymentRequired(
        x402_version=2, resource=resource, accepts=reqs, error=None, extensions=None
    )


def test_select_picks_exact_over_upto() -> None:
    upto = req(scheme="upto", amount=10)
    exact = req(amount=2000)
    chosen, network = POLICY.select(offer(upto, exact))
    assert chosen is exact and network is BASE


def test_select_skips_refused_exact_for_a_later_good_one() -> None:
    sepolia = req(network=SEPOLIA.caip2, asset=SEPOLIA.usdc)
    good = req()
    assert POLICY.select(offer(sepolia, good)) == (good, BASE)


def test_select_raises_first_exact_refusal() -> None:
    with pytest.raises(Refusal) as exc:
        POLICY.select(offer(req(scheme="upto"), req(amount=10**9), req(amount=0)))
    assert exc.value.code == "amount_over_cap"


def test_select_only_upto_is_scheme_not_supported() -> None:
    with pytest.raises(Refusal) as exc:
        POLICY.select(offer(req(scheme="upto", amount=1)))
    assert exc.value.code == "scheme_not_supported"
    assert "upto" in exc.value.message


def test_select_uses_the_offer_resource() -> None:
    with pytest.raises(Refusal) as exc:
        POLICY.select(offer(req(), resource={"url": "https://evil.example/"}))
    assert exc.value.code == "resource_host_mismatch"


def test_policy_normalizes_inputs() -> None:
    policy = PayerPolicy(
        networks=frozenset({"base"}),
        max_amount=1,
        gateway_host="BLOCKRUN.AI",
        pay_to=frozenset({"0xABCDEFabcdefABCDEFabcdefABCDEFabcdefABCD"}),
    )
    assert policy.networks == frozenset({BASE.caip2})
    assert policy.gateway_host == "blockrun.ai"
    assert policy.pay_to == frozenset({"0xabcdefabcdefabcdefabcdefabcdefabcdefabcd"})


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (1234, "0.001234"),
        (1_000_000, "1.000000"),
        (12_345_678, "12.345678"),
        (-5, "-0.000005"),
    ],
)
def test_usd(amount: int, text: str) -> None:
    assert usd(amount) == text
