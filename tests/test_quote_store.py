"""Learned quotes shared through Redis: opaque snapshots per price key, bounded, timed out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from support.redis_server import RedisServer

from blockrun_proxy import quote_store
from blockrun_proxy.quote_store import (
    MAX_SNAPSHOT_BYTES,
    SNAPSHOT_TTL_SECONDS,
    MemoryQuoteStore,
    RedisQuoteStore,
    StoreUnavailable,
)
from blockrun_proxy.redis_link import RedisLink


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    link = RedisLink(redis_server.url, timeout=0.3, prefix="test")
    yield link
    await link.aclose()


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple]:
    """Two handles on one store (two replicas), and the clock they share."""
    clock = Clock()
    if request.param == "memory":
        store = MemoryQuoteStore(clock=clock)
        yield store, store, clock
        return
    server = request.getfixturevalue("redis_server")
    links = [RedisLink(server.url, timeout=0.3, prefix="test") for _ in range(2)]
    yield RedisQuoteStore(links[0], clock=clock), RedisQuoteStore(links[1], clock=clock), clock
    for link in links:
        await link.aclose()


async def test_a_snapshot_saved_by_one_replica_is_loaded_by_another(stores: tuple) -> None:
    first, second, _ = stores
    assert await second.load() == {}
    await first.save("openai/gpt-5.5", b"\x00binary\xffsnapshot")
    await first.save("anthropic/claude", b"v1")
    await first.save("anthropic/claude", b"v2")  # replaced, not appended
    assert await second.load() == {
        "openai/gpt-5.5": b"\x00binary\xffsnapshot",
        "anthropic/claude": b"v2",
    }


async def test_snapshots_not_saved_again_expire(stores: tuple) -> None:
    first, second, clock = stores
    await first.save("old", b"a")
    clock.now += SNAPSHOT_TTL_SECONDS / 2
    await first.save("fresh", b"b")
    clock.now += SNAPSHOT_TTL_SECONDS / 2 + 1
    assert await second.load() == {"fresh": b"b"}


async def test_sizes_are_bounded(stores: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, _ = stores
    with pytest.raises(ValueError, match="exceeds"):
        await first.save("big", b"x" * (MAX_SNAPSHOT_BYTES + 1))
    with pytest.raises(ValueError, match="price key"):
        await first.save("", b"x")
    monkeypatch.setattr(quote_store, "MAX_KEYS", 3)
    for index in range(5):
        await first.save(f"model-{index}", b"x")
    kept = await second.load()
    assert len(kept) == 3
    known = sorted(kept)[0]
    await first.save(known, b"new")  # a key already stored may always be refreshed
    assert (await second.load())[known] == b"new"


async def test_redis_snapshots_expire_in_redis_too(link: RedisLink) -> None:
    await RedisQuoteStore(link).save("m", b"x")
    ttl = await link.client.ttl("test:quotes")
    assert 0 < ttl <= SNAPSHOT_TTL_SECONDS


async def test_a_hung_redis_costs_the_book_at_most_the_timeout(
    redis_server: RedisServer, link: RedisLink
) -> None:
    store = RedisQuoteStore(link)
    await store.save("m", b"x")
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.load()
        with pytest.raises(StoreUnavailable):
            await store.save("m", b"y")
        assert time.monotonic() - started < 1.0
    finally:
        redis_server.resume()
    assert await store.load() == {"m": b"x"}


async def test_junk_in_the_hash_is_dropped_not_served(link: RedisLink) -> None:
    await link.client.hset("test:quotes", "short", b"abc")
    store = RedisQuoteStore(link)
    assert await store.load() == {}
    assert not await link.client.hexists("test:quotes", "short")
