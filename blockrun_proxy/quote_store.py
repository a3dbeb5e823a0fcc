"""Where learned quotes outlive a process and travel between replicas.

The quote book (quotes/) owns what a snapshot means; a store only keeps opaque bytes per
price key (a model id today, a route and model tomorrow). A new replica that loads the
fleet's snapshots at start signs up front from its first call instead of re-learning
every price from 402s.

- ``MemoryQuoteStore``: in this process only (tests; a proxy without Redis or state_dir).
- ``RedisQuoteStore``: one Redis hash per fleet (``--redis-url``), every snapshot beside
  the time it was saved.

Snapshots from a shared store are data, not trust: everything signed from a restored quote
still passes the payer policy (cap, network, asset, payTo) and the budget, so a tampered
snapshot can at worst cost a probe. The book must still validate what it restores (its
own version tag, bounded sizes) and drop what it cannot read.

Bounded: at most ``MAX_SNAPSHOT_BYTES`` per snapshot and ``MAX_KEYS`` keys; a snapshot not
saved again within ``SNAPSHOT_TTL_SECONDS`` is dropped on the next load (a model nobody
calls any more), and the whole hash expires when no replica saved anything for that long.
Every call is bounded by the link's timeout and raises ``StoreUnavailable`` on failure:
the book calls ``save`` from a background task and treats a failed ``load`` as a cold
start, so Redis is never on the signing path.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from blockrun_proxy.redis_link import RedisLink, RedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

MAX_SNAPSHOT_BYTES = 64 * 1024
MAX_KEYS = 1024
MAX_KEY_CHARS = 256
SNAPSHOT_TTL_SECONDS = 7 * 86400.0
# Stored value: 8-byte big-endian float (unix time saved), then the snapshot.
_STAMP = struct.Struct(">d")


class StoreUnavailable(Exception):
    """The quote store could not be read or written in time."""


class QuoteStore(Protocol):
    async def load(self) -> dict[str, bytes]:
        """Every snapshot saved (and not expired), by price key."""
        ...

    async def save(self, key: str, snapshot: bytes) -> None:
        """Replace the snapshot of ``key``. Raises ValueError past the size bounds."""
        ...


def check_snapshot(key: str, snapshot: bytes) -> None:
    if not key or len(key) > MAX_KEY_CHARS:
        raise ValueError(f"a price key must have 1 to {MAX_KEY_CHARS} characters")
    if len(snapshot) > MAX_SNAPSHOT_BYTES:
        raise ValueError(f"quote snapshot of {len(snapshot)} bytes exceeds {MAX_SNAPSHOT_BYTES}")


class MemoryQuoteStore:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._snapshots: dict[str, tuple[float, bytes]] = {}
        self._clock = clock

    async def load(self) -> dict[str, bytes]:
        horizon = self._clock() - SNAPSHOT_TTL_SECONDS
        return {key: data for key, (saved, data) in self._snapshots.items() if saved > horizon}

    async def save(self, key: str, snapshot: bytes) -> None:
        check_snapshot(key, snapshot)
        if key not in self._snapshots and len(self._snapshots) >= MAX_KEYS:
            self._drop_oldest()
        self._snapshots[key] = (self._clock(), bytes(snapshot))

    def _drop_oldest(self) -> None:
        oldest = min(self._snapshots, key=lambda k: self._snapshots[k][0])
        del self._snapshots[oldest]


class RedisQuoteStore:
    def __init__(self, link: RedisLink, *, clock: Callable[[], float] = time.time) -> None:
        self._link = link
        self._key = link.key("quotes")
        self._clock = clock

    async def load(self) -> dict[str, bytes]:
        try:
            raw: dict[Any, Any] = await self._link.call(lambda client: client.hgetall(self._key))
        except RedisUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
        horizon = self._clock() - SNAPSHOT_TTL_SECONDS
        snapshots: dict[str, bytes] = {}
        stale: list[bytes] = []
        for field, value in raw.items():
            if not isinstance(field, bytes) or not isinstance(value, bytes):
                continue
            if len(value) < _STAMP.size or len(value) > _STAMP.size + MAX_SNAPSHOT_BYTES:
                stale.append(field)
                continue
            (saved,) = _STAMP.unpack_from(value)
            if saved <= horizon:
                stale.append(field)
                continue
            snapshots[field.decode("utf-8", "replace")] = value[_STAMP.size :]
        if stale:
            # Best effort: what a failed cleanup leaves, the next load drops again.
            with contextlib.suppress(RedisUnavailable):
                await self._link.call(lambda client: client.hdel(self._key, *stale))
        return snapshots

    async def save(self, key: str, snapshot: bytes) -> None:
        check_snapshot(key, snapshot)
        value = _STAMP.pack(self._clock()) + snapshot
        ttl = int(SNAPSHOT_TTL_SECONDS)

        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                # A new key past MAX_KEYS is not written: the book re-learns that model
                # itself, and the fleet's hash stays bounded.
                pipe.hlen(self._key)
                pipe.hexists(self._key, key)
                count, exists = await pipe.execute()
            if not exists and count >= MAX_KEYS:
                return
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(self._key, key, value)
                pipe.expire(self._key, ttl)
                await pipe.execute()

        try:
            await self._link.call(write)
        except RedisUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
