"""Logging: text or JSON lines, one access line per request, written off the event loop.

``setup`` routes every logger through a queue bounded in lines and in bytes to a
writer thread: a slow log pipe (a stalled container log driver, a full terminal) then
costs dropped lines, counted in ``blockrun_proxy_log_lines_dropped_total``, never a
blocked event loop or an ever-growing buffer.

Client-controlled text (a model name, a path, a method) cannot forge a line or a field,
nor make a line big: every string field is cut to ``MAX_FIELD_CHARS`` with a
``...[+N]`` marker before it is queued, and the text format escapes control characters
in the message and quotes, logfmt-style, any field value with a space, a quote, an
``=``, a backslash or an unprintable character (JSON escapes them by itself).

Structured fields travel as ``extra={"fields": {...}}``: JSON puts them beside
``msg``, text appends them as ``key=value`` (except those named in ``in_message``).
The access line carries ids, route, model, status, timings, sizes and cost; never
headers, bodies or key material.
"""

from __future__ import annotations

import copy
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from logging.handlers import QueueHandler, QueueListener
from typing import Any, TextIO

import orjson

from blockrun_proxy.exchange import Exchange
from blockrun_proxy.x402 import usd

ACCESS_LOGGER = "blockrun_proxy.access"
LOG_FORMATS = ("text", "json")
# Lines held for the writer thread; past either bound, new lines are dropped and counted.
QUEUE_LINES = 10_000
QUEUE_BYTES = 16 * 1024 * 1024
# A string field longer than this is cut, with a marker saying how much was left out.
MAX_FIELD_CHARS = 200
# Messages are ours, but may quote a client's path or an exception's text.
MAX_MESSAGE_CHARS = 4096
MAX_TRACEBACK_CHARS = 32 * 1024
# What a queued record costs besides its strings (the copied LogRecord and its dicts,
# measured with tracemalloc at about 1.1 KB for an access line).
RECORD_OVERHEAD_BYTES = 1024
# At exit, how long the writer may take to write what is queued: a stalled sink must not
# hold the exit past the drain's grace.
FLUSH_SECONDS = 0.5
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

access_log = logging.getLogger(ACCESS_LOGGER)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, pid, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # One record, one line: a newline in the message would start a line of its own.
        record.message = escape_text(record.message)
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            said = getattr(record, "in_message", ())  # fields the message already shows
            extra = " ".join(
                f"{k}={logfmt_value(v)}"
                for k, v in fields.items()
                if v is not None and k not in said
            )
            if extra:
                line = f"{line} {extra}"
        return line


# Characters that end or fake a ``key=value`` pair, besides the unprintable ones.
_LOGFMT_SPECIAL = re.compile(r'[\s"=\\]')
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def logfmt_value(value: object) -> str:
    """A field value as text: bare when it is one plain word, else quoted and escaped."""
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and _LOGFMT_SPECIAL.search(text) is None:
        return text
    return '"' + "".join(_escape_char(c, quoting=True) for c in text) + '"'


def escape_text(text: str) -> str:
    """Free text on one line: unprintable characters (newlines first) as escapes."""
    if text.isprintable():
        return text
    return "".join(_escape_char(c, quoting=False) for c in text)


