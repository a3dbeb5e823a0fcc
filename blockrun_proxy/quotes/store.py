"""The quote store on disk (``QuoteStore``, quote_store.py): one JSON file under
``--state-dir``, the default when no Redis is shared.

``{"format": 2, "api_url": ..., "entries": {name: [stamp, text]}}``. A save merges into
what the file holds, newest entry per name, under an advisory lock (``flock`` on a lock
file beside it): ``--workers`` processes sharing a state directory then add to the file
instead of overwriting each other's keys, and each picks up the others' on its next load.
The write is atomic (a temporary file in the same directory, flushed, then renamed over
the old one), so a crash mid-write leaves the previous file.

The file is read back only if it is small, parses, is of this format and was written for
the same gateway URL; anything else reads as empty, and the next save replaces it. The
file I/O is blocking: both methods run it in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from blockrun_proxy.quote_store import (
    ENTRY_TTL_SECONDS,
    MAX_ENTRIES,
    Entry,
    StoreUnavailable,
    check_entries,
    newer,
)

log = logging.getLogger(__name__)

FILE_NAME = "quotes.json"
FILE_FORMAT = 2  # 1: the whole book as one document (read as empty: starts cold once)
# The entries are bounded (names x entry size); a file larger than this is not ours.
MAX_FILE_BYTES = 8 * 1024 * 1024


class QuoteFile:
    def __init__(
        self, directory: Path, api_url: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = directory / FILE_NAME
        self.name = f"file {self.path}"
        # Quotes learned from one gateway say nothing about another (testnet vs mainnet).
        self.api_url = api_url
        self._clock = clock

    async def load(self, known: Mapping[str, float] | None = None) -> dict[str, Entry]:
        return newer(await asyncio.to_thread(self._read), known)

    async def save(self, entries: Mapping[str, Entry]) -> None:
        check_entries(entries)
        if entries:
            await asyncio.to_thread(self._merge, dict(entries))

    # --- blocking, in a worker thread ---------------------------------------------------------

    def _read(self) -> dict[str, Entry]:
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc.strerror}") from None
        if len(raw) > MAX_FILE_BYTES:
            log.warning("ignoring saved quotes %s: larger than %d bytes", self.path, MAX_FILE_BYTES)
            return {}
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("ignoring saved quotes %s: not JSON", self.path)
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
            return {}
        if doc.get("api_url") != self.api_url:
            return {}
        horizon = self._clock() - ENTRY_TTL_SECONDS
        entries: dict[str, Entry] = {}
        raw_entries = doc.get("entries")
        for name, value in (raw_entries if isinstance(raw_entries, dict) else {}).items():
            entry = _entry(value)
            if entry is not None and entry[0] > horizon:
                entries[name] = entry
        return entries

    def _merge(self, entries: dict[str, Entry]) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _locked(self.path.with_name(FILE_NAME + ".lock")):
                merged = self._read()
                for name, (stamp, data) in entries.items():
                    stored = merged.get(name)
                    if stored is None and len(merged) >= MAX_ENTRIES:
                        continue
                    if stored is None or stored[0] <= stamp:
                        merged[name] = (stamp, data)
                self._write(merged)
        except OSError as exc:
            raise StoreUnavailable(f"cannot save quotes in {directory}: {exc.strerror}") from None

    def _write(self, entries: dict[str, Entry]) -> None:
        body = orjson.dumps(
            {
                "format": FILE_FORMAT,
                "api_url": self.api_url,
                "entries": {
                    name: [stamp, data.decode("utf-8", "replace")]
                    for name, (stamp, data) in entries.items()
                },
            }
        )
        if len(body) > MAX_FILE_BYTES:
            raise StoreUnavailable(f"not saving quotes: {len(body)} bytes is over the limit")
        fd, tmp = tempfile.mkstemp(prefix=".quotes-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock for a read-merge-write (other processes wait)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _entry(value: Any) -> Entry | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    stamp, text = value
    if not isinstance(stamp, int | float) or isinstance(stamp, bool) or not isinstance(text, str):
        return None
    return float(stamp), text.encode()
