"""The catalogue prior, the message count as a linear term, and the prefix bound.

The quote book alone, fed 402s as the proxy would (tests/quoting.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import orjson
import pytest
from support.quoting import feed, requirement, resource, with_catalogue

from blockrun_proxy.quotes import CataloguePrice, QuoteBook, parse_catalogue, request_features
from blockrun_proxy.quotes.book import DEFAULT_MIN_OBSERVATIONS
from blockrun_proxy.testing import DEFAULT_MODELS, ModelSpec
from blockrun_proxy.testing._models import chars_price, max_tokens_price
from blockrun_proxy.testing.workloads import bodies

MINI = {m.id: m for m in DEFAULT_MODELS}["openai/gpt-4o-mini"]  # $0.15 / $0.60
GPT55 = {m.id: m for m in DEFAULT_MODELS}["openai/gpt-5.5"]


def test_catalogue_parses_prices_exactly_and_skips_what_is_not_a_price() -> None:
    doc = {
        "data": [
            MINI.listing(),
            {**GPT55.listing(), "pricing": {"input": "5", "output": 40}},
            {"id": "free/x", "billing_mode": "free", "pricing": {"input": 0, "output": 0}},
            {"id": "bad/1", "pricing": {"input": -1, "output": 2}},
            {"id": "bad/2", "pricing": {"input": True, "output": 2}},
            {"id": "bad/3", "pricing": "cheap"},
            "junk",
        ]
    }
    prices = parse_catalogue(orjson.dumps(doc))
    assert prices == {
        MINI.id: CataloguePrice(Fraction(3, 20), Fraction(3, 5), 16_384, Fraction(1000)),
        GPT55.id: CataloguePrice(Fraction(5), Fraction(40), 128_000, None),
    }
    assert parse_catalogue(b"not json") == {} and parse_catalogue(b"[]") == {}


def test_growing_conversation_is_signed_up_front_from_the_catalogue() -> None:
    book = with_catalogue(QuoteBook(), MINI)
    log = feed(book, MINI, chars_price, bodies("conversation", MINI.id))
    assert log.overpaid == 0 and "O" not in log.marks and "x" not in log.marks
    assert log.share_after(10) >= 0.95, log
    assert book.stats.from_catalogue == book.stats.hits


def test_a_catalogue_the_402s_contradict_is_dropped_for_the_learner() -> None:
    """A gateway that charges 5% over its catalogue: the prior is refuted at once, the
    learner takes over, and nothing is over-paid on the way."""
    marked_up = dataclasses.replace(
        MINI, input_price=MINI.input_price * Fraction(21, 20), output_price=Fraction(63, 100)
    )
    book = with_catalogue(QuoteBook(), MINI)  # lists $0.15 / $0.60
    log = feed(book, marked_up, chars_price, bodies("conversation", MINI.id, seed=3))
    assert book.stats.refuted == 1 and book.prior(MINI.id) is None
    assert log.overpaid == 0 and "O" not in log.marks
    assert log.share_after(30) >= 0.5, log  # learned from the 402s alone, later


def test_message_count_is_learned_as_a_linear_term_without_a_catalogue() -> None:
    book = QuoteBook()
    log = feed(book, MINI, chars_price, bodies("conversation", MINI.id))
    assert log.overpaid == 0 and "O" not in log.marks
    # Every call has a message count never seen before; still signed up front.
    assert log.share_after(30) >= 0.5, log
    # 4 tokens a message: 16 in characters, 4 in characters / 4.
    assert {(h.linear, h.per_message) for h in book.hypotheses(MINI.id)} == {(True, 16), (True, 4)}


@pytest.mark.parametrize("workload", ["conversation", "tool_loop", "random_prompts"])
@pytest.mark.parametrize("input_price", ["0.1573", "0.15"])
def test_round_prices_never_make_the_learner_over_pay(workload: str, input_price: str) -> None:
    """Without a catalogue the learner forecasts with round prices (fit.py's lattice) but
    signs only the lowest amount of every formula the 402s allow: a price that is not
    round ($0.1573 per million is not on the lattice) costs refused presigns at worst,
    never money."""
    spec = dataclasses.replace(MINI, input_price=Fraction(input_price))
    for seed in range(3):
        book = QuoteBook()
        log = feed(book, spec, chars_price, bodies(workload, MINI.id, seed=seed))
        assert log.overpaid == 0 and "O" not in log.marks, log


def test_prefix_bound_signs_a_price_that_ignores_the_prompt() -> None:
    """No catalogue, a price of max_tokens alone, a conversation that grows every call:
    the bound (the price of an earlier turn) is the price, and is signed. (The learned
    formulas are held back as long as formulas with a guessed slope are, or they would
    sign this constant price first.)"""
    book = QuoteBook(pinned_min_observations=DEFAULT_MIN_OBSERVATIONS)
    log = feed(book, GPT55, max_tokens_price, bodies("conversation", GPT55.id))
    assert log.overpaid == 0 and log.share_after(10) >= 0.95, log
    assert book.stats.from_bound > 0


def shrinking(spec: ModelSpec, body: Mapping[str, Any]) -> int:
    """A price that falls as the prompt grows: no bound holds."""
    size = sum(len(m["content"] or "") for m in body["messages"])
    return 5000 - min(size, 4000) // 100


def test_bound_is_never_signed_for_a_price_that_shrinks_with_the_prompt() -> None:
    book = QuoteBook()
    log = feed(book, GPT55, shrinking, bodies("conversation", GPT55.id))
    assert log.overpaid == 0 and "O" not in log.marks, log
    assert book.stats.from_bound == 0


def test_tools_never_seen_with_a_model_are_probed() -> None:
    book = with_catalogue(QuoteBook(), MINI)
    sent = bodies("random_prompts", MINI.id)
    feed(book, MINI, chars_price, sent[:30])
    plain = sent[30]
    features = request_features(MINI.id, plain["max_tokens"], plain)
    assert book.presign(features) is not None
    tooled = {**plain, "tools": [{"type": "function", "function": {"name": "x"}}]}
    assert book.presign(request_features(MINI.id, plain["max_tokens"], tooled)) is None


def test_price_keys_are_per_route() -> None:
    book = with_catalogue(QuoteBook(), MINI)
    feed(book, MINI, chars_price, bodies("random_prompts", MINI.id)[:20])
    body = bodies("random_prompts", MINI.id)[25]
    chat = request_features(MINI.id, body["max_tokens"], body)
    other = request_features(MINI.id, body["max_tokens"], body, route="/v1/messages")
    assert book.knows(MINI.id) and not book.knows(MINI.id, route="/v1/messages")
    assert book.presign(chat) is not None and book.presign(other) is None
    # A 402 on another route neither teaches nor disturbs the chat route's formulas.
    book.observe(other, requirement(7), resource(MINI), None)
    assert book.presign(chat) is not None
    assert book.prior(MINI.id, route="/v1/messages") is None


def test_catalogue_flat_fee_pins_the_constant_from_the_first_402s() -> None:
    book = with_catalogue(QuoteBook(), MINI)
    feed(book, MINI, chars_price, bodies("random_prompts", MINI.id)[:3])
    prior = book.prior(MINI.id)
    assert prior is not None and prior.fixed  # the flat-fee tier still stands
    assert all(
        f.low is not None and f.high is not None and f.high - f.low == 1 for f in prior.fixed
    )
    # Each fixed formula names one amount for a request it has never seen.
    body = bodies("random_prompts", MINI.id)[4]
    sizes = request_features(MINI.id, 1, body).sizes
    quotes = [f.quote(body["max_tokens"], sizes, 1) for f in prior.fixed]
    assert all(q is not None and q.low == q.high for q in quotes)
    assert chars_price(MINI, body) in {q.low for q in quotes if q is not None}
    assert prior.price.flat == 1000


def test_refits_can_run_elsewhere_and_nothing_is_signed_from_stale_formulas() -> None:
    """With ``on_refit`` set (the keeper runs it in a worker thread), a 402 asks for a
    refit instead of fitting on the event loop; until it is back the learned formulas
    sign nothing, and a refit the window has outrun is dropped."""
    from blockrun_proxy.quotes.book import compute_fit

    book = QuoteBook()
    asked: list[tuple[Any, list[Any], int]] = []
    book.on_refit = lambda key, window, version: asked.append((key, window, version))
    sent = bodies("conversation", MINI.id)
    feed(book, MINI, chars_price, sent[:40])
    assert len(asked) == 40 and book.stats.refits == 0
    body = sent[40]
    features = request_features(MINI.id, body["max_tokens"], body)
    assert book.presign(features) is None  # nothing fitted yet
    key, window, version = asked[-2]
    book.refit_done(key, version, compute_fit(window, book.min_observations, False))
    assert book.stats.refits == 0  # outrun by the 40th 402: dropped
    key, window, version = asked[-1]
    book.refit_done(key, version, compute_fit(window, book.min_observations, False))
    assert book.stats.refits == 1 and book.hypotheses(MINI.id)
    # Refits that come back at once: the rest of the conversation, as the keeper runs it.
    book.on_refit = lambda key, window, version: book.refit_done(
        key, version, compute_fit(window, book.min_observations, False)
    )
    log = feed(book, MINI, chars_price, sent[40:])
    assert log.overpaid == 0 and "O" not in log.marks and "H" in log.marks, log


def test_a_new_catalogue_is_taken_key_by_key_when_used() -> None:
    """Building a prior costs a millisecond or two: a catalogue arriving for a full book
    is not applied to every key at once on the event loop, but as each is next used."""
    book = QuoteBook()
    sent = bodies("random_prompts", MINI.id)
    feed(book, MINI, chars_price, sent[:5])
    state = book._models[("/v1/chat/completions", MINI.id)]
    with_catalogue(book, MINI)
    assert state.prior is None  # not yet
    body = sent[5]
    book.presign(request_features(MINI.id, body["max_tokens"], body))
    assert state.prior is not None and state.prior.seen == 5
