"""The byte pump: upstream response body -> client, unchanged, at the client's pace.

No SSE or JSON parsing happens here. ``readany`` (what ``iter_any`` loops over)
hands over whatever bytes have arrived without waiting to fill a buffer, and
``await write`` returns only once aiohttp's transport is below its high-water
mark, so a slow client stops the upstream read (the aiohttp client pauses the
socket at 2x ``read_bufsize``, h1 past its ``HIGH_WATER``) and memory per stream stays
bounded by those two buffers whatever the client's speed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from aiohttp import ClientError, ClientResponse, web

from blockrun_proxy import h1


@dataclass(slots=True)
class PipeStats:
    bytes_sent: int = 0
    first_byte_at: float | None = None


# An open upstream answer from either client (aiohttp's, or the proxy's own h1).
Source = ClientResponse | h1.Response
# What either client raises while a body is read (an idle timeout, a reset, bad chunking).
READ_FAILED = (ClientError, h1.HTTPError, asyncio.TimeoutError, OSError)


class BodyFilter(Protocol):
    """Rewrites a body as it streams (the API-key rail's redaction): ``feed`` each chunk,
    get what may be sent now; ``flush`` at the end for what was held back."""

    def feed(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class UpstreamBroke(Exception):
    """The upstream body ended early (reset, bad chunking, idle timeout) midway."""


def coalesce_headers(upstream: Source, downstream: web.StreamResponse) -> None:
    """Send the response headers with the first body bytes when those are already here.

    aiohttp's StreamResponse writes headers at ``prepare`` (one syscall and packet)
    and the body after. When the upstream's first bytes have arrived with its headers
    (the common case), holding ours back saves that write. When nothing has arrived
    (a model still thinking), the headers go out at once as before, so the client
    sees the status and cost headers without waiting for the first token.
    """
    if upstream.content.total_bytes:
        downstream._send_headers_immediately = False  # aiohttp's own knob (Response sets it)


async def pump(upstream: Source, downstream: web.StreamResponse, stats: PipeStats) -> None:
    """Copy the upstream body to an already prepared ``downstream`` and finish it.

    Upstream read failures raise ``UpstreamBroke``: the caller must then drop the
    client connection rather than end the body cleanly, so the client sees a
    truncated response instead of a short one that looks complete. Write failures
    (the client went away) propagate unchanged.
    """
    content = upstream.content
    write = downstream.write
    while True:
        try:
            chunk = await content.readany()
        except READ_FAILED as exc:
            raise UpstreamBroke(type(exc).__name__) from exc
        if not chunk:
            break
        if stats.first_byte_at is None:
            stats.first_byte_at = time.monotonic()
        stats.bytes_sent += len(chunk)
        if content.at_eof():
            # The whole rest has arrived: send it with the end of the body in one write.
            await downstream.write_eof(chunk)
            return
        await write(chunk)
    await downstream.write_eof()


async def pump_filtered(
    upstream: Source,
    downstream: web.StreamResponse,
    stats: PipeStats,
    body_filter: BodyFilter,
) -> None:
    """``pump`` through ``body_filter``: the same backpressure and failure rules, for the
    rail whose answers must be rewritten on the way (the caller sends no Content-Length:
    the filter may change the length)."""
    content = upstream.content
    while True:
        try:
            chunk = await content.readany()
        except READ_FAILED as exc:
            raise UpstreamBroke(type(exc).__name__) from exc
        if not chunk:
            break
        out = body_filter.feed(chunk)
        if out:
            if stats.first_byte_at is None:
                stats.first_byte_at = time.monotonic()
            stats.bytes_sent += len(out)
            await downstream.write(out)
    tail = body_filter.flush()
    if tail and stats.first_byte_at is None:
        stats.first_byte_at = time.monotonic()
    stats.bytes_sent += len(tail)
    await downstream.write_eof(tail)
