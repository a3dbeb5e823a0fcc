"""Keeps the quote book fed and stored, off the request path.

- When the book wants the catalogue (a 402 named a model it does not price, or a prior
  was refuted), one background task fetches ``/v1/models`` (through the app's cached
  fetch: the gateway rate-limits it) and hands the prices to the book.
- Refits of formulas learned from the 402s alone (milliseconds of CPU each for long
  conversations) run in a worker thread instead of on the event loop.
- The book is kept in a ``QuoteStore`` (quote_store.py): the fleet's Redis with
  ``--redis-url``, else a file under ``--state-dir``. At start, one load, bounded by
  ``load_timeout``: the port opens without waiting for it, ``loaded`` is set when it has
  ended (``/readyz`` waits for that), and a store that fails or is slow means a cold
  start, nothing worse. Then, every ``save_delay`` seconds, what changed is saved (so a
  burst of 402s is one write, never one per request), and every ``reload_interval``
  seconds the entries other replicas (or ``--workers`` processes) saved since are loaded
  and merged by newest (``QuoteBook.merge``). Once more at shutdown, what changed is
  saved. Encoding the changed keys is small and happens on the loop; decoding (formulas
  are rebuilt) and file I/O happen in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from blockrun_proxy.errors import ProxyError
from blockrun_proxy.quote_store import QuoteStore, StoreUnavailable
from blockrun_proxy.quotes.book import QuoteBook, compute_fit
from blockrun_proxy.quotes.entries import CATALOGUE, decode, encode, key_name
from blockrun_proxy.quotes.features import PriceKey
from blockrun_proxy.quotes.fit import Observation
from blockrun_proxy.quotes.prior import parse_catalogue

log = logging.getLogger(__name__)

DEFAULT_SAVE_DELAY = 15.0
DEFAULT_RELOAD_INTERVAL = 60.0
# The one load at start: past this the replica starts cold (Redis calls are bounded by
# the link's own timeout; this also bounds decoding a large book on a busy machine).
DEFAULT_LOAD_TIMEOUT = 5.0

FetchCatalogue = Callable[[], Awaitable[bytes]]


class QuoteKeeper:
    def __init__(
        self,
        book: QuoteBook,
        *,
        fetch_catalogue: FetchCatalogue | None = None,
        store: QuoteStore | None = None,
        api_url: str = "",
        save_delay: float = DEFAULT_SAVE_DELAY,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT,
    ) -> None:
        self.book = book
        self._fetch = fetch_catalogue
        self.store = store
        self._api_url = api_url  # entries learned from another gateway are not read
        self._save_delay = save_delay
        self._reload_interval = reload_interval
        self._load_timeout = load_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._catalogue_task: asyncio.Task[None] | None = None
        # Every entry's stamp read from or written to the store: not fetched again unless
        # a newer one appears (the book may have let the key go since).
        self._seen: dict[str, float] = {}
        self._failing = False  # the store failed last time (logged once per outage)
        self.loaded = asyncio.Event()  # the load at start has ended, one way or another
        self.status = "no store" if store is None else "loading"
        self.entries_loaded = 0
        self.load_failures = 0
        self.save_failures = 0

    async def start(self) -> None:
        if self._fetch is not None:
            self.book.on_catalogue_wanted = self.want_catalogue
        self.book.on_refit = self.refit
        if self.store is None:
            self.loaded.set()
            return
        self._spawn(self._run())

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

    # --- the store ----------------------------------------------------------------------------

    async def save(self) -> bool:
        """Store what changed in the book since the last save; whether it was stored (on
        failure the changes stay pending for the next save)."""
        if self.store is None:
            return True
        changes = self.book.take_changes()
        entries = encode(changes, self._api_url)
        if not entries:
            return True
        try:
            await self.store.save(entries)
        except (StoreUnavailable, ValueError) as exc:
            self.book.unsaved(changes)
            self.save_failures += 1
            self._failed("save", exc)
            return False
        self._recovered()
        for name, (stamp, _) in entries.items():
            self._seen[name] = max(stamp, self._seen.get(name, 0.0))
        return True

    async def reload(self) -> int:
        """Merge what the store holds newer than this book's; how many price keys were
        taken. StoreUnavailable when the store cannot be read."""
        assert self.store is not None
        entries = await self.store.load(self._known())
        self._recovered()
        if not entries:
            return 0
        book = self.book
        decoded = await asyncio.to_thread(
            decode,
            book,
            entries,
            self._api_url,
            dict(book.catalogue),
            now=time.monotonic(),
            wall=time.time(),
        )
        self._seen.update(decoded.stamps)
        taken = book.merge(decoded.catalogue, decoded.catalogue_at, decoded.states)
        self.entries_loaded += taken
        if decoded.dropped:
            log.info("ignored %d stored quote entries: not ours or unreadable", decoded.dropped)
        return taken

    def _known(self) -> dict[str, float]:
        known = dict(self._seen)
        for key, stamp in self.book.stamps().items():
            name = key_name(key)
            known[name] = max(stamp, known.get(name, 0.0))
        if self.book.catalogue_at:
            known[CATALOGUE] = max(self.book.catalogue_at, known.get(CATALOGUE, 0.0))
        return known

    async def _run(self) -> None:
        await self._load_at_start()
        loop = asyncio.get_running_loop()
        next_reload = loop.time() + self._reload_interval
        while True:
            await asyncio.sleep(self._save_delay)
            if self.book.dirty:
                await self.save()
            if loop.time() >= next_reload:
                try:
                    await self.reload()
                except StoreUnavailable as exc:
                    self.load_failures += 1
                    self._failed("reload", exc)
                next_reload = loop.time() + self._reload_interval

    async def _load_at_start(self) -> None:
        assert self.store is not None
        try:
            taken = await asyncio.wait_for(self.reload(), self._load_timeout)
        except (StoreUnavailable, asyncio.TimeoutError) as exc:
            self.load_failures += 1
            reason = str(exc) or f"no answer within {self._load_timeout:g}s"
            self.status = f"{self.store.name}: starting cold ({reason})"
            log.warning("learned quotes not loaded, starting cold: %s", reason)
        else:
            self.status = f"{self.store.name}: {taken} price keys loaded"
            log.info("loaded learned quotes for %d price keys from %s", taken, self.store.name)
        finally:
            self.loaded.set()

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._failing:
            assert self.store is not None
            log.warning("quote store (%s) %s failed: %s", self.store.name, what, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            assert self.store is not None
            log.info("quote store (%s) works again", self.store.name)
        self._failing = False

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
