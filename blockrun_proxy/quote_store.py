"""Where learned quotes outlive a process and travel between replicas: ``QuoteStore``.

The quote keeper (quotes/keeper.py) saves the book as named entries, each a stamp (the unix
time of the newest 402 it holds) and opaque bytes (quotes/entries.py owns what they mean);
a store keeps them and hands back the ones newer than what the caller already has. The
same interface has three implementations:

- ``QuoteFile`` (quotes/store.py): one JSON file under ``--state-dir``, the default;
- ``RedisQuoteStore`` (here): two hashes in the fleet's Redis (``--redis-url``), so a new
  replica loads what the others learned and signs up front from its first call;
- ``MemoryQuoteStore`` (here): this process only, for tests.

Every store merges by newest: an entry replaces the stored one of its name only if its
stamp is not older, so two replicas saving the same price key leave the fresher state,
whatever order their writes arrive in.

Entries from a shared store are data, not trust: what is signed from a restored quote
still passes the payer policy (cap, network, asset, payTo) and the budget, so a tampered
entry can at worst cost a probe; the decoder checks the format version, the gateway and
the sizes, and drops what it cannot read.

Bounded: at most ``MAX_ENTRY_BYTES`` per entry and ``MAX_ENTRIES`` names (a new name past
it is not stored: that replica keeps it to itself); an entry not saved again within
``ENTRY_TTL_SECONDS`` is dropped (a model nobody calls any more), and Redis expires the
whole store once no replica wrote for that long. Every Redis call is bounded by the
link's timeout; failures raise ``StoreUnavailable``, which the keeper treats as "start
cold" (loading) or "try again later" (saving): the store is never on the signing path.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from blockrun_proxy.redis_link import RedisLink, RedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

# The catalogue entry is the largest: about 100 bytes per model the gateway lists.
MAX_ENTRY_BYTES = 256 * 1024
MAX_ENTRIES = 1024
MAX_NAME_CHARS = 512
ENTRY_TTL_SECONDS = 7 * 86400.0

# (stamp: unix seconds of what the entry holds, to the millisecond; data)
Entry = tuple[float, bytes]


class StoreUnavailable(Exception):
    """The quote store could not be read or written (in time)."""


class QuoteStore(Protocol):
    # For log lines and /readyz: "redis", "file /path/quotes.json", "memory".
    name: str

    async def load(self, known: Mapping[str, float] | None = None) -> dict[str, Entry]:
        """Every live entry whose stamp is newer than ``known``'s for its name (all of
        them without ``known``)."""
        ...

    async def save(self, entries: Mapping[str, Entry]) -> None:
        """Keep each entry, unless the store holds a newer one of that name. ValueError
        for an entry past the size bounds (nothing is written)."""
        ...


def check_entries(entries: Mapping[str, Entry]) -> None:
    for name, (_, data) in entries.items():
        if not name or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"an entry name must have 1 to {MAX_NAME_CHARS} characters")
        if len(data) > MAX_ENTRY_BYTES:
            raise ValueError(f"a quote entry of {len(data)} bytes exceeds {MAX_ENTRY_BYTES}")


def newer(entries: Mapping[str, Entry], known: Mapping[str, float] | None) -> dict[str, Entry]:
    """The entries whose stamp is above ``known``'s for their name."""
    if not known:
        return dict(entries)
    return {
        name: entry
        for name, entry in entries.items()
        if name not in known or entry[0] > known[name]
    }


class MemoryQuoteStore:
    name = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, Entry] = {}
        self._clock = clock

    async def load(self, known: Mapping[str, float] | None = None) -> dict[str, Entry]:
        horizon = self._clock() - ENTRY_TTL_SECONDS
        live = {name: e for name, e in self._entries.items() if e[0] > horizon}
        self._entries = live
        return newer(live, known)

    async def save(self, entries: Mapping[str, Entry]) -> None:
        check_entries(entries)
        for name, (stamp, data) in entries.items():
            stored = self._entries.get(name)
            if stored is None and len(self._entries) >= MAX_ENTRIES:
                continue
            if stored is None or stored[0] <= stamp:
                self._entries[name] = (stamp, bytes(data))


