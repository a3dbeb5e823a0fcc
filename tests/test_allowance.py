"""Permit2 allowance accounting: reserve per call, book what settled, one permit at a time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from blockrun_proxy.allowance import (
    ALLOWANCE_BUSY,
    ALLOWANCE_REQUIRED,
    ChainAllowance,
    Permit2Allowance,
    acquire,
)
from blockrun_proxy.evm_rpc import EvmRpc, RpcError
from blockrun_proxy.testing import FakeRpc, UsdcLedger
from blockrun_proxy.x402 import NETWORKS, PERMIT2_ADDRESS, Refusal

NOW = 1_750_000_000
LATER = NOW + 300
OWNER = "0x1111111111111111111111111111111111111111"
SEPOLIA = NETWORKS["eip155:84532"]


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def tracker(
    allowance: int, permit_nonce: int | None = None, clock: Clock | None = None
) -> Permit2Allowance:
    t = Permit2Allowance(clock=clock or Clock())
    t.update(ChainAllowance(allowance, permit_nonce))
    return t


def refused(t: Permit2Allowance, ceiling: int, *, sponsoring: bool = False) -> Refusal:
    with pytest.raises(Refusal) as exc:
        t.reserve(ceiling, deadline=LATER, sponsoring=sponsoring)
    return exc.value


def test_concurrent_ceilings_never_exceed_the_allowance() -> None:
    t = tracker(10_000)
    a = t.reserve(6_000, deadline=LATER, sponsoring=False)
    assert t.available() == 4_000
    assert refused(t, 4_001).code == ALLOWANCE_REQUIRED
    b = t.reserve(4_000, deadline=LATER, sponsoring=False)
    assert t.available() == 0 and not a.with_permit and not b.with_permit


def test_settlement_books_the_actual_amount_and_frees_the_rest() -> None:
    t = tracker(10_000)
    hold = t.reserve(6_000, deadline=LATER, sponsoring=False)
    t.settled(hold, 1_500)
    assert t.available() == 8_500
    t.settled(hold, 1_500)  # booked once, however often it is reported
    assert t.available() == 8_500


def test_release_frees_the_whole_ceiling() -> None:
    t = tracker(10_000)
    hold = t.reserve(6_000, deadline=LATER, sponsoring=False)
    t.release(hold)
    assert t.available() == 10_000


def test_a_settlement_without_amount_books_the_ceiling_and_reads_again() -> None:
    t = tracker(10_000)
    hold = t.reserve(6_000, deadline=LATER, sponsoring=False)
    assert not t.stale()
    t.settled(hold, None)
    assert t.available() == 4_000 and t.stale()


def test_a_reported_amount_over_the_ceiling_books_the_ceiling() -> None:
    t = tracker(10_000)
    hold = t.reserve(6_000, deadline=LATER, sponsoring=False)
    t.settled(hold, 10**12)
    assert t.available() == 4_000


def test_short_without_sponsoring_names_the_command() -> None:
    refusal = refused(tracker(999), 1_000)
    assert refusal.code == ALLOWANCE_REQUIRED
    assert "blockrun-proxy wallet approve-permit2 --amount-usd" in refusal.message


def test_short_with_sponsoring_signs_one_permit_at_a_time() -> None:
    t = tracker(0, permit_nonce=7)
    first = t.reserve(5_000, deadline=LATER, sponsoring=True)
    assert first.with_permit and first.permit_nonce == 7
    assert refused(t, 1, sponsoring=True).code == ALLOWANCE_BUSY  # same USDC nonce
    t.settled(first, 2_000)
    # The permit set the allowance to 5,000 and the call pulled 2,000 from it.
    assert t.available() == 3_000
    assert not t.reserve(3_000, deadline=LATER, sponsoring=True).with_permit
    t2 = tracker(0, permit_nonce=7)
    t2.settled(t2.reserve(5_000, deadline=LATER, sponsoring=True), 5_000)
    assert t2.reserve(100, deadline=LATER, sponsoring=True).permit_nonce == 8


def test_no_permit_while_calls_draw_on_the_allowance() -> None:
    t = tracker(5_000, permit_nonce=1)
    t.reserve(4_000, deadline=LATER, sponsoring=True)
    assert refused(t, 2_000, sponsoring=True).code == ALLOWANCE_BUSY


def test_a_permit_in_flight_blocks_calls_on_the_old_allowance() -> None:
    t = tracker(1_000, permit_nonce=1)
    t.reserve(5_000, deadline=LATER, sponsoring=True)
    assert refused(t, 10).code == ALLOWANCE_BUSY


def test_a_released_permit_frees_its_slot() -> None:
    t = tracker(0, permit_nonce=3)
    hold = t.reserve(5_000, deadline=LATER, sponsoring=True)
    t.release(hold)
    assert t.reserve(5_000, deadline=LATER, sponsoring=True).permit_nonce == 3


def test_holds_past_their_deadline_lapse() -> None:
    clock = Clock()
    t = tracker(10_000, permit_nonce=0, clock=clock)
    t.reserve(10_000, deadline=NOW + 10, sponsoring=False)
    assert t.available() == 0
    clock.now = NOW + 11
    assert t.available() == 10_000


def test_a_reading_that_shows_the_permit_landed_closes_it() -> None:
    t = tracker(0, permit_nonce=4)
    hold = t.reserve(5_000, deadline=LATER, sponsoring=True)
    t.update(ChainAllowance(3_000, 5))
    assert not t.permit_in_flight and t.available() == 3_000
    t.settled(hold, 2_000)  # already in the reading: not booked twice
    assert t.available() == 3_000


def test_a_reading_goes_stale() -> None:
    clock = Clock()
    t = tracker(1, clock=clock)
    assert not t.stale()
    clock.now += 61
    assert t.stale()
    with pytest.raises(ValueError):
        Permit2Allowance().reserve(1, deadline=LATER, sponsoring=False)


def soon() -> int:
    """A deadline for trackers on the real clock."""
    return int(time.time()) + 300


@pytest.fixture
async def node() -> AsyncIterator[FakeRpc]:
    async with FakeRpc(UsdcLedger(SEPOLIA.caip2)) as fake:
        yield fake


async def test_acquire_reads_the_chain_when_stale(node: FakeRpc) -> None:
    node.ledger.approve(OWNER, PERMIT2_ADDRESS, 8_000)
    t = Permit2Allowance()
    async with EvmRpc(node.url or "") as rpc:
        hold = await acquire(t, rpc, SEPOLIA, OWNER, 5_000, deadline=soon(), sponsoring=False)
        assert not hold.with_permit
        calls = len(node.calls)
        await acquire(t, rpc, SEPOLIA, OWNER, 3_000, deadline=soon(), sponsoring=False)
        assert len(node.calls) == calls  # the reading is fresh: no second read


async def test_acquire_reads_again_before_refusing(node: FakeRpc) -> None:
    t = Permit2Allowance()
    async with EvmRpc(node.url or "") as rpc:
        with pytest.raises(Refusal):
            await acquire(t, rpc, SEPOLIA, OWNER, 5_000, deadline=soon(), sponsoring=False)
        node.ledger.approve(OWNER, PERMIT2_ADDRESS, 5_000)  # the operator approves
        hold = await acquire(t, rpc, SEPOLIA, OWNER, 5_000, deadline=soon(), sponsoring=False)
        assert hold.ceiling == 5_000


async def test_acquire_with_sponsoring_reads_the_permit_nonce(node: FakeRpc) -> None:
    node.ledger.permit_nonces[OWNER.lower()] = 9
    async with EvmRpc(node.url or "") as rpc:
        hold = await acquire(
            Permit2Allowance(), rpc, SEPOLIA, OWNER, 5_000, deadline=soon(), sponsoring=True
        )
    assert hold.permit_nonce == 9


async def test_acquire_with_the_node_down_raises_rpc_error(node: FakeRpc) -> None:
    node.misbehave.error_next = 5
    async with EvmRpc(node.url or "") as rpc:
        with pytest.raises(RpcError):
            await acquire(
                Permit2Allowance(), rpc, SEPOLIA, OWNER, 1, deadline=soon(), sponsoring=False
            )
