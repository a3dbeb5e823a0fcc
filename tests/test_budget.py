"""The rolling spend budget, alone and inside the Payer (checked before every signature)."""

from __future__ import annotations

import secrets

import pytest

from blockrun_proxy.budget import BUCKETS, SpendBudget, format_duration
from blockrun_proxy.config import Settings, parse_duration
from blockrun_proxy.errors import PaymentRefused
from blockrun_proxy.payer import Payer
from blockrun_proxy.x402 import PayerPolicy, Requirement, Signer

SEPOLIA = "eip155:84532"
SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAY_TO = "0x000000000000000000000000000000000000dEaD"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def requirement(amount: int) -> Requirement:
    raw = {
        "scheme": "exact",
        "network": SEPOLIA,
        "amount": str(amount),
        "asset": SEPOLIA_USDC,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2"},
    }
    return Requirement("exact", SEPOLIA, amount, SEPOLIA_USDC, PAY_TO, 300, raw["extra"], raw)


def test_reserves_up_to_the_limit_then_refuses_without_recording():
    budget = SpendBudget(10_000, 3600, clock=Clock())
    budget.reserve(6_000)
    budget.reserve(4_000)
    assert budget.spent() == 10_000
    with pytest.raises(PaymentRefused) as refused:
        budget.reserve(1)
    assert refused.value.code == "budget_exceeded"
    assert refused.value.status == 402
    assert "$0.010000 per 1h" in refused.value.message
    assert budget.spent() == 10_000


def test_spend_leaves_the_window_after_it_has_fully_passed():
    clock = Clock()
    budget = SpendBudget(10_000, 3600, clock=clock)
    budget.reserve(10_000)
    clock.now += 3600 - 1
    with pytest.raises(PaymentRefused):
        budget.reserve(1)
    # One bucket later (window / BUCKETS) the whole bucket is out: never earlier.
    clock.now += 1 + 3600 / BUCKETS
    assert budget.spent() == 0
    budget.reserve(10_000)


def test_never_under_counts_inside_the_window():
    clock = Clock()
    budget = SpendBudget(10**9, 100, clock=clock)
    history: list[tuple[float, int]] = []
    for step in range(2_000):
        clock.now += 0.37
        budget.reserve(step)
        history.append((clock.now, step))
        exact = sum(a for t, a in history if t > clock.now - 100)
        slack = sum(a for t, a in history if clock.now - 100 - 100 / BUCKETS < t <= clock.now - 100)
        assert exact <= budget.spent() <= exact + slack


def test_memory_is_bounded_by_the_bucket_count():
    clock = Clock()
    budget = SpendBudget(10**12, 60, clock=clock)
    for _ in range(20_000):
        clock.now += 0.01
        budget.reserve(1)
    assert len(budget._buckets) <= BUCKETS + 1


def test_refund_undoes_a_reservation():
    budget = SpendBudget(100, 60, clock=Clock())
    budget.reserve(70)
    budget.refund(70)
    assert budget.spent() == 0


def test_payer_checks_the_budget_before_signing_and_counts_what_it_signed():
    policy = PayerPolicy(networks=frozenset({SEPOLIA}), max_amount=10**6, gateway_host="x")
    budget = SpendBudget(5_000, 86400, clock=Clock())
    payer = Payer(Signer(secrets.token_bytes(32)), policy, budget=budget)
    payer.pay_requirement(requirement(3_000), {})
    with pytest.raises(PaymentRefused) as refused:
        payer.pay_requirement(requirement(2_001), {})
    assert refused.value.code == "budget_exceeded"
    assert "24h" in refused.value.message
    assert payer.signatures == 1
    assert budget.spent() == 3_000
    payer.pay_requirement(requirement(2_000), {})
    assert budget.spent() == 5_000


def test_a_policy_refusal_spends_nothing():
    policy = PayerPolicy(networks=frozenset({SEPOLIA}), max_amount=1_000, gateway_host="x")
    budget = SpendBudget(5_000, 86400, clock=Clock())
    payer = Payer(Signer(secrets.token_bytes(32)), policy, budget=budget)
    with pytest.raises(PaymentRefused) as refused:
        payer.pay_requirement(requirement(2_000), {})
    assert refused.value.code == "amount_over_cap"
    assert budget.spent() == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400.0), ("30m", 1800.0), ("3600s", 3600.0), ("1d", 86400.0), ("90", 90.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "0", "1w", "1.2.3h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (86400, 1800, 90, 3600.5)] == [
        "24h",
        "30m",
        "90s",
        "3600.5s",
    ]


def test_settings_check_budget_and_tolerance():
    from decimal import Decimal

    Settings(budget_usd=Decimal("5"), presign_tolerance_usd=Decimal("0.0001")).check()
    for bad in (
        {"budget_usd": Decimal("-1")},
        {"budget_window_seconds": 0.0},
        {"presign_tolerance_usd": Decimal("-0.1")},
        {"presign_tolerance_usd": Decimal("1")},  # above --max-price-usd
    ):
        with pytest.raises(ValueError):
            Settings(**bad).check()