# Saves many entries in one atomic step: each replaces its stored namesake unless that
# one is newer (stamps in integer milliseconds), new names only while there is room.
SAVE_SCRIPT = """
local stamps, data = KEYS[1], KEYS[2]
local ttl, room = tonumber(ARGV[1]), tonumber(ARGV[2])
local count = redis.call('HLEN', stamps)
local written = 0
for i = 3, #ARGV, 3 do
  local name, stamp = ARGV[i], tonumber(ARGV[i + 1])
  local old = redis.call('HGET', stamps, name)
  local take = false
  if old then
    take = (tonumber(old) or 0) <= stamp
  elseif count < room then
    take = true
    count = count + 1
  end
  if take then
    redis.call('HSET', stamps, name, ARGV[i + 1])
    redis.call('HSET', data, name, ARGV[i + 2])
    written = written + 1
  end
end
if written > 0 then
  redis.call('EXPIRE', stamps, ttl)
  redis.call('EXPIRE', data, ttl)
end
return written
"""


class RedisQuoteStore:
    """Two hashes per fleet and gateway: ``...:stamps`` (name -> stamp in ms) and
    ``...:data`` (name -> bytes). A load reads the small stamps hash and fetches only the
    entries newer than the caller's: a replica re-loading every few seconds moves a few
    kilobytes, not the whole book."""

    name = "redis"

    def __init__(
        self, link: RedisLink, api_url: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._link = link
        # Quotes of one gateway say nothing of another's (testnet, mainnet): apart, so two
        # fleets sharing a prefix never crowd or overwrite each other's.
        gateway = hashlib.sha256(api_url.encode()).hexdigest()[:12]
        tag = "{" + link.key("quotes", gateway) + "}"  # one slot on a cluster
        self._stamps, self._data = f"{tag}:stamps", f"{tag}:data"
        self._script = link.script(SAVE_SCRIPT)
        self._clock = clock

    async def load(self, known: Mapping[str, float] | None = None) -> dict[str, Entry]:
        stamps_key, data_key = self._stamps, self._data
        try:
            raw: dict[Any, Any] = await self._link.call(lambda c: c.hgetall(stamps_key))
        except RedisUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
        horizon = _ms(self._clock() - ENTRY_TTL_SECONDS)
        wanted: dict[str, float] = {}
        stale: list[bytes] = []
        for field, value in raw.items():
            stamp = _stamp(value)
            if not isinstance(field, bytes) or stamp is None or stamp <= horizon:
                stale.append(field)
                continue
            name = field.decode("utf-8", "replace")
            # In whole milliseconds, as stored (the book stamps to the millisecond too).
            if not known or name not in known or stamp > _ms(known[name]):
                wanted[name] = stamp / 1000
        if stale:
            # Best effort: what a failed cleanup leaves, the next load drops again.
            with contextlib.suppress(RedisUnavailable):
                await self._link.call(lambda c: _drop(c, stamps_key, data_key, stale))
        if not wanted:
            return {}
        names = list(wanted)
        try:
            values: list[Any] = await self._link.call(lambda c: c.hmget(data_key, names))
        except RedisUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
        return {
            name: (wanted[name], value)
            for name, value in zip(names, values, strict=True)
            if isinstance(value, bytes) and len(value) <= MAX_ENTRY_BYTES
        }

    async def save(self, entries: Mapping[str, Entry]) -> None:
        check_entries(entries)
        if not entries:
            return
        args: list[Any] = [int(ENTRY_TTL_SECONDS), MAX_ENTRIES]
        for name, (stamp, data) in entries.items():
            args += [name, str(_ms(stamp)), data]
        keys, script = [self._stamps, self._data], self._script
        try:
            await self._link.call(lambda c: script(keys=keys, args=args, client=c))
        except RedisUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc


async def _drop(client: Redis, stamps: str, data: str, names: list[bytes]) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.hdel(stamps, *names)
        pipe.hdel(data, *names)
        await pipe.execute()


def _ms(stamp: float) -> int:
    return round(stamp * 1000)


def _stamp(value: Any) -> int | None:
    """A stored stamp (integer milliseconds); None for anything else."""
    if not isinstance(value, bytes) or not value.isdigit() or len(value) > 16:
        return None
    return int(value)
