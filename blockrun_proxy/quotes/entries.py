"""The quote book as named, stamped entries: what a ``QuoteStore`` keeps (quote_store.py).

- ``catalogue``: the catalogue's prices, stamped with the time they were fetched;
- ``key <route> <model>`` (the name is JSON: any model id), one per price key: its state
  as ``QuoteBook.take_changes`` documents it, stamped with its newest 402.

Each entry's bytes are one JSON object carrying the snapshot format, the measure set and
the gateway URL it was learned from, and when it was written:
``{"format", "measures", "api_url", "saved_at", "catalogue" | "key"}``. ``decode`` drops
an entry of another format, measure set or gateway, one that does not parse, and one
larger than the bounds, so whatever else sits in a shared store is ignored. Decoding
rebuilds formulas (milliseconds of CPU per key): run it in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from blockrun_proxy.quote_store import MAX_ENTRY_BYTES, Entry
from blockrun_proxy.quotes.book import SNAPSHOT_FORMAT, BookChanges, QuoteBook
from blockrun_proxy.quotes.features import MEASURES, PriceKey
from blockrun_proxy.quotes.prior import CataloguePrice

CATALOGUE = "catalogue"
KEY_PREFIX = "key "


def key_name(key: PriceKey) -> str:
    return KEY_PREFIX + orjson.dumps(list(key)).decode()


@dataclass(slots=True)
class Decoded:
    """Entries turned back into what the book merges."""

    catalogue: dict[str, CataloguePrice]
    catalogue_at: float
    states: list[tuple[PriceKey, Any]]  # (key, the book's state)
    stamps: dict[str, float]  # every entry read, readable or not: not fetched again
    dropped: int = 0  # entries that were not ours or did not parse


def encode(changes: BookChanges, api_url: str, *, wall: float | None = None) -> dict[str, Entry]:
    """``changes`` as entries; one too large to store is left out (the book keeps it)."""
    saved_at = time.time() if wall is None else wall
    head = {"format": SNAPSHOT_FORMAT, "measures": list(MEASURES), "api_url": api_url}
    entries: dict[str, Entry] = {}
    if changes.catalogue is not None and changes.catalogue_at > 0:
        data = orjson.dumps({**head, "saved_at": saved_at, "catalogue": changes.catalogue})
        if len(data) <= MAX_ENTRY_BYTES:
            entries[CATALOGUE] = (changes.catalogue_at, data)
    for key, learned_at, document in changes.keys:
        data = orjson.dumps({**head, "saved_at": saved_at, "key": document})
        if len(data) <= MAX_ENTRY_BYTES:
            entries[key_name(key)] = (learned_at, data)
    return entries


def decode(
    book: QuoteBook,
    entries: dict[str, Entry],
    api_url: str,
    catalogue: dict[str, CataloguePrice],
    *,
    now: float,
    wall: float | None = None,
) -> Decoded:
    """Rebuild states from entries (pure but for reading the book's settings: safe in a
    worker thread). ``catalogue``: the book's own, to price keys when the entries carry
    none; ``now``: the book's clock."""
    wall_now = time.time() if wall is None else wall
    decoded = Decoded({}, 0.0, [], {name: stamp for name, (stamp, _) in entries.items()})
    docs: dict[str, dict[str, Any]] = {}
    for name, (_, data) in entries.items():
        doc = _document(data, api_url)
        if doc is None:
            decoded.dropped += 1
        else:
            docs[name] = doc
    if CATALOGUE in docs:
        raw = docs.pop(CATALOGUE).get("catalogue")
        prices = {
            model: price
            for model, price in ((m, CataloguePrice.from_json(p)) for m, p in _items(raw))
            if price is not None
        }
        if prices:
            decoded.catalogue, decoded.catalogue_at = prices, entries[CATALOGUE][0]
            catalogue = prices
        else:
            decoded.dropped += 1
    for name, doc in docs.items():
        # Templates age by the time the entry spent in the store.
        offline = max(0.0, wall_now - float(doc["saved_at"]))
        restored = book.restore(doc.get("key"), catalogue, now - offline)
        if restored is None or key_name(restored[0]) != name:
            decoded.dropped += 1
        else:
            decoded.states.append(restored)
    return decoded


def _document(data: bytes, api_url: str) -> dict[str, Any] | None:
    if len(data) > MAX_ENTRY_BYTES:
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
        return None
    if doc.get("measures") != list(MEASURES) or doc.get("api_url") != api_url:
        return None
    saved_at = doc.get("saved_at")
    if not isinstance(saved_at, int | float) or isinstance(saved_at, bool):
        return None
    return doc


def _items(raw: Any) -> list[tuple[Any, Any]]:
    return list(raw.items()) if isinstance(raw, dict) else []
