"""The quote stores: named, stamped entries, merged by newest, bounded, timed out. The
same tests run against memory, a real redis-server and the file under --state-dir."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.redis_server import RedisServer

from blockrun_proxy import quote_store
from blockrun_proxy.quote_store import (
    ENTRY_TTL_SECONDS,
    MAX_ENTRY_BYTES,
    MemoryQuoteStore,
    RedisQuoteStore,
    StoreUnavailable,
)
from blockrun_proxy.quotes import store as file_store
from blockrun_proxy.quotes.store import FILE_NAME, MAX_FILE_BYTES, QuoteFile
from blockrun_proxy.redis_link import RedisLink

API = "https://gateway.test/api"
TIMEOUT = 5.0  # generous: these tests are about what is stored, not timeouts


class Clock:
    def __init__(self) -> None:
        self.now = round(time.time(), 3)  # stamps are kept to the millisecond

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    link = RedisLink(redis_server.url, timeout=TIMEOUT, prefix="test")
    yield link
    await link.aclose()


@pytest.fixture(params=["memory", "redis", "file"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple]:
    """Two handles on one store (two replicas, or two --workers processes), and the
    clock they share."""
    clock = Clock()
    if request.param == "memory":
        store = MemoryQuoteStore(clock=clock)
        yield store, store, clock
    elif request.param == "file":
        yield QuoteFile(tmp_path, API, clock=clock), QuoteFile(tmp_path, API, clock=clock), clock
    else:
        server = request.getfixturevalue("redis_server")
        links = [RedisLink(server.url, timeout=TIMEOUT, prefix="test") for _ in range(2)]
        yield (
            RedisQuoteStore(links[0], API, clock=clock),
            RedisQuoteStore(links[1], API, clock=clock),
            clock,
        )
        for link in links:
            await link.aclose()


async def test_what_one_replica_saves_another_loads(stores: tuple) -> None:
    first, second, clock = stores
    assert await second.load() == {}
    t = clock.now
    await first.save({"key a": (t, b'{"a": 1}'), "catalogue": (t - 5, b'{"c": 2}')})
    await first.save({"key a": (t + 1, b'{"a": 3}')})  # replaced, not appended
    assert await second.load() == {"key a": (t + 1, b'{"a": 3}'), "catalogue": (t - 5, b'{"c": 2}')}


async def test_the_newest_entry_of_a_name_wins_whatever_the_order(stores: tuple) -> None:
    first, second, clock = stores
    t = clock.now
    await first.save({"key a": (t + 2, b'"new"')})
    await second.save({"key a": (t + 1, b'"old"')})  # arrives late: older, not taken
    assert await first.load() == {"key a": (t + 2, b'"new"')}
    await second.save({"key a": (t + 2, b'"same time"')})  # as new: taken
    assert (await first.load())["key a"][1] == b'"same time"'


async def test_a_load_returns_only_what_is_newer_than_the_caller_knows(stores: tuple) -> None:
    first, second, clock = stores
    t = clock.now
    await first.save({"key a": (t, b"1"), "key b": (t, b"2"), "key c": (t, b"3")})
    known = {"key a": t, "key b": t - 1}
    assert await second.load(known) == {"key b": (t, b"2"), "key c": (t, b"3")}


async def test_entries_not_saved_again_expire(stores: tuple) -> None:
    first, second, clock = stores
    t = clock.now
    await first.save({"old": (t, b"1")})
    clock.now += ENTRY_TTL_SECONDS / 2
    await first.save({"fresh": (clock.now, b"2")})
    clock.now += ENTRY_TTL_SECONDS / 2 + 1
    assert set(await second.load()) == {"fresh"}


async def test_sizes_are_bounded(stores: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, clock = stores
    t = clock.now
    with pytest.raises(ValueError, match="exceeds"):
        await first.save({"big": (t, b"x" * (MAX_ENTRY_BYTES + 1))})
    with pytest.raises(ValueError, match="name"):
        await first.save({"": (t, b"x")})
    monkeypatch.setattr(quote_store, "MAX_ENTRIES", 3)
    monkeypatch.setattr(file_store, "MAX_ENTRIES", 3)
    await first.save({f"model-{i}": (t, b"x") for i in range(5)})
    kept = await second.load()
    assert len(kept) == 3
    known = sorted(kept)[0]
    await first.save({known: (t + 1, b"new")})  # a name already stored may always be refreshed
    assert (await second.load())[known] == (t + 1, b"new")


async def test_redis_keeps_each_gateway_apart_and_expires_in_redis_too(link: RedisLink) -> None:
    t = round(time.time(), 3)
    await RedisQuoteStore(link, API).save({"key a": (t, b"mainnet")})
    await RedisQuoteStore(link, "https://testnet.test/api").save({"key a": (t, b"testnet")})
    assert await RedisQuoteStore(link, API).load() == {"key a": (t, b"mainnet")}
    keys = sorted(k.decode() for k in await link.client.keys("*test:quotes*"))
    assert len(keys) == 4  # stamps and data, per gateway
    for key in keys:
        assert 0 < await link.client.ttl(key) <= ENTRY_TTL_SECONDS


async def test_a_hung_redis_costs_the_keeper_at_most_the_timeout(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(redis_server.url, timeout=0.3, prefix="test")
    store = RedisQuoteStore(link, API)
    try:
        await store.save({"m": (time.time(), b"x")})
        redis_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.load()
            with pytest.raises(StoreUnavailable):
                await store.save({"m": (time.time(), b"y")})
            # Two bounded calls; the bound is the point, the margin is for a loaded machine.
            assert time.monotonic() - started < 2 * 0.3 + 1.5
        finally:
            redis_server.resume()
        assert (await store.load())["m"][1] == b"x"
    finally:
        await link.aclose()


async def test_junk_in_redis_is_dropped_not_served(link: RedisLink) -> None:
    store = RedisQuoteStore(link, API)
    await store.save({"good": (time.time(), b"1")})
    stamps, data = store._stamps, store._data
    await link.client.hset(stamps, "not-a-stamp", b"yesterday")
    await link.client.hset(stamps, "no-data", str(round(time.time() * 1000)))
    assert set(await store.load()) == {"good"}
    assert not await link.client.hexists(stamps, "not-a-stamp")
    assert await link.client.hlen(data) == 1


async def test_a_file_that_is_not_ours_reads_as_empty(tmp_path: Path) -> None:
    store = QuoteFile(tmp_path, API)
    path = tmp_path / FILE_NAME
    assert await store.load() == {}  # nothing saved yet
    path.write_bytes(b"\x00 not json")
    assert await store.load() == {}
    await QuoteFile(tmp_path, "https://other.test/api").save({"a": (time.time(), b"1")})
    assert await store.load() == {}  # written for another gateway
    await store.save({"a": (time.time(), b"2")})  # and replaced by this one's
    assert (await store.load())["a"][1] == b"2"
    path.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    assert await store.load() == {}


async def test_a_failed_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = QuoteFile(tmp_path, API)
    await store.save({"a": (time.time(), b"1")})
    before = (tmp_path / FILE_NAME).read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreUnavailable):
        await store.save({"a": (time.time() + 1, b"2")})
    assert (tmp_path / FILE_NAME).read_bytes() == before
    names = sorted(await asyncio.to_thread(os.listdir, tmp_path))
    assert names == [FILE_NAME, FILE_NAME + ".lock"]  # no temporary left behind
    assert orjson.loads(before)["format"] == 2
