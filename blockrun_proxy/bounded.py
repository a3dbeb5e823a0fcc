"""Reading an answer body that a remote party controls, without buffering what it chooses.

One place for every bounded read (the gateway's 402s and catalogue, the chain RPCs), over
either HTTP client: both bodies offer ``readany``. aiohttp's ``read(n)`` returns whatever
has arrived (possibly less than ``n`` while more is coming), so it is not used for this.
"""

from __future__ import annotations

from typing import Protocol


class BodyStream(Protocol):
    async def readany(self) -> bytes: ...


async def read_prefix(stream: BodyStream, limit: int) -> bytes:
    """The body's first ``limit`` bytes (all of it when shorter); the rest is not read."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.readany()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    data = b"".join(parts)
    return data if size <= limit else data[:limit]


async def read_bounded(stream: BodyStream, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` bytes (never buffers much more)."""
    data = await read_prefix(stream, limit + 1)
    return None if len(data) > limit else data
