"""A call's upto payments inside the Payer: one Permit2 nonce, one scheme, the allowance
held from signing to settlement, the budget keeping only what settled."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from blockrun_proxy.budget import MemoryBudgetStore
from blockrun_proxy.errors import AllowanceUnknown, PaymentRefused
from blockrun_proxy.evm_rpc import EvmRpc
from blockrun_proxy.payer import Payer
from blockrun_proxy.testing import DEFAULT_FACILITATOR, FakeRpc, UsdcLedger
from blockrun_proxy.x402 import (
    NETWORKS,
    PERMIT2_ADDRESS,
    PayerPolicy,
    PaymentResponse,
    Requirement,
    SignedPayment,
    SignedUptoPayment,
    Signer,
)

SEPOLIA = NETWORKS["eip155:84532"]
PAY_TO = "0x000000000000000000000000000000000000dEaD"
ALLOWANCE = 100_000


def requirement(amount: int, scheme: str = "upto") -> Requirement:
    extra: dict[str, Any] = {"name": "USDC", "version": "2"}
    if scheme == "upto":
        extra |= {"assetTransferMethod": "permit2", "facilitatorAddress": DEFAULT_FACILITATOR}
    raw = {
        "scheme": scheme,
        "network": SEPOLIA.caip2,
        "amount": str(amount),
        "asset": SEPOLIA.usdc,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": extra,
    }
    return Requirement(scheme, SEPOLIA.caip2, amount, SEPOLIA.usdc, PAY_TO, 300, extra, raw)


def settlement(amount: int | None) -> PaymentResponse:
    return PaymentResponse(True, "0x" + "ab" * 32, SEPOLIA.caip2, amount, None, None)


@pytest.fixture
async def rpc() -> AsyncIterator[tuple[FakeRpc, EvmRpc]]:
    async with FakeRpc(UsdcLedger(SEPOLIA.caip2)) as node, EvmRpc(node.url or "") as client:
        yield node, client


def payer(
    rpc: tuple[FakeRpc, EvmRpc] | None,
    *schemes: str,
    budget: MemoryBudgetStore | None = None,
    allowance: int = ALLOWANCE,
) -> Payer:
    signer = Signer(secrets.token_bytes(32))
    if rpc is not None:
        rpc[0].ledger.approve(signer.address, PERMIT2_ADDRESS, allowance)
    policy = PayerPolicy(
        networks=frozenset({SEPOLIA.caip2}),
        max_amount=10**6,
        gateway_host="x",
        schemes=schemes or ("upto",),
    )
    return Payer(signer, policy, budget=budget, rpc=None if rpc is None else rpc[1])


async def test_a_call_signs_every_ceiling_under_one_permit2_nonce(rpc) -> None:
    the_payer = payer(rpc)
    call = the_payer.begin_call()
    first = await call.sign(requirement(2_000), SEPOLIA, {})
    call.sent(first)
    call.not_used(first)  # the gateway refused it, unused: a fresh 402 asks for more
    second = await call.sign(requirement(2_500), SEPOLIA, {})
    assert isinstance(first, SignedUptoPayment) and isinstance(second, SignedUptoPayment)
    assert first.nonce == second.nonce == call.permit2_nonce
    assert the_payer.begin_call() is not call
    other = await the_payer.begin_call().sign(requirement(2_000), SEPOLIA, {})
    assert isinstance(other, SignedUptoPayment) and other.nonce != first.nonce


async def test_a_call_never_mixes_schemes(rpc) -> None:
    the_payer = payer(rpc, "upto", "exact")
    call = the_payer.begin_call()
    exact = await call.sign(requirement(2_000, "exact"), SEPOLIA, {})
    assert isinstance(exact, SignedPayment)
    # A fresh 402 whose upto requirement the policy prefers: the call stays exact, so its
    # second authorization shares the first one's EIP-3009 nonce.
    choices = [(requirement(2_100), SEPOLIA), (requirement(2_100, "exact"), SEPOLIA)]
    again = await call.sign_first(choices, {})
    assert isinstance(again, SignedPayment)
    assert again.authorization.nonce == exact.authorization.nonce
    with pytest.raises(PaymentRefused) as refused:
        await call.sign_first([(requirement(2_100), SEPOLIA)], {})
    assert refused.value.code == "scheme_not_supported"
    with pytest.raises(PaymentRefused):
        await call.sign(requirement(2_100), SEPOLIA, {})


async def test_auto_signs_exact_when_the_allowance_cannot_take_the_ceiling(rpc) -> None:
    the_payer = payer(rpc, "upto", "exact", allowance=1_000)
    call = the_payer.begin_call()
    choices = [(requirement(2_000), SEPOLIA), (requirement(2_000, "exact"), SEPOLIA)]
    payment = await call.sign_first(choices, {})
    assert isinstance(payment, SignedPayment) and call.scheme == "exact"
    assert the_payer.upto_fallbacks == 1
    assert call.permit2_nonce is None  # nothing was signed in upto


async def test_a_budget_refusal_is_not_a_reason_to_pay_exact(rpc) -> None:
    budget = MemoryBudgetStore(1_000, 3600)
    call = payer(rpc, "upto", "exact", budget=budget).begin_call()
    choices = [(requirement(2_000), SEPOLIA), (requirement(2_000, "exact"), SEPOLIA)]
    with pytest.raises(PaymentRefused) as refused:
        await call.sign_first(choices, {})
    assert refused.value.code == "budget_exceeded"


async def test_upto_without_an_rpc_signs_nothing() -> None:
    call = payer(None).begin_call()
    with pytest.raises(AllowanceUnknown):
        await call.sign(requirement(2_000), SEPOLIA, {})
    assert call.signed == []


async def test_the_allowance_is_held_until_settled_and_books_the_actual_cost(rpc) -> None:
    the_payer = payer(rpc)
    tracker = the_payer.allowance(SEPOLIA)
    call = the_payer.begin_call()
    payment = await call.sign(requirement(30_000), SEPOLIA, {})
    assert tracker.available() == ALLOWANCE - 30_000
    call.sent(payment)
    assert call.settled(payment, settlement(1_234)) == 1_234
    assert call.cost_source == "settled"
    assert tracker.available() == ALLOWANCE - 1_234 and not tracker.stale()
    await call.finish()
    assert tracker.available() == ALLOWANCE - 1_234


async def test_a_refused_ceiling_frees_its_hold(rpc) -> None:
    the_payer = payer(rpc)
    tracker = the_payer.allowance(SEPOLIA)
    call = the_payer.begin_call()
    payment = await call.sign(requirement(30_000), SEPOLIA, {})
    call.sent(payment)
    call.not_used(payment)
    assert tracker.available() == ALLOWANCE
    await call.finish()
    assert tracker.available() == ALLOWANCE


async def test_finish_books_a_sent_ceiling_whose_outcome_is_unknown(rpc) -> None:
    the_payer = payer(rpc)
    tracker = the_payer.allowance(SEPOLIA)
    call = the_payer.begin_call()
    call.sent(await call.sign(requirement(30_000), SEPOLIA, {}))
    await call.finish()  # a timeout, a replay refusal: it may have settled, in full
    assert tracker.available() == ALLOWANCE - 30_000 and tracker.stale()
    unsent = the_payer.begin_call()
    await unsent.sign(requirement(40_000), SEPOLIA, {})  # reads the chain again: nothing moved
    assert tracker.available() == ALLOWANCE - 40_000
    await unsent.finish()  # never left the proxy
    assert tracker.available() == ALLOWANCE


async def test_the_budget_keeps_the_settled_amount_and_releases_the_rest(rpc) -> None:
    budget = MemoryBudgetStore(50_000, 3600)
    call = payer(rpc, budget=budget).begin_call()
    payment = await call.sign(requirement(30_000), SEPOLIA, {})
    assert (await budget.usage()).spent == 30_000  # the ceiling is reserved
    call.sent(payment)
    call.settled(payment, settlement(700))
    await call.finish()
    assert (await budget.usage()).spent == 700


async def test_without_an_amount_the_ceiling_stands_in(rpc) -> None:
    budget = MemoryBudgetStore(50_000, 3600)
    the_payer = payer(rpc, budget=budget)
    seen: list[int] = []
    the_payer.after_settlement = lambda: seen.append(1)
    call = the_payer.begin_call()
    payment = await call.sign(requirement(30_000), SEPOLIA, {})
    call.sent(payment)
    assert call.settled(payment, settlement(None)) == 30_000
    assert call.cost_source == "ceiling" and seen == [1]
    assert the_payer.allowance(SEPOLIA).stale()
    await call.finish()
    assert (await budget.usage()).spent == 30_000


async def test_a_sponsored_permit_rides_along_when_the_allowance_is_short(rpc) -> None:
    the_payer = payer(rpc, allowance=0)
    rpc[0].ledger.permit_nonces[(the_payer.address or "").lower()] = 4
    sponsoring = {"eip2612GasSponsoring": {"info": {"description": "permit", "version": "1"}}}
    payment = await the_payer.begin_call().sign(requirement(30_000), SEPOLIA, {}, sponsoring)
    assert isinstance(payment, SignedUptoPayment)
    assert payment.permit is not None
    assert (payment.permit.value, payment.permit.nonce) == (30_000, 4)
    # One permit in flight per wallet: the next call waits its turn (auto pays exact).
    with pytest.raises(PaymentRefused) as busy:
        await the_payer.begin_call().sign(requirement(1_000), SEPOLIA, {}, sponsoring)
    assert busy.value.code == "permit2_allowance_busy"
