"""Learned quotes survive a restart: the book's snapshot, the file, a restarted proxy."""

from __future__ import annotations

import os
import secrets

import aiohttp
import orjson
import pytest
from support.quoting import feed, with_catalogue

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.config import Settings
from blockrun_proxy.quotes import QuoteBook, request_features
from blockrun_proxy.quotes.store import FILE_NAME, MAX_FILE_BYTES, QuoteFile
from blockrun_proxy.server import running
from blockrun_proxy.testing import DEFAULT_MODELS, FakeGateway
from blockrun_proxy.testing._models import PRICING_SHAPES, chars_price
from blockrun_proxy.testing.workloads import bodies

MINI = {m.id: m for m in DEFAULT_MODELS}["openai/gpt-4o-mini"]
API = "https://gateway.test/api"
# The proxy answers only JSON POSTs.
JSON = {"Content-Type": "application/json"}
TEST_NETWORK = "eip155:84532"


def warm_book(catalogue: bool = True) -> QuoteBook:
    book = with_catalogue(QuoteBook(), MINI) if catalogue else QuoteBook()
    feed(book, MINI, chars_price, bodies("conversation", MINI.id)[:40])
    return book


def next_request():
    body = bodies("conversation", MINI.id)[45]
    return body, request_features(MINI.id, body["max_tokens"], body)


@pytest.mark.parametrize("catalogue", [True, False], ids=["catalogue", "learned"])
def test_a_reloaded_book_presigns_what_the_saved_one_would(tmp_path, catalogue) -> None:
    saved = warm_book(catalogue)
    body, features = next_request()
    expected = saved.presign(features)
    assert expected is not None and expected.amount == chars_price(MINI, body)
    store = QuoteFile(tmp_path / "state", API)
    assert store.save(saved.snapshot())
    assert (tmp_path / "state" / FILE_NAME).exists()
    fresh = QuoteBook()
    doc = store.load()
    assert doc is not None
    fresh.adopt_states(*fresh.load_states(doc))
    presign = fresh.presign(features)
    assert presign is not None and presign.amount == expected.amount
    assert presign.requirement.raw == expected.requirement.raw


def test_templates_age_while_the_file_sits_on_disk() -> None:
    saved = warm_book()
    doc = orjson.loads(orjson.dumps(saved.snapshot(wall=1_000_000.0)))
    _, features = next_request()
    recent = QuoteBook()
    recent.adopt_states(*recent.load_states(doc, wall=1_000_000.0 + 60))
    assert recent.presign(features) is not None
    stale = QuoteBook()  # 10 minutes later: past the 5-minute TTL, re-checked with a probe
    stale.adopt_states(*stale.load_states(doc, wall=1_000_000.0 + 600))
    assert stale.trusted(MINI.id) and stale.presign(features) is None


def test_what_is_not_ours_is_ignored(tmp_path) -> None:
    store = QuoteFile(tmp_path, API)
    path = tmp_path / FILE_NAME
    assert store.load() is None  # nothing saved yet
    path.write_bytes(b"\x00 not json")
    assert store.load() is None
    assert QuoteFile(tmp_path, "https://other.test/api").save(warm_book().snapshot())
    assert store.load() is None  # written for another gateway
    path.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    assert store.load() is None
    book = QuoteBook()
    snapshot = warm_book().snapshot()
    assert book.load_states({**snapshot, "format": 999}) == ({}, [])
    assert book.load_states({**snapshot, "measures": ["bytes"]}) == ({}, [])
    broken = {**snapshot, "keys": [{"route": 1}, "junk", {"route": "/v1/chat/completions"}]}
    assert book.load_states(broken)[1] == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    store = QuoteFile(tmp_path, API)
    assert store.save(warm_book().snapshot())
    before = (tmp_path / FILE_NAME).read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    assert not store.save(QuoteBook().snapshot())
    assert (tmp_path / FILE_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary left behind


async def test_a_restarted_proxy_signs_its_first_call_up_front(tmp_path) -> None:
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

        async def call(port: int, body) -> int:
            before = len(gateway.chat_requests)
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    data=orjson.dumps(body),
                    headers=JSON,
                ) as resp,
            ):
                await resp.read()
                assert resp.status == 200
            return len(gateway.chat_requests) - before

        async with running(settings) as (runner, port):
            for body in sent[:20]:
                await call(port, body)
            assert runner.app[CORE_KEY].quotes.trusted(MINI.id)
        assert (tmp_path / FILE_NAME).exists()  # saved at shutdown

        async with running(settings) as (runner, port):
            await runner.app[CORE_KEY].keeper.loaded.wait()
            models_reads = gateway.models_calls
            assert await call(port, sent[20]) == 1  # warm from the first call
            assert gateway.models_calls == models_reads  # the catalogue came from the file
