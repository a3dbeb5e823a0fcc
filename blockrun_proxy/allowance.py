"""The Permit2 allowance an upto payment draws on, reserved per call.

An upto payment settles only if ``USDC.allowance(wallet, Permit2)`` covers what it pulls
(the official verifier refuses the payment with ``permit2_allowance_required`` unless the
allowance covers the whole ceiling, or a sponsored EIP-2612 permit rides along). Reading
the chain before every call would add an RPC round trip to every paid call, so a
``Permit2Allowance`` keeps the last reading and accounts locally, like the spend budget:

- ``reserve`` takes a call's ceiling out of what is available (reading minus what settled
  since, minus the ceilings in flight), or decides the call must carry a permit, or
  refuses; all in one synchronous step, so concurrent calls cannot share a remainder;
- ``settled`` books what the settlement reports (the ceiling when it reports nothing);
  ``release`` forgets a hold whose payment provably never settles.

A sponsored permit SETS the allowance (ERC-20 approve semantics) to its own ceiling when
it lands, under every other call still drawing on the old allowance, and every permit
signs over the same ``nonces(owner)`` until one lands. So (as blockrun-llm learned on
Base mainnet) at most one permit is in flight per wallet and network, and never beside a
call spending the existing allowance: such a call is refused ``permit2_allowance_busy``,
which an ``auto`` payer answers with exact. A bounded ``approve-permit2`` avoids all of it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from blockrun_proxy.errors import ALLOWANCE_BUSY, ALLOWANCE_REQUIRED
from blockrun_proxy.x402 import PERMIT2_ADDRESS, Network, Refusal, usd

if TYPE_CHECKING:
    from blockrun_proxy.evm_rpc import EvmRpc

# A reading is trusted this long; after it, the next reserve reads the chain again.
DEFAULT_READ_TTL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ChainAllowance:
    """One reading of the chain."""

    allowance: int  # USDC.allowance(wallet, Permit2)
    permit_nonce: int | None  # USDC.nonces(wallet); read only when a permit may be signed


@dataclass(eq=False, slots=True)
class AllowanceHold:
    """One call's claim on the allowance, from ``reserve`` until settled or released."""

    id: int
    ceiling: int
    deadline: int  # unix seconds: the payment cannot settle after this
    permit_nonce: int | None  # set: the call signs an EIP-2612 permit over this USDC nonce
    open: bool = True

    @property
    def with_permit(self) -> bool:
        return self.permit_nonce is not None


async def read_allowance(
    rpc: EvmRpc, network: Network, owner: str, *, with_nonce: bool
) -> ChainAllowance:
    """The wallet's allowance to Permit2 (and its EIP-2612 nonce when a permit may follow)."""
    allowance = await rpc.allowance(network.usdc, owner, PERMIT2_ADDRESS)
    nonce = await rpc.nonces(network.usdc, owner) if with_nonce else None
    return ChainAllowance(allowance, nonce)


