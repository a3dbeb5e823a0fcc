"""Learned quotes survive a restart: the book's entries, merging by newest, a restarted
proxy warm from its file."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import orjson
import pytest
from support.calls import round_trips
from support.quoting import feed, with_catalogue
from support.servers import until

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.config import Settings
from blockrun_proxy.quote_store import MemoryQuoteStore
from blockrun_proxy.quotes import QuoteBook, request_features
from blockrun_proxy.quotes.entries import CATALOGUE, decode, encode, key_name
from blockrun_proxy.quotes.keeper import QuoteKeeper
from blockrun_proxy.quotes.store import FILE_NAME
from blockrun_proxy.server import running
from blockrun_proxy.testing import DEFAULT_MODELS, FakeGateway
from blockrun_proxy.testing._models import PRICING_SHAPES, chars_price
from blockrun_proxy.testing.workloads import bodies

MINI = {m.id: m for m in DEFAULT_MODELS}["openai/gpt-4o-mini"]
API = "https://gateway.test/api"
TEST_NETWORK = "eip155:84532"
CHAT = "/v1/chat/completions"


def warm_book(catalogue: bool = True, **options: Any) -> QuoteBook:
    book = with_catalogue(QuoteBook(**options), MINI) if catalogue else QuoteBook(**options)
    feed(book, MINI, chars_price, bodies("conversation", MINI.id)[:40])
    return book


def next_request(index: int = 45) -> Any:
    body = bodies("conversation", MINI.id)[index]
    return body, request_features(MINI.id, body["max_tokens"], body)


def reload_into(book: QuoteBook, entries: Any, **kw: Any) -> int:
    decoded = decode(book, entries, API, dict(book.catalogue), now=time.monotonic(), **kw)
    return book.merge(decoded.catalogue, decoded.catalogue_at, decoded.states)


@pytest.mark.parametrize("catalogue", [True, False], ids=["catalogue", "learned"])
def test_a_reloaded_book_presigns_what_the_saved_one_would(catalogue: bool) -> None:
    saved = warm_book(catalogue)
    body, features = next_request()
    expected = saved.presign(features)
    assert expected is not None and expected.amount == chars_price(MINI, body)
    entries = encode(saved.take_changes(), API, wall=1_000.0)
    assert set(entries) == ({CATALOGUE} if catalogue else set()) | {key_name(features.key)}
    fresh = QuoteBook()
    assert reload_into(fresh, entries, wall=1_000.0) == 1
    presign = fresh.presign(features)
    assert presign is not None and presign.amount == expected.amount
    assert presign.requirement.raw == expected.requirement.raw
    assert fresh.catalogue == saved.catalogue


def test_a_key_carries_its_catalogue_price() -> None:
    """A replica that loads a key before any catalogue still prices it from the prior."""
    saved = warm_book(catalogue=True)
    entries = encode(saved.take_changes(), API, wall=1_000.0)
    del entries[CATALOGUE]
    fresh = QuoteBook()
    reload_into(fresh, entries, wall=1_000.0)
    assert fresh.catalogue == {} and fresh.prior(MINI.id) is not None
    assert fresh.presign(next_request()[1]) is not None


def test_only_what_changed_is_handed_over_and_a_failed_save_is_offered_again() -> None:
    book = warm_book()
    assert book.dirty
    first = book.take_changes()
    assert first.catalogue is not None and len(first.keys) == 1
    assert not book.dirty
    nothing = book.take_changes()
    assert nothing.catalogue is None and nothing.keys == []
    book.unsaved(first)  # the store failed
    again = book.take_changes()
    assert again.catalogue is not None and [k for k, _, _ in again.keys] == [MINI_KEY]
    body, features = next_request(41)
    book.observe(features, *_requirement_for(body))
    assert [k for k, _, _ in book.take_changes().keys] == [MINI_KEY]


MINI_KEY = (CHAT, MINI.id)


def _requirement_for(body: Any) -> tuple[Any, Any, None]:
    from support.quoting import requirement, resource

    return requirement(chars_price(MINI, body)), resource(MINI), None


def test_templates_age_while_the_entry_sits_in_the_store() -> None:
    entries = encode(warm_book().take_changes(), API, wall=1_000_000.0)
    _, features = next_request()
    recent = QuoteBook()
    reload_into(recent, entries, wall=1_000_000.0 + 60)
    assert recent.presign(features) is not None
    stale = QuoteBook()  # 10 minutes later: past the 5-minute TTL, re-checked with a probe
    reload_into(stale, entries, wall=1_000_000.0 + 600)
    assert stale.trusted(MINI.id) and stale.presign(features) is None


def test_merging_keeps_the_state_that_learned_from_the_newest_402() -> None:
    clock = [1_000.0]
    older = warm_book(wall=lambda: clock[0])
    clock[0] = 2_000.0
    newer = warm_book(wall=lambda: clock[0])
    newer.forget(MINI.id)  # its latest quote was refused: nothing up front
    old_entries = encode(older.take_changes(), API, wall=clock[0])
    new_entries = encode(newer.take_changes(), API, wall=clock[0])
    _, features = next_request()

    book = QuoteBook()
    assert reload_into(book, old_entries, wall=clock[0]) == 1
    assert book.presign(features) is not None
    assert reload_into(book, new_entries, wall=clock[0]) == 1  # newer: replaces
    assert book.presign(features) is None
    assert reload_into(book, old_entries, wall=clock[0]) == 0  # older: ignored
    assert book.stamps() == {MINI_KEY: 2_000.0}


def test_what_is_not_ours_is_ignored() -> None:
    book = QuoteBook()
    entries = encode(warm_book().take_changes(), API, wall=1_000.0)
    name = key_name(MINI_KEY)
    stamp, data = entries[name]
    doc = orjson.loads(data)

    def variant(**changes: Any) -> dict[str, Any]:
        return {name: (stamp, orjson.dumps({**doc, **changes}))}

    for junk in (
        {name: (stamp, b"\x00 not json")},
        {name: (stamp, b"[1, 2]")},
        variant(format=999),
        variant(measures=["bytes"]),
        variant(api_url="https://other.test/api"),  # learned from another gateway
        variant(saved_at="yesterday"),
        variant(key={"route": 1}),
        variant(key={**doc["key"], "window": ["junk"]}),
        variant(key={**doc["key"], "model": "someone/else"}),  # not the key it is filed as
        {CATALOGUE: (stamp, orjson.dumps({**doc, "catalogue": "none"}))},
    ):
        decoded = decode(book, junk, API, {}, now=time.monotonic(), wall=1_000.0)
        assert decoded.states == [] and decoded.catalogue == {}, junk
        assert decoded.dropped == 1 and set(decoded.stamps) == set(junk)


async def test_the_keeper_loads_once_saves_what_changed_and_merges_by_newest() -> None:
    store = MemoryQuoteStore()
    learned = warm_book()
    await store.save(encode(learned.take_changes(), API))
    book = QuoteBook()
    keeper = QuoteKeeper(book, store=store, api_url=API, save_delay=3600)
    await keeper.start()
    try:
        await keeper.loaded.wait()
        assert keeper.status == "memory: 1 price keys loaded"
        assert book.presign(next_request()[1]) is not None
        assert await keeper.reload() == 0  # nothing newer: nothing fetched
        body, features = next_request(41)
        book.observe(features, *_requirement_for(body))
        assert await keeper.save()
        assert book.stamps()[MINI_KEY] == (await store.load())[key_name(MINI_KEY)][0]
    finally:
        await keeper.close()


async def test_a_store_that_fails_at_start_means_a_cold_start() -> None:
    class Broken(MemoryQuoteStore):
        async def load(self, known: Any = None) -> Any:
            from blockrun_proxy.quote_store import StoreUnavailable

            raise StoreUnavailable("down")

    keeper = QuoteKeeper(QuoteBook(), store=Broken(), api_url=API, save_delay=3600)
    await keeper.start()
    try:
        await keeper.loaded.wait()
        assert "starting cold" in keeper.status and keeper.load_failures == 1
    finally:
        await keeper.close()


async def test_a_restarted_proxy_signs_its_first_call_up_front(tmp_path: Any) -> None:
    shape = PRICING_SHAPES["chars"]
    sent = bodies("conversation", MINI.id)
    async with FakeGateway(
        network=TEST_NETWORK, models=shape.models, pricing=shape.price, verify="fast"
    ) as gateway:
        settings = Settings(
            port=0,
            api_url=gateway.base_url,
            networks=(TEST_NETWORK,),
            wallet_key="0x" + secrets.token_hex(32),
            state_dir=tmp_path,
        )

        async with running(settings) as (runner, port):
            for body in sent[:20]:
                await round_trips(gateway, port, body)
            assert runner.app[CORE_KEY].quotes.trusted(MINI.id)
        assert (tmp_path / FILE_NAME).exists()  # saved at shutdown

        async with running(settings) as (runner, port):
            await runner.app[CORE_KEY].keeper.loaded.wait()
            models_reads = gateway.models_calls
            assert await round_trips(gateway, port, sent[20]) == 1  # warm from the first call
            assert gateway.models_calls == models_reads  # the catalogue came from the file


async def test_a_file_of_the_old_format_means_a_cold_start(tmp_path: Any) -> None:
    (tmp_path / FILE_NAME).write_bytes(orjson.dumps({"api_url": API, "book": {"format": 1}}))
    from blockrun_proxy.quotes.store import QuoteFile

    assert await QuoteFile(tmp_path, API).load() == {}


async def test_keepers_save_what_changed_and_pick_up_each_others_on_their_own() -> None:
    """Two replicas' keepers on one store, with short delays: what one learned reaches
    the other without a call to either (saving is debounced, loading periodic)."""
    store = MemoryQuoteStore()
    saves: list[int] = []
    save = store.save

    async def counted(entries: Any) -> None:
        saves.append(len(entries))
        await save(entries)

    store.save = counted  # type: ignore[method-assign]
    first, second = QuoteBook(), QuoteBook()
    keepers = [
        QuoteKeeper(book, store=store, api_url=API, save_delay=0.02, reload_interval=0.02)
        for book in (first, second)
    ]
    for keeper in keepers:
        await keeper.start()
    try:
        for keeper in keepers:
            await keeper.loaded.wait()
        with_catalogue(first, MINI)
        feed(first, MINI, chars_price, bodies("conversation", MINI.id)[:40])  # a burst
        await until(lambda: second.presign(next_request()[1]) is not None)
        assert saves and max(saves) == 2  # the burst went out as one save: catalogue, key
        assert second.catalogue == first.catalogue
    finally:
        for keeper in keepers:
            await keeper.close()


async def test_a_load_slower_than_its_bound_serves_meanwhile_and_finishes() -> None:
    """Readiness waits for the load at most load_timeout; a large book (seconds of CPU
    on a busy machine) goes on loading in the background and is merged when ready."""
    release = asyncio.Event()

    class Slow(MemoryQuoteStore):
        async def load(self, known: Any = None) -> Any:
            await release.wait()
            return await super().load(known)

    store = Slow()
    await MemoryQuoteStore.save(store, encode(warm_book().take_changes(), API))
    book = QuoteBook()
    keeper = QuoteKeeper(book, store=store, api_url=API, save_delay=3600, load_timeout=0.01)
    await keeper.start()
    try:
        await keeper.loaded.wait()
        assert "loading" in keeper.status and book.stamps() == {}
        release.set()
        await until(lambda: keeper.status == "memory: 1 price keys loaded")
        assert book.presign(next_request()[1]) is not None
    finally:
        await keeper.close()