def _escape_char(char: str, *, quoting: bool) -> str:
    if char.isprintable():
        return _NAMED_ESCAPES[char] if quoting and char in ('"', "\\") else char
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` cut to ``limit`` characters with a ``...[+N]`` marker, and made encodable
    (a lone surrogate from a client's bytes would make the JSON writer fail)."""
    if len(text) > limit:
        text = f"{text[:limit]}...[+{len(text) - limit}]"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode()
    return text


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")


class DroppingQueueHandler(QueueHandler):
    """A QueueHandler that drops (and counts) lines instead of blocking when its queue is
    full, in lines or in bytes (``queued_bytes``, given back as the writer takes them)."""

    def __init__(
        self, lines: queue.Queue[logging.LogRecord], *, max_bytes: int = QUEUE_BYTES
    ) -> None:
        super().__init__(lines)
        self.dropped = 0
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self._lock = threading.Lock()  # records come from the loop and from executor threads

    def enqueue(self, record: logging.LogRecord) -> None:
        size: int = getattr(record, "queued_bytes", 0)
        with self._lock:
            if self.queued_bytes + size > self.max_bytes:
                self.dropped += 1
                return
            self.queued_bytes += size
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.queued_bytes -= size
                self.dropped += 1

    def taken(self, record: logging.LogRecord) -> None:
        """The writer took ``record`` off the queue: its bytes are free again."""
        with self._lock:
            self.queued_bytes -= getattr(record, "queued_bytes", 0)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Bake the message and traceback text now (args may change later), and cut what
        # could be big; the final formatting, the costly part, happens in the writer thread.
        record = copy.copy(record)
        record.msg = clip(record.getMessage(), MAX_MESSAGE_CHARS)
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = clip(record.exc_text, MAX_TRACEBACK_CHARS)
        size = RECORD_OVERHEAD_BYTES + sys.getsizeof(record.msg) + sys.getsizeof(record.exc_text)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            clipped = {k: clip(v) if isinstance(v, str) else v for k, v in fields.items()}
            size += sum(sys.getsizeof(v) for v in clipped.values())
            record.fields = clipped
        record.queued_bytes = size
        return record


class _Writer(QueueListener):
    """The writer thread: hands each record's bytes back to the handler that queued it."""

    def __init__(
        self,
        lines: queue.Queue[logging.LogRecord],
        sink: logging.Handler,
        source: DroppingQueueHandler,
    ) -> None:
        super().__init__(lines, sink)
        self._source = source
        self._lines: queue.Queue[Any] = lines  # typed as the queue it is, for stop_within

    def stop_within(self, timeout: float) -> bool:
        """``stop()`` that gives up after ``timeout`` seconds on a stalled sink."""
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        try:
            self._lines.put(None, timeout=timeout)  # QueueListener's stop sentinel
        except queue.Full:
            return False
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def dequeue(self, block: bool) -> logging.LogRecord:
        record: logging.LogRecord = super().dequeue(block)
        if isinstance(record, logging.LogRecord):  # not the stop sentinel
            self._source.taken(record)
        return record


def setup(level: str, log_format: str, *, stream: TextIO | None = None) -> Callable[[], bool]:
    """Configure the root logger; returns the function that flushes and stops the writer.

    That function gives the writer ``FLUSH_SECONDS`` to write what is queued and returns
    whether it finished: False means the sink is stalled and the writer thread is stuck
    in a write, holding the stream (see ``cli.serve``).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    lines: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_LINES)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    queued = DroppingQueueHandler(lines)
    root.addHandler(queued)
    root.setLevel(level.upper())
    listener = _Writer(lines, handler, queued)
    listener.start()

    def stop() -> bool:
        root.removeHandler(queued)
        if not listener.stop_within(FLUSH_SECONDS):
            return False  # later lines are dropped: writing them would block on the sink
        # The loop is gone by now: later lines (interpreter exit) may be written directly.
        root.addHandler(handler)
        return True

    return stop


def dropped_lines() -> int | None:
    """Lines dropped so far by the handler ``setup`` installed, None if it is not installed."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, DroppingQueueHandler):
            return handler.dropped
    return None


def log_access(exchange: Exchange, *, now: float) -> None:
    """The one access line for a finished request."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    ttfb = exchange.ttfb()
    fields = {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "route": exchange.route,
        "status": exchange.status,
        "model": exchange.model,
        "latency_ms": round((now - exchange.started) * 1000, 1),
        "ttfb_ms": None if ttfb is None else round(ttfb * 1000, 1),
        "bytes": exchange.bytes_out,
        "cost_usd": None if exchange.cost_atomic is None else usd(exchange.cost_atomic),
        # Sent, so possibly spent: what a 424 or a 499 after the paid send may have cost.
        "signed_usd": None if exchange.signed_atomic is None else usd(exchange.signed_atomic),
        "error": exchange.refusal or exchange.upstream_error,
    }
    access_log.info(
        "%s %s %d",
        exchange.method,
        exchange.route,
        exchange.status,
        extra={"fields": fields, "in_message": ("method", "route", "status")},
    )