class Permit2Allowance:
    """The allowance of one wallet on one network, as this process accounts for it."""

    def __init__(
        self,
        *,
        read_ttl: float = DEFAULT_READ_TTL_SECONDS,
        reread_gap: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.read_ttl = read_ttl
        # ``acquire`` reads the chain again before refusing for want of allowance (the
        # operator may just have approved), at most once per this many seconds: a payer
        # that falls back to exact on every call (auto, allowance short) would otherwise
        # add an RPC round trip to each of them.
        self.reread_gap = reread_gap
        self._clock = clock
        self.reading: ChainAllowance | None = None
        self._read_at = 0.0
        self._spent = 0  # settled since the reading
        self._holds: dict[int, AllowanceHold] = {}
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- readings

    def stale(self) -> bool:
        """True when the next reserve should read the chain first."""
        return self.reading is None or self._clock() - self._read_at >= self.read_ttl

    def may_reread(self) -> bool:
        """Whether a refusal for want of allowance may read the chain once more first."""
        return self.reading is None or self._clock() - self._read_at >= self.reread_gap

    def update(self, reading: ChainAllowance) -> None:
        """A fresh chain reading. A permit whose nonce the chain has moved past has landed
        (settleWithPermit is atomic: its settlement is in this reading too)."""
        self.reading = reading
        self._read_at = self._clock()
        self._spent = 0
        if reading.permit_nonce is not None:
            for hold in list(self._holds.values()):
                if hold.with_permit and reading.permit_nonce > (hold.permit_nonce or 0):
                    self._close(hold)

    def available(self) -> int | None:
        """What a new call may still reserve without a permit; None before any reading."""
        if self.reading is None:
            return None
        self._expire()
        in_flight = sum(h.ceiling for h in self._holds.values() if not h.with_permit)
        return self.reading.allowance - self._spent - in_flight

    @property
    def permit_in_flight(self) -> bool:
        self._expire()
        return any(h.with_permit for h in self._holds.values())

    # -------------------------------------------------------------------- holds

    def reserve(self, ceiling: int, *, deadline: int, sponsoring: bool) -> AllowanceHold:
        """Claim ``ceiling`` for one call, or a permit slot, or raise Refusal.

        ``sponsoring``: the 402 declares ``eip2612GasSponsoring`` (a permit may be sent).
        Call after ``update`` (see ``acquire``): without a reading nothing is reserved.
        """
        available = self.available()
        if available is None:
            raise ValueError("reserve needs a chain reading first (update)")
        if self.permit_in_flight:
            _refuse_busy("a sponsored Permit2 permit from this wallet is still in flight")
        if available >= ceiling:
            return self._hold(ceiling, deadline, None)
        if not sponsoring or self.reading is None or self.reading.permit_nonce is None:
            raise Refusal(
                f"the wallet's Permit2 allowance (${usd(max(available, 0))} free) does not "
                f"cover this call's ceiling of ${usd(ceiling)}, and the gateway does not sponsor "
                "a permit. Approve once: blockrun-proxy wallet approve-permit2 --amount-usd N "
                "(a bounded approval sent via --rpc-url)",
                code=ALLOWANCE_REQUIRED,
            )
        if self._holds:
            # A permit would reset the allowance under the calls still drawing on it.
            _refuse_busy("other upto calls are still drawing on the current allowance")
        return self._hold(ceiling, deadline, self.reading.permit_nonce)

    def settled(self, hold: AllowanceHold, amount: int | None) -> None:
        """The gateway settled ``amount`` of ``hold`` (None: it did not say; the ceiling
        is booked and the next call reads the chain again)."""
        if not hold.open:
            return
        self._close(hold)
        booked = hold.ceiling if amount is None else min(max(amount, 0), hold.ceiling)
        if hold.with_permit and self.reading is not None and hold.permit_nonce is not None:
            # The permit SET the allowance to the ceiling, then the call pulled from it.
            self.reading = ChainAllowance(hold.ceiling, hold.permit_nonce + 1)
            self._spent = booked
        else:
            self._spent += booked
        if amount is None:
            self._read_at = float("-inf")

    def release(self, hold: AllowanceHold) -> None:
        """Forget ``hold``: its payment was never sent or was refused unused."""
        if hold.open:
            self._close(hold)

    # ---------------------------------------------------------------- internals

    def _hold(self, ceiling: int, deadline: int, permit_nonce: int | None) -> AllowanceHold:
        hold = AllowanceHold(next(self._ids), ceiling, deadline, permit_nonce)
        self._holds[hold.id] = hold
        return hold

    def _close(self, hold: AllowanceHold) -> None:
        hold.open = False
        self._holds.pop(hold.id, None)

    def _expire(self) -> None:
        """Drop holds whose payment can no longer settle (past its Permit2 deadline)."""
        now = self._clock()
        for hold in [h for h in self._holds.values() if h.deadline < now]:
            self._close(hold)


def _refuse_busy(why: str) -> NoReturn:
    raise Refusal(
        f"{why}; an upto payment now could fail to settle. Pay exact (--scheme auto), or "
        "approve a Permit2 allowance once: blockrun-proxy wallet approve-permit2 --amount-usd N",
        code=ALLOWANCE_BUSY,
    )


async def acquire(
    tracker: Permit2Allowance,
    rpc: EvmRpc,
    network: Network,
    owner: str,
    ceiling: int,
    *,
    deadline: int,
    sponsoring: bool,
) -> AllowanceHold:
    """``tracker.reserve``, reading the chain first when stale, and once more before
    refusing for want of allowance (the operator may just have approved; at most once
    per ``tracker.reread_gap``). RpcError
    propagates: with no reading the caller cannot know, and pays exact or refuses."""
    if tracker.stale():
        tracker.update(await read_allowance(rpc, network, owner, with_nonce=sponsoring))
        return tracker.reserve(ceiling, deadline=deadline, sponsoring=sponsoring)
    try:
        return tracker.reserve(ceiling, deadline=deadline, sponsoring=sponsoring)
    except Refusal as refusal:
        if refusal.code != ALLOWANCE_REQUIRED or not tracker.may_reread():
            raise
    tracker.update(await read_allowance(rpc, network, owner, with_nonce=sponsoring))
    return tracker.reserve(ceiling, deadline=deadline, sponsoring=sponsoring)
