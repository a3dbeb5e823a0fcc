"""The quote book on disk: one small JSON file under the state directory.

Written atomically (a temporary file in the same directory, flushed, then renamed over
the old one), so a crash mid-write leaves the previous file. Read back only if it is
small, parses, was written for the same gateway URL, and is of the book's format
(book.py checks that); anything else is ignored and the book starts cold. Both
directions do blocking file I/O: call them in a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

FILE_NAME = "quotes.json"
# The book is bounded (keys x window); a file larger than this is not ours.
MAX_FILE_BYTES = 4 * 1024 * 1024


class QuoteFile:
    def __init__(self, directory: Path, api_url: str) -> None:
        self.path = directory / FILE_NAME
        # Quotes learned from one gateway say nothing about another (testnet vs mainnet).
        self.api_url = api_url

    def load(self) -> dict[str, Any] | None:
        """The saved book, or None when there is none we can trust."""
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read saved quotes %s: %s", self.path, exc.strerror)
            return None
        if len(raw) > MAX_FILE_BYTES:
            log.warning("ignoring saved quotes %s: larger than %d bytes", self.path, MAX_FILE_BYTES)
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("ignoring saved quotes %s: not JSON", self.path)
            return None
        if not isinstance(doc, dict) or doc.get("api_url") != self.api_url:
            return None
        book = doc.get("book")
        return book if isinstance(book, dict) else None

    def save(self, book: dict[str, Any]) -> bool:
        """Write the book; False (and a log line) if it could not be written."""
        data = orjson.dumps({"api_url": self.api_url, "book": book})
        if len(data) > MAX_FILE_BYTES:
            log.warning("not saving quotes: %d bytes is over the limit", len(data))
            return False
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".quotes-", suffix=".tmp", dir=directory)
        except OSError as exc:
            log.warning("cannot save quotes in %s: %s", directory, exc.strerror)
            return False
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save quotes to %s: %s", self.path, exc.strerror)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        return True
