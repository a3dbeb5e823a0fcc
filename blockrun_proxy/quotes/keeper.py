"""Keeps the quote book fed and saved, off the request path.

- When the book wants the catalogue (a 402 named a model it does not price, or a prior
  was refuted), one background task fetches ``/v1/models`` (through the app's cached
  fetch: the gateway rate-limits it) and hands the prices to the book.
- Refits of formulas learned from the 402s alone (milliseconds of CPU each for long
  conversations) run in a worker thread instead of on the event loop.
- At startup, the saved book is read and rebuilt in a worker thread, then adopted: the
  port opens without waiting for it, and until it is in the book is simply cold.
- While running, the book is saved every ``save_interval`` seconds when it changed, and
  once more at shutdown; the snapshot is taken on the loop (small, bounded), the writing
  happens in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from blockrun_proxy.errors import ProxyError
from blockrun_proxy.quotes.book import QuoteBook, compute_fit
from blockrun_proxy.quotes.features import PriceKey
from blockrun_proxy.quotes.fit import Observation
from blockrun_proxy.quotes.prior import parse_catalogue
from blockrun_proxy.quotes.store import QuoteFile

log = logging.getLogger(__name__)

DEFAULT_SAVE_INTERVAL = 15.0

FetchCatalogue = Callable[[], Awaitable[bytes]]


class QuoteKeeper:
    def __init__(
        self,
        book: QuoteBook,
        *,
        fetch_catalogue: FetchCatalogue | None = None,
        store: QuoteFile | None = None,
        save_interval: float = DEFAULT_SAVE_INTERVAL,
    ) -> None:
        self.book = book
        self._fetch = fetch_catalogue
        self.store = store
        self._save_interval = save_interval
        self._tasks: set[asyncio.Task[None]] = set()
        self._catalogue_task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        if self._fetch is not None:
            self.book.on_catalogue_wanted = self.want_catalogue
        self.book.on_refit = self.refit
        self._spawn(self._load())
        if self.store is not None:
            self._spawn(self._save_periodically())

    async def close(self) -> None:
        self.book.on_catalogue_wanted = None
        self.book.on_refit = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.store is not None and self.book.dirty and self.loaded.is_set():
            await self.save()

    def want_catalogue(self) -> None:
        """Fetch the catalogue in the background, unless a fetch is already running."""
        if self._catalogue_task is None or self._catalogue_task.done():
            self._catalogue_task = self._spawn(self.refresh_catalogue())

    def refit(self, key: PriceKey, window: list[Observation], version: int) -> None:
        """Fit ``key``'s learned formulas in a worker thread (book.py waits for them)."""
        self._spawn(self._refit(key, window, version))

    async def _refit(self, key: PriceKey, window: list[Observation], version: int) -> None:
        book = self.book
        result = await asyncio.to_thread(
            compute_fit, window, book.min_observations, book.tolerance > 0
        )
        book.refit_done(key, version, result)

    async def refresh_catalogue(self) -> None:
        assert self._fetch is not None
        try:
            body = await self._fetch()
        except ProxyError as exc:
            log.info("catalogue unavailable for quotes: %s", exc.message)
            return
        prices = parse_catalogue(body)
        if prices:
            self.book.set_catalogue(prices)

    async def save(self) -> None:
        if self.store is None:
            return
        snapshot = self.book.snapshot()
        await asyncio.to_thread(self.store.save, snapshot)

    async def _load(self) -> None:
        try:
            if self.store is None:
                return
            doc = await asyncio.to_thread(self.store.load)
            if doc is None:
                return
            now, wall = time.monotonic(), time.time()
            catalogue, states = await asyncio.to_thread(
                self.book.load_states, doc, now=now, wall=wall
            )
            self.book.adopt_states(catalogue, states)
            log.info("loaded saved quotes for %d price keys", len(states))
        finally:
            self.loaded.set()

    async def _save_periodically(self) -> None:
        await self.loaded.wait()
        while True:
            await asyncio.sleep(self._save_interval)
            if self.book.dirty:
                await self.save()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
