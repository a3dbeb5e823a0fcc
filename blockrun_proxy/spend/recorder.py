"""Hands finished calls to the ledger without ever making a request wait for it.

``observe`` runs in the request path (app.front_middleware, next to the access log and
the metrics): it builds the record and appends it to a bounded queue, nothing more. One
background task writes the queue to the ledger in batches. It lingers ``LINGER_SECONDS``
after the first record of a batch (or until ``batch`` records wait) before handing the
batch over: the SQLite ledger's hand-off to its writer thread, the thread's wake-up and a
transaction cost the same for one record as for hundreds, and under load the loop paid
them every few records. ``flush`` and ``aclose`` cut the linger short, so ``/v1/spend``
still shows the call that just finished and a drain writes what waits. A full queue
drops the new record, counted in ``dropped``
(``blockrun_proxy_ledger_records_dropped_total``); a ledger that fails (Redis away, a
locked SQLite file) is retried with backoff while the queue absorbs what comes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from blockrun_proxy.exchange import Exchange
from blockrun_proxy.spend.ledger import Ledger
from blockrun_proxy.spend.records import SpendRecord, record_for

log = logging.getLogger(__name__)

QUEUE_RECORDS = 10_000
BATCH_RECORDS = 500
# How long the first record of a batch waits for others before the batch is written:
# short enough that a dashboard (or another replica reading Redis) sees a call at once.
LINGER_SECONDS = 0.05
RETRY_DELAYS = (0.2, 1.0, 5.0)  # then every last delay until it works or the proxy stops


class Recorder:
    def __init__(
        self,
        ledger: Ledger,
        *,
        replica: str,
        capacity: int = QUEUE_RECORDS,
        batch: int = BATCH_RECORDS,
        linger: float = LINGER_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.replica = replica
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._capacity = capacity
        self._batch = batch
        self._linger = linger
        self._clock = clock
        self._queue: deque[SpendRecord] = deque()
        self._wake = asyncio.Event()  # something is queued (or the recorder is closing)
        self._hurry = asyncio.Event()  # write now: a full batch, a flush or the close
        self._closing = False
        self._idle = asyncio.Event()  # nothing queued, no batch being written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def observe(self, exchange: Exchange) -> None:
        """Queue the record of a finished call, if it is one the ledger keeps. Never waits."""
        if not exchange.signed_atomic and exchange.refusal is None:
            return  # the common free or unpaid call: nothing to build
        record = record_for(exchange, now=self._clock(), replica=self.replica)
        if record is None:
            return
        if len(self._queue) >= self._capacity:
            self.dropped += 1
            return
        self._queue.append(record)
        self._idle.clear()
        self._wake.set()
        if len(self._queue) >= self._batch:
            self._hurry.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) until everything queued so far is written:
        ``/v1/spend`` shows the call that just finished. Whether it got there."""
        if not self._idle.is_set():
            self._hurry.set()  # the batch waiting for company is written now
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop."""
        self._closing = True
        self._hurry.set()
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self.dropped += len(self._queue)
        self._queue.clear()
        self._idle.set()
        await self.ledger.aclose()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._hurry.is_set():
                await self._gather()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                await self._write(batch)
            # No await between the emptied queue and these: every flush that asked to hurry
            # is answered by this idle, and the next record wakes a lingering batch again.
            self._wake.clear()
            self._hurry.clear()
            self._idle.set()
            if self._closing:
                return

    async def _gather(self) -> None:
        """Let records join the batch for ``linger`` seconds, unless asked to hurry."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), self._linger)

    async def _write(self, batch: list[SpendRecord]) -> None:
        failures = 0
        while True:
            try:
                await self.ledger.append(batch)
            except Exception as exc:  # any store failure: retried, counted, logged once
                self.write_errors += 1
                if failures == 0:
                    log.warning(
                        "spend ledger (%s) write failed (%s: %s); retrying",
                        self.ledger.backend,
                        type(exc).__name__,
                        exc,
                    )
                if self._closing:
                    self.dropped += len(batch)
                    return
                await asyncio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
                failures += 1
                continue
            self.written += len(batch)
            if failures:
                log.warning("spend ledger (%s) writes again", self.ledger.backend)
            return
