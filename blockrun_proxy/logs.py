"""Logging: text or JSON lines, one access line per request, written off the event loop.

``setup`` routes every logger through a bounded queue to a writer thread: a slow
log pipe (a stalled container log driver, a full terminal) then costs dropped lines,
counted in ``blockrun_proxy_log_lines_dropped_total``, never a blocked event loop or
an ever-growing buffer.

Structured fields travel as ``extra={"fields": {...}}``: JSON puts them beside
``msg``, text appends them as ``key=value`` (except those named in ``in_message``).
The access line carries ids, route, model, status, timings, sizes and cost; never
headers, bodies or key material.
"""

from __future__ import annotations

import copy
import logging
import queue
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from logging.handlers import QueueHandler, QueueListener
from typing import Any, TextIO

import orjson

from blockrun_proxy.exchange import Exchange
from blockrun_proxy.x402 import usd

ACCESS_LOGGER = "blockrun_proxy.access"
LOG_FORMATS = ("text", "json")
# Lines held for the writer thread; past it, new lines are dropped and counted.
QUEUE_LINES = 10_000
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
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            said = getattr(record, "in_message", ())  # fields the message already shows
            extra = " ".join(
                f"{k}={v}" for k, v in fields.items() if v is not None and k not in said
            )
            if extra:
                line = f"{line} {extra}"
        return line


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")


class DroppingQueueHandler(QueueHandler):
    """A QueueHandler that drops (and counts) lines instead of blocking when full."""

    def __init__(self, lines: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(lines)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Bake the message and traceback text now (args may change later); the final
        # formatting, the costly part, happens in the writer thread.
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def setup(level: str, log_format: str, *, stream: TextIO | None = None) -> Callable[[], None]:
    """Configure the root logger; returns the function that flushes and stops the writer."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    lines: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_LINES)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    queued = DroppingQueueHandler(lines)
    root.addHandler(queued)
    root.setLevel(level.upper())
    listener = QueueListener(lines, handler)
    listener.start()

    def stop() -> None:
        listener.stop()  # writes what is queued
        # The loop is gone by now: later lines (interpreter exit) may be written directly.
        root.removeHandler(queued)
        root.addHandler(handler)

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
