"""The byte pump: upstream response body -> client, unchanged, at the client's pace.

No SSE or JSON parsing happens here. ``readany`` (what ``iter_any`` loops over)
hands over whatever bytes have arrived without waiting to fill a buffer, and
``await write`` returns only once aiohttp's transport is below its high-water
mark, so a slow client stops the upstream read (the aiohttp client pauses the
socket at 2x ``read_bufsize``) and memory per stream stays bounded by those two
buffers whatever the client's speed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import ClientError, ClientResponse, web


@dataclass(slots=True)
class PipeStats:
    bytes_sent: int = 0
    first_byte_at: float | None = None


class UpstreamBroke(Exception):
    """The upstream body ended early (reset, bad chunking, idle timeout) midway."""


async def pump(upstream: ClientResponse, downstream: web.StreamResponse, stats: PipeStats) -> None:
    """Copy the upstream body to an already prepared ``downstream`` and finish it.

    Upstream read failures raise ``UpstreamBroke``: the caller must then drop the
    client connection rather than end the body cleanly, so the client sees a
    truncated response instead of a short one that looks complete. Write failures
    (the client went away) propagate unchanged.
    """
    read = upstream.content.readany
    write = downstream.write
    while True:
        try:
            chunk = await read()
        except (ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UpstreamBroke(type(exc).__name__) from exc
        if not chunk:
            break
        if stats.first_byte_at is None:
            stats.first_byte_at = time.monotonic()
        await write(chunk)
        stats.bytes_sent += len(chunk)
    await downstream.write_eof()
