"""The upto policy is as strict as exact's, and a hostile upto requirement gets no signature."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from blockrun_proxy.x402 import NETWORKS, PayerPolicy, PaymentRequired, Refusal, Requirement, Signer
from blockrun_proxy.x402.payment import sign_payment
from blockrun_proxy.x402.permit2 import X402_UPTO_PERMIT2_PROXY_ADDRESS
from blockrun_proxy.x402.upto import sign_upto_payment

BASE = NETWORKS["eip155:8453"]
SEPOLIA = NETWORKS["eip155:84532"]
PAY_TO = "0x1111111111111111111111111111111111111111"
FACILITATOR = "0x2222222222222222222222222222222222222222"
RESOURCE = {"url": "https://blockrun.ai/api/v1/chat/completions"}
ZERO = "0x" + "00" * 20


def req(scheme: str = "upto", extra: dict[str, Any] | None = None, **over: Any) -> Requirement:
    fields: dict[str, Any] = {
        "network": BASE.caip2,
        "amount": 20_000,
        "asset": BASE.usdc,
        "pay_to": PAY_TO,
        "max_timeout_seconds": 300,
    }
    fields.update(over)
    if extra is None:
        extra = {"assetTransferMethod": "permit2", "facilitatorAddress": FACILITATOR}
    raw = {
        "scheme": scheme,
        "network": fields["network"],
        "amount": str(fields["amount"]),
        "asset": fields["asset"],
        "payTo": fields["pay_to"],
        "maxTimeoutSeconds": fields["max_timeout_seconds"],
        "extra": {"name": "USD Coin", "version": "2", **extra},
    }
    return Requirement(scheme=scheme, extra=raw["extra"], raw=raw, **fields)


def policy(*schemes: str, **over: Any) -> PayerPolicy:
    fields: dict[str, Any] = {
        "networks": frozenset({BASE.caip2}),
        "max_amount": 50_000,
        "gateway_host": "blockrun.ai",
        "schemes": schemes or ("upto",),
    }
    fields.update(over)
    return PayerPolicy(**fields)


def offer(*reqs: Requirement) -> PaymentRequired:
    return PaymentRequired(
        x402_version=2, resource=RESOURCE, accepts=reqs, error=None, extensions=None
    )


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every digest the wallet signs, whatever code path asks."""
    signed: list[bytes] = []
    original = Signer.sign_digest

    def counting(self: Signer, digest: bytes) -> str:
        signed.append(digest)
        return original(self, digest)

    monkeypatch.setattr(Signer, "sign_digest", counting)
    yield signed


def test_good_upto_requirement_passes() -> None:
    assert policy().check(req(), RESOURCE) is BASE
    assert policy().check(req(amount=50_000), RESOURCE) is BASE  # the cap itself
    spender_named = req(
        extra={
            "assetTransferMethod": "permit2",
            "facilitatorAddress": FACILITATOR,
            "spender": X402_UPTO_PERMIT2_PROXY_ADDRESS.lower(),
        }
    )
    assert policy().check(spender_named, RESOURCE) is BASE


HOSTILE = [
    (req(amount=50_001), "amount_over_cap"),
    (req(amount=2**256 - 1), "amount_over_cap"),
    (req(amount=0), "amount_invalid"),
    (req(network="eip155:1"), "network_not_allowed"),
    (req(network=SEPOLIA.caip2, asset=SEPOLIA.usdc), "network_not_allowed"),
    (req(asset=SEPOLIA.usdc), "asset_mismatch"),
    (req(pay_to=ZERO), "pay_to_not_allowed"),
    (req(pay_to="nobody"), "pay_to_not_allowed"),
    (req(max_timeout_seconds=86_400), "timeout_too_long"),
    (req(extra={"assetTransferMethod": "permit2"}), "facilitator_invalid"),
    (
        req(extra={"assetTransferMethod": "permit2", "facilitatorAddress": ZERO}),
        "facilitator_invalid",
    ),
    (req(extra={"assetTransferMethod": "permit2", "facilitatorAddress": 7}), "facilitator_invalid"),
    (req(extra={"facilitatorAddress": FACILITATOR}), "asset_transfer_method_unsupported"),
    (
        req(extra={"assetTransferMethod": "eip3009", "facilitatorAddress": FACILITATOR}),
        "asset_transfer_method_unsupported",
    ),
    (
        req(
            extra={
                "assetTransferMethod": "permit2",
                "facilitatorAddress": FACILITATOR,
                "spender": "0x3333333333333333333333333333333333333333",
            }
        ),
        "spender_mismatch",
    ),
]


