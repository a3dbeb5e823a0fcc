"""The spend budget: at most ``limit`` atomic USDC signed over any rolling window.

PROTOCOL.md section 5 rule 4 asks for a cumulative check before every signature.
The ledger counts what was *signed*, not what settled: a signature is money the
proxy has handed out, and whether the gateway used it is not always knowable.

Memory stays bounded however busy the proxy is: spends are summed into
``BUCKETS`` time buckets per window, so the ledger holds at most ``BUCKETS + 1``
entries (a plain deque of every signature would hold millions over a day at a
few hundred calls per second). A bucket leaves the window only once its *last*
instant is older than the window, so the sum can over-count by at most one
bucket's width of spending, never under-count: the budget errs toward refusing.

``reserve`` checks and records in one synchronous call. The event loop runs one
callback at a time, so two concurrent requests cannot both pass the check on the
same remaining budget.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from blockrun_proxy.errors import PaymentRefused
from blockrun_proxy.x402 import usd

BUCKETS = 512


# --- the budget store interface (issue 9) ---------------------------------------------------
# Reserve before signing, commit once the payment was sent, release when it provably never
# reached the gateway. The in-memory store and the Redis one (budget_redis.py) implement it.


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
        """Hold ``amount``; raises PaymentRefused(code="budget_exceeded") and holds
        nothing when spent + held + amount > limit."""
        ...

    async def commit(self, reservation: Reservation, spent: int | None = None) -> None:
        """It was sent: it counts (``spent`` <= amount counts instead when given). Idempotent."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """It provably never reached the gateway: forget it. Idempotent."""
        ...

    async def usage(self) -> BudgetUsage: ...


def budget_exceeded(limit: int, window_seconds: float, spent: int, amount: int) -> PaymentRefused:
    """The refusal every budget store raises, worded once."""
    return PaymentRefused(
        f"the spending budget of ${usd(limit)} per {format_duration(window_seconds)} "
        f"would be exceeded: ${usd(spent)} already signed in the window, this "
        f"call needs ${usd(amount)}. Nothing was signed (--budget-usd / --budget-window).",
        code="budget_exceeded",
    )


def format_duration(seconds: float) -> str:
    """``86400`` -> ``"24h"``, ``1800`` -> ``"30m"``, ``90`` -> ``"90s"``: for messages."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class SpendBudget:
    def __init__(
        self,
        limit_atomic: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit_atomic < 0:
            raise ValueError("budget limit must not be negative")
        if not window_seconds > 0:
            raise ValueError("budget window must be positive")
        self.limit = limit_atomic
        self.window = window_seconds
        self._width = window_seconds / BUCKETS
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [bucket index, atomic units], oldest first
        self._total = 0

    def spent(self) -> int:
        """Atomic units signed within the window (possibly one bucket more; see module doc)."""
        self._prune(self._clock())
        return self._total

    def remaining(self) -> int:
        return max(0, self.limit - self.spent())

    def reserve(self, amount: int) -> None:
        """Record ``amount`` as signed now, or raise ``PaymentRefused`` and record nothing."""
        now = self._clock()
        self._prune(now)
        if self._total + amount > self.limit:
            raise budget_exceeded(self.limit, self.window, self._total, amount)
        index = math.floor(now / self._width)
        if self._buckets and self._buckets[-1][0] == index:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([index, amount])
        self._total += amount

    def refund(self, amount: int) -> None:
        """Undo the ``reserve`` just made, when signing failed before any signature existed."""
        if self._buckets:
            self._buckets[-1][1] -= amount
            self._total -= amount

    def _prune(self, now: float) -> None:
        # Bucket b spans [b*w, (b+1)*w); it is wholly outside the window once
        # (b+1)*w <= now - window.
        horizon = now - self.window
        buckets = self._buckets
        while buckets and (buckets[0][0] + 1) * self._width <= horizon:
            self._total -= buckets.popleft()[1]
