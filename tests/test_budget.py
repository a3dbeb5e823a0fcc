"""The rolling spend budget: the in-memory store, and a call's reservations inside the Payer."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from blockrun_proxy.budget import (
    BUCKETS,
    BudgetStore,
    BudgetUsage,
    MemoryBudgetStore,
    Reservation,
    format_duration,
)
from blockrun_proxy.config import Settings, parse_duration
from blockrun_proxy.errors import BudgetStoreUnavailable, PaymentRefused
from blockrun_proxy.payer import Payer
from blockrun_proxy.x402 import NETWORKS, PayerPolicy, Requirement, Signer

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


def payer_with(budget: MemoryBudgetStore, max_amount: int = 10**6) -> Payer:
    policy = PayerPolicy(networks=frozenset({SEPOLIA}), max_amount=max_amount, gateway_host="x")
    return Payer(Signer(secrets.token_bytes(32)), policy, budget=budget)


async def spent(budget: MemoryBudgetStore) -> int:
    return (await budget.usage()).spent


# --- the in-memory store ------------------------------------------------------------------


async def test_reserves_up_to_the_limit_then_refuses_holding_nothing():
    budget = MemoryBudgetStore(10_000, 3600, clock=Clock())
    await budget.reserve(6_000)
    await budget.reserve(4_000)
    assert await spent(budget) == 10_000  # held counts as spent
    with pytest.raises(PaymentRefused) as refused:
        await budget.reserve(1)
    assert refused.value.code == "budget_exceeded"
    assert refused.value.status == 402
    assert "$0.010000 per 1h" in refused.value.message
    assert await spent(budget) == 10_000
    usage = await budget.usage()
    assert (usage.limit, usage.window_seconds) == (10_000, 3600)


async def test_a_released_reservation_is_forgotten_a_committed_one_counts():
    budget = MemoryBudgetStore(100, 60, clock=Clock())
    sent, unsent = await budget.reserve(70), await budget.reserve(30)
    assert sent.id != unsent.id and sent.amount == 70
    await budget.release(unsent)
    await budget.commit(sent)
    assert await spent(budget) == 70
    await budget.reserve(30)


async def test_commit_and_release_are_idempotent_and_the_first_wins():
    budget = MemoryBudgetStore(100, 60, clock=Clock())
    first, second = await budget.reserve(40), await budget.reserve(40)
    await budget.commit(first)
    await budget.commit(first)
    await budget.release(first)  # too late: it was sent
    await budget.release(second)
    await budget.commit(second)  # too late: it was released
    await budget.release(second)
    assert await spent(budget) == 40


async def test_commit_counts_what_was_spent_when_it_is_less():
    budget = MemoryBudgetStore(100, 60, clock=Clock())
    await budget.commit(await budget.reserve(50), spent=20)
    await budget.commit(await budget.reserve(10), spent=99)  # never more than was held
    await budget.commit(await budget.reserve(10), spent=0)
    assert await spent(budget) == 30


async def test_spend_leaves_the_window_after_it_has_fully_passed():
    clock = Clock()
    budget = MemoryBudgetStore(10_000, 3600, clock=clock)
    await budget.commit(await budget.reserve(10_000))
    clock.now += 3600 - 1
    with pytest.raises(PaymentRefused):
        await budget.reserve(1)
    # One bucket later (window / BUCKETS) the whole bucket is out: never earlier.
    clock.now += 1 + 3600 / BUCKETS
    assert await spent(budget) == 0
    await budget.reserve(10_000)


async def test_the_window_counts_from_the_reservation_not_the_commit():
    clock = Clock()
    budget = MemoryBudgetStore(10_000, 3600, clock=clock)
    held = await budget.reserve(10_000)
    clock.now += 600  # a long call: committed ten minutes after it was reserved
    await budget.commit(held)
    clock.now += 3000 + 3600 / BUCKETS
    assert await spent(budget) == 0


async def test_a_reservation_held_for_a_whole_window_stops_counting():
    clock = Clock()
    budget = MemoryBudgetStore(10_000, 60, clock=clock)
    leaked = await budget.reserve(10_000)
    clock.now += 61
    assert await spent(budget) == 0
    await budget.commit(leaked)  # older than the window: it counts no more
    assert await spent(budget) == 0


async def test_never_under_counts_inside_the_window():
    clock = Clock()
    budget = MemoryBudgetStore(10**9, 100, clock=clock)
    history: list[tuple[float, int]] = []
    for step in range(2_000):
        clock.now += 0.37
        await budget.commit(await budget.reserve(step))
        history.append((clock.now, step))
        exact = sum(a for t, a in history if t > clock.now - 100)
        slack = sum(a for t, a in history if clock.now - 100 - 100 / BUCKETS < t <= clock.now - 100)
        assert exact <= await spent(budget) <= exact + slack


async def test_memory_is_bounded_by_the_bucket_count():
    clock = Clock()
    budget = MemoryBudgetStore(10**12, 60, clock=clock)
    for _ in range(20_000):
        clock.now += 0.01
        await budget.commit(await budget.reserve(1))
    assert len(budget._buckets) <= BUCKETS + 1
    assert not budget._held


# --- inside the payer: one call, one nonce, one growing reservation ---------------------------


async def test_a_call_reserves_before_signing_and_commits_what_was_sent():
    budget = MemoryBudgetStore(5_000, 86400, clock=Clock())
    payer = payer_with(budget)
    call = payer.begin_call("r1")
    payment = await call.pay_requirement(requirement(3_000), {})
    assert await spent(budget) == 3_000  # held while the call runs
    call.sent(payment)
    await call.finish()
    assert await spent(budget) == 3_000
    assert (payer.payments_sent, payer.sent_atomic) == (1, 3_000)
    refused = payer.begin_call("r2")
    with pytest.raises(PaymentRefused) as exceeded:
        await refused.pay_requirement(requirement(2_001), {})
    assert exceeded.value.code == "budget_exceeded"
    assert "24h" in exceeded.value.message
    await refused.finish()
    assert await spent(budget) == 3_000


async def test_a_call_that_never_sent_releases_everything_and_counts_nothing():
    budget = MemoryBudgetStore(5_000, 86400, clock=Clock())
    payer = payer_with(budget)
    call = payer.begin_call()
    await call.pay_requirement(requirement(3_000), {})
    await call.pay_requirement(requirement(4_000), {})
    await call.finish()
    assert await spent(budget) == 0
    assert (payer.payments_sent, payer.sent_atomic) == (0, 0)


async def test_re_signing_a_call_reuses_its_nonce_and_reserves_only_the_difference():
    budget = MemoryBudgetStore(5_000, 86400, clock=Clock())
    payer = payer_with(budget)
    call = payer.begin_call()
    first = await call.pay_requirement(requirement(3_000), {})
    call.sent(first)  # sent, refused as not used
    second = await call.pay_requirement(requirement(4_500), {})  # 3,000 + 4,500 > 5,000
    lower = await call.pay_requirement(requirement(1_000), {})
    assert first.authorization.nonce == second.authorization.nonce == lower.authorization.nonce
    assert await spent(budget) == 4_500  # the call holds its largest amount, not the sum
    call.sent(second)
    await call.finish()
    assert await spent(budget) == 4_500
    assert (payer.payments_sent, payer.sent_atomic) == (1, 4_500)
    other = payer.begin_call()
    await other.pay_requirement(requirement(500), {})
    assert other.nonce != call.nonce


async def test_only_what_was_sent_is_committed():
    budget = MemoryBudgetStore(5_000, 86400, clock=Clock())
    payer = payer_with(budget)
    call = payer.begin_call()
    call.sent(await call.pay_requirement(requirement(3_000), {}))
    await call.pay_requirement(requirement(4_000), {})  # signed, never reached the gateway
    await call.finish()
    assert await spent(budget) == 3_000
    assert payer.sent_atomic == 3_000


async def test_on_sent_hears_the_amount_that_may_be_gone():
    heard: list[int] = []
    payer = payer_with(MemoryBudgetStore(5_000, 86400, clock=Clock()))
    call = payer.begin_call(on_sent=heard.append)
    payment = await call.pay_requirement(requirement(3_000), {})
    assert heard == []
    call.sent(payment)
    call.sent(payment)  # a replay of the same signature
    assert heard == [3_000]


async def test_a_policy_refusal_spends_nothing():
    budget = MemoryBudgetStore(5_000, 86400, clock=Clock())
    payer = payer_with(budget, max_amount=1_000)
    with pytest.raises(PaymentRefused) as refused:
        await payer.begin_call().pay_requirement(requirement(2_000), {})
    assert refused.value.code == "amount_over_cap"
    assert await spent(budget) == 0


async def test_a_failed_signature_releases_its_reservation():
    budget = MemoryBudgetStore(5_000, 86400, clock=Clock())
    payer = payer_with(budget)
    upto = requirement(3_000)
    upto = Requirement("upto", *list(dataclasses.astuple(upto))[1:])  # the signer refuses it
    call = payer.begin_call()
    with pytest.raises(PaymentRefused) as refused:
        await call.sign(upto, NETWORKS[SEPOLIA], {})
    assert refused.value.code == "scheme_not_supported"
    assert await spent(budget) == 0
    await call.finish()
    assert await spent(budget) == 0


class DownStore:
    """A shared store that cannot be reached."""

    limit = 5_000
    window_seconds = 60.0

    async def reserve(self, amount: int) -> Reservation:
        raise BudgetStoreUnavailable("the budget store is down")

    async def commit(self, reservation: Reservation, spent: int | None = None) -> None:
        raise BudgetStoreUnavailable("the budget store is down")

    async def release(self, reservation: Reservation) -> None:
        raise BudgetStoreUnavailable("the budget store is down")

    async def usage(self) -> BudgetUsage:
        raise BudgetStoreUnavailable("the budget store is down")


async def test_a_store_that_cannot_answer_means_no_signature():
    store: BudgetStore = DownStore()
    policy = PayerPolicy(networks=frozenset({SEPOLIA}), max_amount=10**6, gateway_host="x")
    payer = Payer(Signer(secrets.token_bytes(32)), policy, budget=store)
    call = payer.begin_call()
    with pytest.raises(BudgetStoreUnavailable) as down:
        await call.pay_requirement(requirement(1_000), {})
    assert down.value.status == 503 and down.value.code == "budget_store_unavailable"
    assert call.signed == []


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