@pytest.mark.parametrize(("hostile", "code"), HOSTILE)
def test_hostile_upto_requirement_gets_no_signature(
    hostile: Requirement, code: str, signatures: list[bytes], wallet_key: str
) -> None:
    with pytest.raises(Refusal) as exc:
        requirement, network = policy().select(offer(hostile))
        sign_upto_payment(Signer(wallet_key), requirement, network, RESOURCE, now=1, nonce=1)
    assert exc.value.code == code
    assert signatures == []


def test_pinned_pay_to_applies_to_upto() -> None:
    pinned = policy(pay_to=frozenset({"0x4444444444444444444444444444444444444444"}))
    with pytest.raises(Refusal) as exc:
        pinned.check(req(), RESOURCE)
    assert exc.value.code == "pay_to_not_allowed"


def test_resource_host_applies_to_upto() -> None:
    with pytest.raises(Refusal) as exc:
        policy().check(req(), {"url": "https://evil.example/v1/chat/completions"})
    assert exc.value.code == "resource_host_mismatch"


def test_upto_is_refused_unless_opted_in() -> None:
    with pytest.raises(Refusal) as exc:
        policy("exact").check(req(), RESOURCE)
    assert exc.value.code == "scheme_not_supported" and "'exact'" in exc.value.message


def test_upto_only_refuses_an_exact_only_offer() -> None:
    with pytest.raises(Refusal) as exc:
        policy("upto").select(offer(req("exact", extra={})))
    assert exc.value.code == "scheme_not_supported"


def test_selection_follows_the_scheme_preference() -> None:
    exact, upto = req("exact", extra={}), req()
    assert policy("upto", "exact").select(offer(exact, upto))[0] is upto
    assert policy("exact", "upto").select(offer(exact, upto))[0] is exact
    assert policy("exact").select(offer(upto, exact))[0] is exact


def test_auto_falls_back_to_exact_when_upto_is_refused() -> None:
    exact, bad_upto = req("exact", extra={}), req(extra={"assetTransferMethod": "permit2"})
    assert policy("upto", "exact").select(offer(exact, bad_upto))[0] is exact


def test_the_most_preferred_schemes_refusal_is_reported() -> None:
    exact = req("exact", extra={}, amount=10**9)
    upto = req(extra={"assetTransferMethod": "permit2"})
    with pytest.raises(Refusal) as exc:
        policy("upto", "exact").select(offer(exact, upto))
    assert exc.value.code == "facilitator_invalid"


def test_upto_requirement_is_never_signed_as_an_exact_transfer(
    signatures: list[bytes], wallet_key: str
) -> None:
    with pytest.raises(Refusal) as exc:
        sign_payment(Signer(wallet_key), req(), BASE, RESOURCE, now=1)
    assert exc.value.code == "scheme_not_supported"
    with pytest.raises(Refusal):
        sign_upto_payment(
            Signer(wallet_key), req("exact", extra={}), BASE, RESOURCE, now=1, nonce=1
        )
    assert signatures == []


def test_the_signer_rechecks_what_the_signature_means(
    signatures: list[bytes], wallet_key: str
) -> None:
    """Called without the policy, the signer still refuses a foreign asset or spender."""
    signer = Signer(wallet_key)
    for hostile, _code in HOSTILE:
        if hostile.network != BASE.caip2 or hostile.amount > 50_000:
            continue  # the network and the cap are the policy's (it knows the settings)
        if hostile.max_timeout_seconds > 600:
            continue
        with pytest.raises(Refusal):
            sign_upto_payment(signer, hostile, BASE, RESOURCE, now=1, nonce=1)
    assert signatures == []


@pytest.mark.parametrize(
    "schemes", [(), ("exact", "exact"), ("batch",), ("EXACT",)], ids=lambda s: repr(s)
)
def test_policy_rejects_bad_scheme_lists(schemes: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        policy(schemes=schemes)
