"""The quote model on its own: it learns prices from (request, amount) pairs alone.

Each scenario feeds the book 402 amounts from a pricing formula it never sees
and replays what the proxy would do: ask for a presign, compare it with the
price the gateway would charge (accepted if at or above, refused if below), and
on no presign or a refusal observe the 402. The formulas are the fake gateway's
own (the prompt's size moves the price) and others written here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from support.quoting import Pricing, requirement, resource

from blockrun_proxy.quotes import MEASURES, QuoteBook, features_from_body, request_features
from blockrun_proxy.quotes.fit import MAX_CANDIDATES, MAX_DENOMINATOR, fractions_in
from blockrun_proxy.testing import DEFAULT_MODELS, ModelSpec, default_price

MODELS = {m.id: m for m in DEFAULT_MODELS}
MINI = MODELS["openai/gpt-4o-mini"]  # 0.15 / 0.6 per token: fractional micro-USDC
GPT55 = MODELS["openai/gpt-5.5"]  # 5 / 40 per token: whole micro-USDC
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
]
MAX_TOKENS = (16, 32, 50, 64, 100, 128, 256, 300, 512, 1000, 1024, 2048, 4000, 8192, 20000)


def body(rng: random.Random, spec: ModelSpec, messages: int = 1) -> dict[str, Any]:
    return {
        "model": spec.id,
        "messages": [
            {"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 150)))}
            for _ in range(messages)
        ],
        "max_tokens": rng.choice(MAX_TOKENS),
    }


@dataclass
class Run:
    hits: int = 0  # presigned exactly the price
    over: int = 0  # presigned above the price (accepted: money lost)
    over_atomic: int = 0
    under: int = 0  # presigned below the price (refused: a round trip lost)
    probes: int = 0
    trusted_at: int | None = None
    log: list[str] = field(default_factory=list)


def replay(
    book: QuoteBook,
    pricing: Pricing,
    spec: ModelSpec,
    calls: int,
    *,
    seed: int = 0,
    messages: Callable[[random.Random], int] = lambda rng: 1,
    scheme: str = "exact",
) -> Run:
    rng = random.Random(seed)
    run = Run()
    for i in range(calls):
        request = body(rng, spec, messages(rng))
        price = pricing(spec, request)
        features = request_features(spec.id, request["max_tokens"], request)
        assert features is not None
        presign = book.presign(features)
        if presign is not None:
            run.trusted_at = i if run.trusted_at is None else run.trusted_at
            if presign.amount >= price:
                book.accepted(presign)
                run.hits += presign.amount == price
                run.over += presign.amount > price
                run.over_atomic += presign.amount - price
                run.log.append("H" if presign.amount == price else "O")
                continue
            book.refused(presign)
            run.under += 1
        run.probes += 1
        run.log.append(".")
        book.observe(features, requirement(price, scheme=scheme), resource(spec), None)
    return run


def only_max_tokens(spec: ModelSpec, request: Mapping[str, Any]) -> int:
    return math.ceil(Fraction(7, 20) * min(request["max_tokens"], spec.max_output)) + 500


def raw_bytes(spec: ModelSpec, request: Mapping[str, Any]) -> int:
    size = sum(len(m["content"].encode()) for m in request["messages"])
    reservation = min(request["max_tokens"], spec.max_output)
    return math.ceil(Fraction(3, 80) * size + Fraction(9, 10) * reservation) + 250


def hashed(spec: ModelSpec, request: Mapping[str, Any]) -> int:
    """A price that no feature explains: a digest of the prompt."""
    digest = hashlib.sha256(request["messages"][0]["content"].encode()).digest()
    return 1000 + digest[0] % 97 + request["max_tokens"] // 10


def words(spec: ModelSpec, request: Mapping[str, Any]) -> int:
    """A tokenizer the proxy cannot see: 1.3 tokens per word."""
    count = sum(len(m["content"].split()) for m in request["messages"])
    reservation = min(request["max_tokens"], spec.max_output)
    return (
        math.ceil(Fraction(13, 10) * count * spec.input_price + spec.output_price * reservation)
        + 1000
    )


# --- learning from observations alone ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pricing", "spec"),
    [
        ("fake gateway, fractional prices", default_price, MINI),
        ("fake gateway, whole prices", default_price, GPT55),
        ("raw UTF-8 bytes", raw_bytes, MINI),
        ("only max_tokens", only_max_tokens, MINI),
    ],
)
def test_learns_exact_prices_from_402s_alone_and_never_over_pays(name, pricing, spec):
    book = QuoteBook()
    run = replay(book, pricing, spec, 200)
    assert run.over == 0 and run.under == 0, "".join(run.log)
    assert run.trusted_at is not None and run.trusted_at <= 30, "".join(run.log)
    # Warm: nearly every call is signed up front at exactly the price; the few probes
    # left are the requests the data cannot pin yet (and each one teaches the most).
    warm = run.log[60:]
    assert warm.count("H") >= 0.9 * len(warm), "".join(run.log)
    assert book.stats.hits == run.hits


def test_prompt_size_moves_the_learned_price():
    book = QuoteBook()
    replay(book, default_price, GPT55, 100)
    short = {"model": GPT55.id, "messages": [{"role": "user", "content": "a lazy dog"}]}
    short["max_tokens"] = 64
    long = {**short, "messages": [{"role": "user", "content": "a lazy dog " * 60}]}
    quotes = [book.presign(features_from_body(_json(b))) for b in (short, long)]
    assert [q.amount for q in quotes if q] == [
        default_price(GPT55, short),
        default_price(GPT55, long),
    ]
    assert quotes[1].amount > quotes[0].amount


def test_conversations_with_varying_message_counts():
    book = QuoteBook()
    run = replay(book, default_price, MINI, 300, messages=lambda rng: rng.randint(1, 3))
    assert run.over == 0 and run.under == 0
    warm = run.log[100:]
    assert warm.count("H") >= 0.8 * len(warm), "".join(run.log)


@pytest.mark.parametrize("pricing", [hashed, words])
def test_falls_back_cleanly_where_features_do_not_explain_the_price(pricing):
    book = QuoteBook()
    run = replay(book, pricing, MINI, 200, seed=1)
    assert run.over == 0
    # (Nearly) always probe-then-pay: still correct, two round trips. A rare presign
    # may come from a short stretch the features happen to explain; none over-paid.
    assert run.probes >= 190, "".join(run.log)
    # Refits back off while nothing fits, so an unlearnable model costs little CPU.
    assert book.stats.refits < 60


def test_tolerance_signs_the_top_of_the_range_and_counts_what_it_may_over_pay():
    book = QuoteBook(tolerance_atomic=2)
    run = replay(book, default_price, MINI, 150)
    assert run.under == 0
    warm = run.log[run.trusted_at :]
    assert warm.count(".") <= 1  # tolerance removes the undetermined probes
    assert run.over > 0  # some calls were signed above the price ...
    assert run.over_atomic <= 2 * run.over  # ... by at most the tolerance each ...
    assert book.stats.overpaid_atomic >= run.over_atomic  # ... and never more than counted


def test_under_upto_a_tolerance_never_signs_a_ceiling_that_may_be_above_the_price():
    # The gateway accepts only a ceiling equal to its quote: one above it is refused.
    book = QuoteBook(tolerance_atomic=2)
    run = replay(book, default_price, MINI, 150, scheme="upto")
    assert run.over == 0 and run.under == 0 and book.stats.overpaid_atomic == 0
    assert run.hits > 0  # prices the formulas pin are still signed up front


def test_a_price_change_costs_one_refused_presign_then_is_relearned():
    book = QuoteBook()
    assert replay(book, default_price, MINI, 60).trusted_at is not None
    dearer = dataclasses.replace(MINI, input_price=Fraction(3, 10), output_price=Fraction(6, 5))
    after = replay(book, default_price, dearer, 100, seed=9)
    assert after.under == 1 and after.over == 0, after.log
    assert after.log[-20:].count("H") >= 18, "".join(after.log)


def test_max_tokens_over_the_ceiling_are_priced_at_the_ceiling():
    book = QuoteBook()
    replay(book, default_price, MINI, 80)
    request = {"model": MINI.id, "messages": [{"role": "user", "content": "x"}]}
    at_ceiling = features_from_body(_json({**request, "max_tokens": MINI.max_output}))
    above = features_from_body(_json({**request, "max_tokens": 10 * MINI.max_output}))
    assert book.presign(at_ceiling) is not None
    assert book.presign(above).amount == book.presign(at_ceiling).amount


# --- when a presign is offered ----------------------------------------------------------------


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_needs_a_streak_of_exact_shadow_predictions():
    book = QuoteBook(trust=30)
    run = replay(book, default_price, GPT55, 60)
    # The first fit needs a few 402s, then 30 predictions must come true out of sample.
    assert run.trusted_at is not None and run.trusted_at >= 30 + 4
    assert book.stats.shadow_exact >= 30


def typical(seed: int = 77) -> dict[str, Any]:
    return body(random.Random(seed), GPT55)


def test_stale_template_is_re_checked_with_a_probe():
    clock = Clock()
    book = QuoteBook(ttl_seconds=300, clock=clock)
    replay(book, default_price, GPT55, 40)
    request = typical()
    features = request_features(GPT55.id, request["max_tokens"], request)
    assert book.presign(features) is not None
    clock.now += 301
    assert book.presign(features) is None


def test_presign_reuses_the_last_requirement_with_only_the_amount_changed():
    book = QuoteBook()
    replay(book, default_price, GPT55, 40)
    request = typical()
    price = default_price(GPT55, request)
    last = requirement(price, pay_to="0x00000000000000000000000000000000000b0b00")
    features = request_features(GPT55.id, request["max_tokens"], request)
    book.observe(features, last, resource(GPT55), {"x": 1})
    other = {**request, "max_tokens": request["max_tokens"] + 1}
    presign = book.presign(request_features(GPT55.id, other["max_tokens"], other))
    assert presign is not None
    assert presign.amount == default_price(GPT55, other)
    assert {k: v for k, v in presign.requirement.raw.items() if k != "amount"} == {
        k: v for k, v in last.raw.items() if k != "amount"
    }
    assert presign.requirement.raw["amount"] == str(presign.amount)
    assert presign.requirement.pay_to == last.pay_to
    assert presign.resource == resource(GPT55) and presign.extensions == {"x": 1}


def test_forget_and_refused_stop_presigning_until_trust_is_earned_again():
    book = QuoteBook()
    replay(book, default_price, GPT55, 40)
    assert book.trusted(GPT55.id)
    book.forget(GPT55.id)
    assert not book.trusted(GPT55.id)
    replay(book, default_price, GPT55, 4, seed=5)  # three exact shadows re-earn it
    assert book.trusted(GPT55.id)
    request = typical()
    presign = book.presign(request_features(GPT55.id, request["max_tokens"], request))
    book.refused(presign)
    assert not book.trusted(GPT55.id)
    assert book.stats.misses == 1
    # A miss doubles the streak needed: three exact shadows are no longer enough.
    replay(book, default_price, GPT55, 4, seed=6)
    assert not book.trusted(GPT55.id)
    replay(book, default_price, GPT55, 4, seed=7)
    assert book.trusted(GPT55.id)


def test_disabled_book_learns_but_never_offers():
    book = QuoteBook(enabled=False)
    run = replay(book, default_price, GPT55, 40)
    assert run.trusted_at is None and run.probes == 40
    assert book.trusted(GPT55.id)  # the shadow record is there for metrics


def test_memory_is_bounded():
    book = QuoteBook(max_models=3, window=32)
    for spec_id in ("a/1", "a/2", "a/3", "a/4"):
        spec = dataclasses.replace(GPT55, id=spec_id)
        replay(book, default_price, spec, 50)
    assert len(book._models) == 3 and "a/1" not in book._models
    assert all(len(state.window) <= 32 for state in book._models.values())


# --- features and exact arithmetic ------------------------------------------------------------


def test_features_measure_text_without_a_tokenizer():
    request = {
        "messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "héllo"}]},
            {"role": "user", "content": "日本語"},
            {"role": "assistant", "content": None, "tool_calls": []},
        ]
    }
    features = request_features("m", 10, request)
    # chars: 4 + 5 + 3 of which 3 are CJK; bytes: 4 + 6 + 9. Without tool calls the
    # text and the contents alone measure the same.
    assert MEASURES[:5] == (
        "text_chars",
        "text_chars_div4",
        "text_bytes",
        "text_bytes_div4",
        "router_tokens",
    )
    assert MEASURES[5:] == tuple(f"content_{m.removeprefix('text_')}" for m in MEASURES[:5])
    assert features.sizes == (12, 3, 19, 5, 3 + math.ceil(9 / 4)) * 2
    assert features.messages == 4 and features.max_tokens == 10
    assert features.key == ("/v1/chat/completions", "m") and features.extra == 0
    # A tool call's name and arguments are text the model reads; tools are "extra".
    call = {"type": "function", "function": {"name": "get", "arguments": '{"q": 1}'}}
    request["messages"][3]["tool_calls"] = [call]
    request["tools"] = [{"type": "function", "function": {"name": "get"}}]
    with_call = request_features("m", 10, request)
    assert with_call.sizes[0] == 12 + len("get") + len('{"q": 1}')
    assert with_call.sizes[5:] == features.sizes[5:]  # the contents alone did not change
    assert with_call.extra == len(b'[{"type":"function","function":{"name":"get"}}]')
    assert request_features("m", None, request) is None
    assert features_from_body(b'{"model": "m", "messages": [], "max_completion_tokens": 5}')
    assert features_from_body(b"not json") is None


def test_fractions_in_lists_every_round_price_in_the_band_or_none():
    rng = random.Random(4)
    for _ in range(300):
        centre = rng.uniform(0, 3)
        width = 10 ** rng.uniform(-6, -2)
        got = fractions_in(centre - width, centre + width)
        lo, hi = Fraction(max(0.0, centre - width)), Fraction(centre + width)
        brute = {
            Fraction(p, q)
            for q in range(1, MAX_DENOMINATOR + 1)
            for p in range(math.floor(lo * q), math.ceil(hi * q) + 1)
            if lo <= Fraction(p, q) <= hi
        }
        if len(brute) > MAX_CANDIDATES:
            assert got is None
        else:
            assert got is not None and set(got) == brute
    assert fractions_in(0.1499, 0.1501) == [Fraction(3, 20)]
    assert fractions_in(-2.0, -1.0) == []


def _json(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


# Importing blockrun_llm warns about its pydantic models: theirs, not ours.
@pytest.mark.filterwarnings("ignore:Support for class-based:DeprecationWarning")
def test_cjk_counting_matches_blockrun_estimator():
    """router_tokens is BlockRun's own estimate (blockrun_llm.router_core.tokens), computed
    without importing it on the hot path; CJK counted at C speed, as its regex would."""
    from blockrun_llm.router_core.tokens import estimate_tokens

    from blockrun_proxy.quotes.features import cjk_chars, cjk_count
    from blockrun_proxy.testing.workloads import mixed_text

    rng = random.Random(8)
    for _ in range(300):
        pieces = [
            chr(rng.choice((rng.randint(32, 0x2FFF), rng.randint(0x3000, 0xFFFF))))
            for _ in range(rng.randint(0, 120))
        ]
        text = "".join(pieces) + mixed_text(rng, rng.randint(0, 400))
        assert cjk_count(text) == len(cjk_chars().findall(text))
        features = request_features("m", 1, {"messages": [{"role": "user", "content": text}]})
        assert features.sizes[4] == estimate_tokens(text)
