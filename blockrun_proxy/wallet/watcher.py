"""``BalanceWatcher``: the wallet's USDC balance, read in the background.

While serving with ``--rpc-url``, the balance is read every ``interval`` seconds and soon
after spending (``request_refresh()``, coalesced: a burst of paid calls costs one read,
at most one per ``min_gap`` seconds). Readers (``/readyz``, ``/metrics``, the spend page)
take ``latest``, ``age()``, ``low`` or ``snapshot()``: plain attribute reads, never an
RPC call on their path. A failed read keeps the last good reading (its age says how
stale it is) and is counted; the loop carries on.

``low_balance`` (atomic USDC, ``--low-balance-usd``): when a reading falls below it the
watcher logs one warning and ``low`` turns True; it logs again only after the balance
has recovered and fallen again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blockrun_proxy.config import Settings
from blockrun_proxy.x402 import Network, Signer, network_for, usd

if TYPE_CHECKING:
    # evm_rpc.py is imported where a watcher reads (only with --rpc-url): startup.
    from blockrun_proxy.evm_rpc import EvmRpc

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 60.0
# After spending, the next read waits at least this long after the previous one.
DEFAULT_MIN_GAP_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class BalanceReading:
    atomic: int  # USDC atomic units (6 decimals)
    at: float  # the watcher's clock (monotonic) when the read completed

    @property
    def usd(self) -> str:
        return usd(self.atomic)


class BalanceWatcher:
    """Reads a balance through ``read_balance`` (any coroutine returning atomic USDC)."""

    def __init__(
        self,
        read_balance: Callable[[], Awaitable[int]],
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        min_gap: float = DEFAULT_MIN_GAP_SECONDS,
        low_balance: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval > 0 or min_gap < 0:
            raise ValueError("interval must be positive and min_gap not negative")
        self._read_balance = read_balance
        self.interval = interval
        self.min_gap = min_gap
        self.low_balance = low_balance
        self._clock = clock
        self.latest: BalanceReading | None = None
        self.low = False
        self.reads = 0
        self.failures = 0
        self.last_error: str | None = None
        self._last_attempt: float | None = None
        self._wake = asyncio.Event()
        self._read_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_wallet(
        cls, rpc: EvmRpc, network: Network, address: str, **options: Any
    ) -> BalanceWatcher:
        """A watcher of ``address``'s USDC on ``network`` through ``rpc``."""

        async def read() -> int:
            return await rpc.balance_of(network.usdc, address)

        return cls(read, **options)

    # ------------------------------------------------------------------ readers

    @property
    def latest_atomic(self) -> int | None:
        return None if self.latest is None else self.latest.atomic

    def age(self) -> float | None:
        """Seconds since the latest good reading; None before the first one."""
        return None if self.latest is None else max(0.0, self._clock() - self.latest.at)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready summary for /readyz and the spend page."""
        latest, age = self.latest, self.age()
        return {
            "usdc": None if latest is None else latest.usd,
            "atomic": None if latest is None else latest.atomic,
            "age_seconds": None if age is None else round(age, 1),
            "low": self.low,
            "low_balance_usd": None if self.low_balance is None else usd(self.low_balance),
            "failures": self.failures,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ control

    def request_refresh(self) -> None:
        """Read again soon (after a payment): cheap, never blocks, coalesces bursts."""
        self._wake.set()

    async def refresh(self) -> BalanceReading:
        """Read once now (one read at a time); RpcError is counted, recorded, and raised."""
        from blockrun_proxy.evm_rpc import RpcError  # loaded by then: the watcher has an rpc

        async with self._read_lock:
            self._last_attempt = self._clock()
            try:
                atomic = await self._read_balance()
            except RpcError as exc:
                self.failures += 1
                self.last_error = exc.message
                raise
            reading = BalanceReading(atomic, self._clock())
            self.reads += 1
            self.last_error = None
            self.latest = reading
            self._judge(atomic)
            return reading

    async def start(self) -> None:
        """Start the background loop (its first read happens at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="balance-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> BalanceWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- internals

    async def _run(self) -> None:
        from blockrun_proxy.evm_rpc import RpcError  # --rpc-url only: startup

        while True:
            try:
                await self.refresh()
            except RpcError as exc:
                # One line per failure at most once a minute (the interval): an RPC outage
                # must not flood the log, and the stale age is visible to readers.
                log.warning("wallet balance read failed: %s", exc.message)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            if self._last_attempt is not None:
                wait = self.min_gap - (self._clock() - self._last_attempt)
                if wait > 0:
                    await asyncio.sleep(wait)
            self._wake.clear()  # requests during the gap are served by this read

    def _judge(self, atomic: int) -> None:
        threshold = self.low_balance
        was_low = self.low
        self.low = threshold is not None and atomic < threshold
        if self.low and not was_low:
            assert threshold is not None
            log.warning(
                "wallet balance $%s is below --low-balance-usd $%s: fund the wallet soon",
                usd(atomic),
                usd(threshold),
                extra={"fields": {"balance_usd": usd(atomic), "threshold_usd": usd(threshold)}},
            )
        elif was_low and not self.low:
            log.info("wallet balance $%s is back above the low-balance threshold", usd(atomic))


@contextlib.asynccontextmanager
async def watching(settings: Settings) -> AsyncIterator[BalanceWatcher | None]:
    """The running watcher ``settings`` ask for: with ``rpc_url`` and a wallet, the
    wallet's USDC on the first of ``networks``; otherwise None (nothing is read)."""
    network = network_for(settings.networks[0]) if settings.networks else None
    if not settings.rpc_url or not settings.wallet_key or network is None:
        yield None
        return
    from blockrun_proxy.evm_rpc import EvmRpc  # --rpc-url only: startup

    address = Signer(settings.wallet_key).address
    async with EvmRpc(settings.rpc_url) as rpc:
        watcher = BalanceWatcher.for_wallet(
            rpc, network, address, low_balance=settings.low_balance_atomic
        )
        async with watcher:
            yield watcher
