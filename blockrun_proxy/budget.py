"""The spend budget: at most ``limit`` atomic USDC sent over any rolling window.

PROTOCOL.md section 5 rule 4 asks for a cumulative check before every signature.
A signature is money handed out only once it may have reached the gateway, so the
budget works in three steps, the interface every store implements (``BudgetStore``):

1. ``reserve(amount)`` before signing: refused (``budget_exceeded``, nothing held)
   when what is spent and held in the window plus ``amount`` would pass the limit;
2. ``commit(reservation)`` once a send of that signature may have reached the
   gateway, answered or not: from then on it counts, whether it settled or not,
   because that is not always knowable;
3. ``release(reservation)`` when the signature provably never left the process
   (every send was refused a connection, or signing failed): it is forgotten.

A reservation that is neither committed nor released keeps counting until its
window has passed: a store errs toward refusing. ``commit`` and ``release`` are
idempotent, and whichever comes first wins.

``MemoryBudgetStore`` is the default, for one process. Memory stays bounded however
busy the proxy is: committed spends are summed into ``BUCKETS`` time buckets per
window, so it holds at most ``BUCKETS + 1`` buckets plus the reservations of the
calls in flight (a plain list of every payment would hold millions over a day at a
few hundred calls per second). A bucket leaves the window only once its *last*
instant is older than the window, so the sum can over-count by at most one
bucket's width of spending, never under-count.

Its methods are coroutines for the interface's sake but never suspend: each check
and record happens in one step of the event loop, so two concurrent calls cannot
both pass the check on the same remaining budget. A shared store (Redis, for a
fleet) implements the same interface atomically on its side and raises
``BudgetStoreUnavailable`` when it cannot answer.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from blockrun_proxy.errors import PaymentRefused
from blockrun_proxy.x402 import usd

BUCKETS = 512


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str  # unique (secrets.token_hex(8)): stores may key by it
    amount: int  # atomic USDC held
    at: float  # wall-clock unix time of the reservation; the rolling window counts from it


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    limit: int
    window_seconds: float
    spent: int  # committed + still-held reservations in the window


class BudgetStore(Protocol):
    limit: int
    window_seconds: float

    async def reserve(self, amount: int) -> Reservation:
        """Hold ``amount``; raise PaymentRefused(code="budget_exceeded") and hold nothing
        when spent + held + amount would pass ``limit``."""
        ...

    async def commit(self, reservation: Reservation, spent: int | None = None) -> None:
        """It was sent: it counts. ``spent`` (<= amount) counts instead of the amount when
        given (an upto payment that settled for less). Idempotent."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """It provably never reached the gateway: forget it. Idempotent."""
        ...

    async def usage(self) -> BudgetUsage: ...


def format_duration(seconds: float) -> str:
    """``86400`` -> ``"24h"``, ``1800`` -> ``"30m"``, ``90`` -> ``"90s"``: for messages."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def budget_exceeded(limit: int, window_seconds: float, spent: int, amount: int) -> PaymentRefused:
    """The refusal every store raises, so the client reads the same message whichever is used."""
    return PaymentRefused(
        f"the spending budget of ${usd(limit)} per {format_duration(window_seconds)} "
        f"would be exceeded: ${usd(spent)} already sent or being sent in the window, this "
        f"call needs ${usd(amount)}. Nothing was signed (--budget-usd / --budget-window).",
        code="budget_exceeded",
    )


def check_budget_terms(limit: int, window_seconds: float) -> None:
    """ValueError for a budget no store can keep: a negative limit, an empty window."""
    if limit < 0:
        raise ValueError("budget limit must not be negative")
    if not window_seconds > 0:
        raise ValueError("budget window must be positive")


def new_reservation(amount: int, at: float) -> Reservation:
    if amount < 0:
        raise ValueError("a reservation must not be negative")
    return Reservation(secrets.token_hex(8), amount, at)


class MemoryBudgetStore:
    """The in-process ``BudgetStore``: bounded buckets of committed spend, plus the
    reservations held by calls in flight."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_budget_terms(limit, window_seconds)
        self.limit = limit
        self.window_seconds = window_seconds
        self._width = window_seconds / BUCKETS
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [bucket index, atomic units], oldest first
        self._committed = 0
        # Held reservations by id, oldest first (so the expired ones are at the front).
        self._held: OrderedDict[str, Reservation] = OrderedDict()
        self._held_total = 0

    async def reserve(self, amount: int) -> Reservation:
        now = self._clock()
        spent = self._spent(now)
        if spent + amount > self.limit:
            raise budget_exceeded(self.limit, self.window_seconds, spent, amount)
        reservation = new_reservation(amount, now)
        self._held[reservation.id] = reservation
        self._held_total += amount
        return reservation

    async def commit(self, reservation: Reservation, spent: int | None = None) -> None:
        if self._held.pop(reservation.id, None) is None:
            return  # already committed or released (or its window has passed)
        self._held_total -= reservation.amount
        counted = reservation.amount if spent is None else max(0, min(spent, reservation.amount))
        self._count(reservation.at, counted)

    async def release(self, reservation: Reservation) -> None:
        if self._held.pop(reservation.id, None) is not None:
            self._held_total -= reservation.amount

    async def usage(self) -> BudgetUsage:
        return BudgetUsage(self.limit, self.window_seconds, self._spent(self._clock()))

    def _spent(self, now: float) -> int:
        """Committed and held in the window (possibly one bucket more; see module doc)."""
        self._prune(now)
        return self._committed + self._held_total

    def _count(self, at: float, amount: int) -> None:
        """Add ``amount`` to the bucket of the instant ``at`` (its window counts from then)."""
        if amount <= 0:
            return
        index = math.floor(at / self._width)
        buckets = self._buckets
        # Commits come seconds after their reservation: the bucket is at or near the end.
        for position in range(len(buckets) - 1, -1, -1):
            bucket = buckets[position]
            if bucket[0] == index:
                bucket[1] += amount
                break
            if bucket[0] < index:
                buckets.insert(position + 1, [index, amount])
                break
        else:
            if self._expired(index, self._clock()):
                return  # older than the window already: it counts no more
            buckets.appendleft([index, amount])
        self._committed += amount

    def _expired(self, index: int, now: float) -> bool:
        # Bucket b spans [b*w, (b+1)*w); it is wholly outside the window once
        # (b+1)*w <= now - window.
        return (index + 1) * self._width <= now - self.window_seconds

    def _prune(self, now: float) -> None:
        buckets = self._buckets
        while buckets and self._expired(buckets[0][0], now):
            self._committed -= buckets.popleft()[1]
        horizon = now - self.window_seconds
        held = self._held
        while held:
            oldest = next(iter(held.values()))
            if oldest.at > horizon:
                break
            del held[oldest.id]  # held for a whole window: it counts no more
            self._held_total -= oldest.amount
