"""Keeps the quote book fed and stored, off the request path.

- When the book wants the catalogue (a 402 named a model it does not price, or a prior
  was refuted), one background task fetches ``/v1/models`` (through the app's cached
  fetch: the gateway rate-limits it) and hands the prices to the book.
- Refits of formulas learned from the 402s alone (milliseconds of CPU each for long
  conversations) run in a worker thread instead of on the event loop.
- The book is kept in a ``QuoteStore`` (quote_store.py): the fleet's Redis with
  ``--redis-url``, else a file under ``--state-dir``. At start, one load: the port opens
  without waiting for it, ``loaded`` is set when it has ended or after ``load_timeout``
  (``/readyz`` waits for that; a large book goes on loading in the background), and a
  store that cannot be read means a cold start, nothing worse. Then, every
  ``save_delay`` seconds, what changed is saved (so a burst of 402s is one write, never
  one per request), and every ``reload_interval`` seconds the entries other replicas (or
  ``--workers`` processes) saved since are loaded and merged by newest
  (``QuoteBook.merge``). Once more at shutdown, what changed is saved. Encoding the
  changed keys is small and happens on the loop; decoding (formulas are rebuilt, a chunk
  at a time) and file I/O happen in worker threads.
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
from blockrun_proxy.quotes.observation import Observation
from blockrun_proxy.quotes.prior import parse_catalogue

log = logging.getLogger(__name__)

DEFAULT_SAVE_DELAY = 15.0
DEFAULT_RELOAD_INTERVAL = 60.0
# How long readiness waits for the one load at start (reading the store is bounded by
# the link's own timeout; decoding a full book takes seconds of CPU on a busy machine and
# goes on in the background past this).
DEFAULT_LOAD_TIMEOUT = 5.0
# Entries decoded per trip to the worker thread (a few tens of milliseconds of CPU).
DECODE_CHUNK = 8

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
        taken. StoreUnavailable when the store cannot be read.

        Rebuilding a key's formulas costs milliseconds of CPU (a full book, seconds):
        the entries are decoded in a worker thread a chunk at a time, the catalogue and
        the most recently learned keys first, and each chunk is merged as soon as it is
        ready, so the book warms up progressively and the loop is never held."""
        assert self.store is not None
        entries = await self.store.load(self._known())
        self._recovered()
        names = sorted(entries, key=lambda name: (name != CATALOGUE, -entries[name][0]))
        taken = dropped = 0
        for start in range(0, len(names), DECODE_CHUNK):
            book = self.book
            chunk = {name: entries[name] for name in names[start : start + DECODE_CHUNK]}
            decoded = await asyncio.to_thread(
                decode,
                book,
                chunk,
                self._api_url,
                dict(book.catalogue),
                now=time.monotonic(),
                wall=time.time(),
            )
            self._seen.update(decoded.stamps)
            taken += book.merge(decoded.catalogue, decoded.catalogue_at, decoded.states)
            dropped += decoded.dropped
        self.entries_loaded += taken
        if dropped:
            log.info("ignored %d stored quote entries: not ours or unreadable", dropped)
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
        """One load. Readiness (``loaded``) waits for it at most ``load_timeout``: past
        that the proxy serves (probing what it cannot sign yet) while the rest of a large
        book is decoded. A store that cannot be read means a cold start."""
        store = self.store
        assert store is not None
        load = asyncio.ensure_future(self.reload())
        done, _ = await asyncio.wait({load}, timeout=self._load_timeout)
        if not done:
            self.status = f"{store.name}: loading (serving meanwhile)"
            log.info("learned quotes still loading after %gs; serving", self._load_timeout)
            self.loaded.set()
        try:
            taken = await load
        except StoreUnavailable as exc:
            self.load_failures += 1
            self.status = f"{store.name}: starting cold ({exc})"
            log.warning("learned quotes not loaded, starting cold: %s", exc)
        else:
            self.status = f"{store.name}: {taken} price keys loaded"
            log.info("loaded learned quotes for %d price keys from %s", taken, store.name)
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
