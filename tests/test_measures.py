"""measures.py: what each route's price depends on, as the quote book sees it; and the book's
per-key minimum of 402s for routes priced flat or per unit."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
from support.quoting import requirement, resource, with_catalogue

from blockrun_proxy import measures
from blockrun_proxy.bodies import guard_body
from blockrun_proxy.quotes import Features, QuoteBook, request_features, text_sizes
from blockrun_proxy.routes import BY_NAME
from blockrun_proxy.testing import DEFAULT_MODELS, default_price
from blockrun_proxy.testing._routes_anthropic import chat_view

CLAUDE = {m.id: m for m in DEFAULT_MODELS}["anthropic/claude-sonnet-4.6"]


def features_of(route: str, body: dict[str, Any], params: dict[str, str] | None = None):
    guarded = guard_body(BY_NAME[route], orjson.dumps(body), params or {}, default_max_tokens=1)
    return guarded.features(BY_NAME[route])


def test_anthropic_counts_the_system_prompt_as_the_first_message() -> None:
    turn = [{"role": "user", "content": "hello"}]
    plain = features_of("messages", {"model": "m/x", "max_tokens": 9, "messages": turn})
    system = features_of(
        "messages", {"model": "m/x", "max_tokens": 9, "messages": turn, "system": "Be brief."}
    )
    assert plain is not None and system is not None
    assert (plain.messages, system.messages) == (1, 2)
    assert system.sizes[0] == plain.sizes[0] + len("Be brief.")
    assert system.key == ("/v1/messages", "m/x") and system.catalogue == "m/x"


def test_anthropic_names_map_to_blockrun_catalogue_ids() -> None:
    assert measures.anthropic_id("claude-sonnet-4-6") == "anthropic/claude-sonnet-4.6"
    assert measures.anthropic_id("claude-sonnet-4.6") == "anthropic/claude-sonnet-4.6"
    assert measures.anthropic_id("openai/gpt-5.5") == "openai/gpt-5.5"
    counted = features_of(
        "count_tokens", {"model": "claude-sonnet-4-6", "messages": [{"role": "user"}]}
    )
    assert counted is not None and counted.max_tokens == 0
    assert counted.catalogue is None  # no reservation: not priced per token


def test_gemini_measures_text_parts_as_contents_and_the_rest_as_calls() -> None:
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [call]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 50, "temperature": 0.2},
    }
    found = features_of("gemini", body, {"model": "models/gemini-2.5-flash"})
    assert found is not None
    assert found.key == (BY_NAME["gemini"].label, "gemini-2.5-flash")
    assert (found.max_tokens, found.messages) == (50, 3)
    assert found.catalogue == "google/gemini-2.5-flash"
    content_chars = found.sizes[5]  # the contents alone: text parts
    assert content_chars == len("weather?" + "Be brief.")
    assert found.sizes[0] == content_chars + len(orjson.dumps(call))  # with the call
    # Sampling settings leave the price alone; a response schema might not.
    warmer = {**body, "generationConfig": {"maxOutputTokens": 50, "temperature": 1.0}}
    schema = {**body, "generationConfig": {"maxOutputTokens": 50, "responseSchema": {}}}
    params = {"model": "gemini-2.5-flash"}
    assert features_of("gemini", warmer, params).extra == found.extra == 0
    assert features_of("gemini", schema, params).extra > 0


def test_gemini_without_max_output_tokens_has_a_key_of_its_own() -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    found = features_of("gemini_stream", body, {"model": "google/gemini-2.5-flash"})
    assert found is not None and found.max_tokens == 0 and found.catalogue is None
    assert found.model == 'google/gemini-2.5-flash {"maxOutputTokens":null}'
    route = BY_NAME["gemini_stream"]
    guarded = guard_body(route, orjson.dumps(body), {"model": "g"}, default_max_tokens=1)
    assert guarded.key_model(route) == 'g {"maxOutputTokens":null}'


def test_unit_routes_key_what_picks_a_price_and_count_what_multiplies_it() -> None:
    image = features_of("images", {"model": "a/b", "prompt": "a fox", "n": 3, "size": "512x512"})
    assert image is not None
    assert image.key == ("/v1/images/generations", 'a/b {"size":"512x512"}')
    assert (image.max_tokens, image.messages, image.sizes) == (3, 1, text_sizes("a fox"))
    assert image.min_observations == measures.UNIT_MIN_OBSERVATIONS
    default = features_of("images", {"prompt": "a fox"})
    assert default is not None and default.model == '(default) {"n":null}'  # n: its default
    edit = features_of("image2image", {"prompt": "x", "image": ["data:,", "data:,"], "n": 1})
    assert edit is not None and edit.model == '(default) {"#image":2,"#mask":0}'
    exa = features_of("exa", {"urls": ["u1", "u2"]}, {"endpoint": "contents"})
    assert exa is not None and (exa.model, exa.max_tokens) == ("contents", 2)
    search = features_of("search", {"query": "q", "max_results": 7, "sources": ["web"]})
    assert search is not None and search.key == ("/v1/search", '(default) {"sources":["web"]}')
    assert search.max_tokens == 7
    assert features_of("search", {"query": "q", "max_results": True}) is None  # not a count
    huge = features_of("exa", {"query": "q", "contents": {"text": "x" * 500}}, {"endpoint": "s"})
    assert huge is not None and huge.model.startswith("s sha256:") and len(huge.model) < 80
    assert features_of("relay", {"anything": 1}) is None  # paths outside the table: probed


def unit(text: str, count: int = 0) -> Features:
    return Features("m", count, 1, text_sizes(text), "/v1/x", min_observations=4)


def feed(book: QuoteBook, price, requests: list[Features]) -> list[str]:
    """H: signed up front at the price; O: above it; x: below it; .: probed."""
    marks = []
    for features in requests:
        amount = price(features)
        presign = book.presign(features)
        if presign is not None and presign.amount >= amount:
            book.accepted(presign)
            marks.append("H" if presign.amount == amount else "O")
            continue
        if presign is not None:
            book.refused(presign)
            marks.append("x")
        else:
            marks.append(".")
        book.observe(features, requirement(amount), resource(CLAUDE), None)
    return marks


def per_character(features: Features) -> int:
    return -(-105 * features.sizes[0] // 2)  # $0.0525 per character, rounded up


def test_a_unit_priced_key_signs_after_a_few_402s_without_over_paying() -> None:
    rng = random.Random(1)
    texts = ["x" * rng.randint(60, 400) for _ in range(6)]
    marks = feed(QuoteBook(), per_character, [unit(texts[i % 6]) for i in range(30)])
    assert "O" not in marks and "x" not in marks
    assert marks.index("H") < 12 and marks[12:].count("H") == 18, "".join(marks)


def test_a_guessed_slope_still_needs_the_books_own_minimum() -> None:
    """Count and text both vary: one slope is chosen among round fractions (Occam), which a
    few 402s can fit and be wrong elsewhere, so the key's low minimum does not apply: the
    book signs only once it has its own 16 402s (here it could from the 6th)."""
    rng = random.Random(2)
    requests = [unit("y" * rng.randint(10, 8000), rng.randint(1, 4)) for _ in range(30)]
    book = QuoteBook()
    marks = feed(book, lambda f: 50 * f.sizes[0] + 1000 * f.max_tokens + 7, requests)
    assert any(h.occam_col is not None for h in book.hypotheses("m", "/v1/x"))
    assert "O" not in marks and "x" not in marks
    first = marks.index("H")
    assert marks[:first].count(".") >= book.min_observations, "".join(marks)


def test_messages_are_priced_from_the_catalogue_under_the_mapped_id() -> None:
    """The fake's Messages price (the chat formula over system + messages) is the
    catalogue's per-token prices for the id "claude-sonnet-4-6" maps to: signed from the
    prior after two 402s and the trust streak, never over-paid."""
    book = with_catalogue(QuoteBook(), CLAUDE)
    rng = random.Random(3)
    priced: dict[int, int] = {}
    requests = []
    for _ in range(12):
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": rng.choice((64, 256, 1024)),
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "word " * rng.randint(1, 50)}],
        }
        features = measures.anthropic("claude-sonnet-4-6", body["max_tokens"], body, "/m")
        assert features is not None
        priced[id(features)] = default_price(CLAUDE, chat_view(body))
        requests.append(features)
    marks = feed(book, lambda f: priced[id(f)], requests)
    assert "O" not in marks and "x" not in marks
    assert book.prior("claude-sonnet-4-6", "/m") is not None
    assert marks[6:] == ["H"] * 6, "".join(marks)


def test_a_stored_key_keeps_its_catalogue_id() -> None:
    book = with_catalogue(QuoteBook(), CLAUDE)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user"}]}
    features = measures.anthropic("claude-sonnet-4-6", 64, body, "/v1/messages")
    assert features is not None
    book.observe(features, requirement(5000), resource(CLAUDE), None)
    ((_, _, doc),) = book.take_changes().keys
    assert doc["catalogue_id"] == "anthropic/claude-sonnet-4.6"
    restored = QuoteBook().restore(doc, book.catalogue, time.monotonic())
    assert restored is not None
    assert restored[1].catalogue_id == "anthropic/claude-sonnet-4.6"
    assert restored[1].prior is not None  # priced from the catalogue under that id
    # A document that does not name its catalogue id: chat's is its model.
    chat = request_features(CLAUDE.id, 64, {"messages": [{"role": "user", "content": "hi"}]})
    assert chat is not None and chat.catalogue == CLAUDE.id
    book.observe(chat, requirement(5000), resource(CLAUDE), None)
    ((_, _, chat_doc),) = book.take_changes().keys
    by_route = {}
    for old in (doc, chat_doc):
        old = {k: v for k, v in old.items() if k != "catalogue_id"}
        loaded = QuoteBook().restore(old, {}, time.monotonic())
        assert loaded is not None
        by_route[loaded[0][0]] = loaded[1].catalogue_id
    assert by_route == {"/v1/messages": None, "/v1/chat/completions": CLAUDE.id}
