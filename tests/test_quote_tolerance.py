"""``--presign-tolerance-usd``'s promise: a call is never over-paid by more than the tolerance
(and, without one, never over-paid at all), whatever the order of events.

The quote book alone, fed 402s as the proxy would, with the two things that run beside
the request path under the test's control: when a background refit comes back (the
keeper's worker thread: at once, late, or outrun by a newer one) and when the catalogue
arrives (never, up front, or some calls after the book asked for it). In production
those depend on timing; here each order is picked by a seeded generator, so a failure
replays.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.quoting import Pricing, offer, requirement, resource, with_catalogue

from blockrun_proxy.quotes import QuoteBook, request_features
from blockrun_proxy.quotes.book import DEFAULT_MIN_OBSERVATIONS, compute_fit
from blockrun_proxy.testing import ModelSpec
from blockrun_proxy.testing._models import PRICING_SHAPES, max_tokens_price
from blockrun_proxy.testing.workloads import bodies

RESERIALISED = PRICING_SHAPES["reserialised"]
MINI = next(m for m in RESERIALISED.models if m.id == "openai/gpt-4o-mini")  # $0.15 / $0.60
GPT55 = next(m for m in RESERIALISED.models if m.id == "openai/gpt-5.5")
MODELS = {
    "max_tokens": "openai/gpt-5.5",
    "chars": "openai/gpt-4o-mini",
    "catalogue": "google/gemini-2.5-pro",
    "default": "openai/gpt-4o-mini",
    "reserialised": "openai/gpt-4o-mini",
}


def shrinking(spec: ModelSpec, body: Mapping[str, Any]) -> int:
    """A hostile price that falls as the conversation grows (no bound holds)."""
    size = sum(len(m.get("content") or "") for m in body["messages"])
    return 5000 - min(size, 40_000) // 40


@dataclass
class Timing:
    """When the work that runs beside the request path lands, between two book calls."""

    refit_inline: bool = True  # no keeper: refits run inside observe
    refit_lands: float = 1.0  # else: chance a pending refit comes back at each step
    catalogue: str = "never"  # "never", "up_front" or "asked" (the keeper fetches it)
    catalogue_lands: float = 1.0  # chance an asked-for catalogue arrives at each step


@dataclass
class Signed:
    amount: int
    price: int
    counted: int  # what the book said it may over-pay (Presign.overpay)
    source: str


@dataclass
class Replay:
    signed: list[Signed] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "".join(self.marks)


def replay(
    book: QuoteBook,
    spec: ModelSpec,
    pricing: Pricing,
    sent: list[dict[str, Any]],
    timing: Timing,
    rng: random.Random,
    catalogue: tuple[ModelSpec, ...] = (),
) -> Replay:
    """What the proxy does per call (presign if offered: accepted at or above the price,
    refused below; else probe and observe the 402), with refits and the catalogue
    landing when ``timing`` and ``rng`` say."""
    refits: list[tuple[Any, Any, int]] = []
    asked: list[bool] = []
    if not timing.refit_inline:
        book.on_refit = lambda key, window, version: refits.append((key, window, version))
    if timing.catalogue == "up_front":
        with_catalogue(book, *catalogue)
    elif timing.catalogue == "asked":
        book.on_catalogue_wanted = lambda: asked.append(True)

    def step() -> None:
        for pending in list(refits):
            if rng.random() < timing.refit_lands:
                refits.remove(pending)
                key, window, version = pending
                result = compute_fit(window, book.min_observations, book.tolerance > 0)
                book.refit_done(key, version, result)
        if asked and rng.random() < timing.catalogue_lands:
            asked.clear()
            with_catalogue(book, *catalogue)

    out = Replay()
    for body in sent:
        step()
        price = pricing(spec, body)
        features = request_features(spec.id, body["max_tokens"], body)
        assert features is not None
        mark, presign = offer(book, features, price)
        out.marks.append(mark)
        if presign is not None:
            out.signed.append(Signed(presign.amount, price, presign.overpay, presign.source))
            continue
        step()
        book.observe(features, requirement(price), resource(spec), None)
    return out


def assert_within(run: Replay, tolerance: int) -> None:
    over = [s.amount - s.price for s in run.signed]
    assert max(over, default=0) <= tolerance and min(over, default=0) >= 0, (over, str(run))
    for s in run.signed:
        assert s.amount - s.price <= s.counted, (s, str(run))  # never more than counted


def test_reserialised_prompts_never_over_pay_past_the_tolerance() -> None:
    """The CI failure, replayed: refits inline, no catalogue, a gateway that measures the
    re-serialised JSON. A request larger in every size the proxy measures can cost less
    there (a CJK character is 6 characters escaped), so a floor from sizes is no floor:
    the book signed 106 over a price with a tolerance of 100."""
    book = QuoteBook(tolerance_atomic=100)
    sent = bodies("random_prompts", MINI.id)
    run = replay(book, MINI, RESERIALISED.price, sent, Timing(), random.Random(0))
    assert_within(run, 100)
    # No request here extends another: nothing bounds a price from below, so nothing is
    # signed from the estimate.
    assert all(s.source != "estimate" for s in run.signed), run


def test_a_larger_prompt_in_every_measure_can_cost_less_re_serialised() -> None:
    """Why the floor is not a size-dominance bound (what the book used to take)."""
    ascii_text = {"role": "user", "content": "the quick brown fox " * 10}  # 200 characters
    cjk_text = {"role": "user", "content": "的一是不了人我在有他" * 5}  # 50
    small = {"model": MINI.id, "max_tokens": 256, "messages": [cjk_text]}
    large = {"model": MINI.id, "max_tokens": 256, "messages": [ascii_text]}
    f_small = request_features(MINI.id, 256, small)
    f_large = request_features(MINI.id, 256, large)
    assert f_small is not None and f_large is not None
    assert all(a <= b for a, b in zip(f_small.sizes, f_large.sizes, strict=True))
    assert RESERIALISED.price(MINI, large) < RESERIALISED.price(MINI, small)


def test_a_grown_conversation_is_bounded_by_the_402s_of_its_prefixes() -> None:
    """The sound floor: a conversation that grew since a 402 costs at least that much on a
    gateway whatever its way of measuring, so the estimate may sign within the tolerance
    above it, and does."""
    book = QuoteBook(tolerance_atomic=1000)
    sent = bodies("conversation", MINI.id)
    run = replay(book, MINI, RESERIALISED.price, sent, Timing(), random.Random(0))
    assert_within(run, 1000)
    assert sum(s.source == "estimate" for s in run.signed) >= 20, run


def test_prefixes_match_only_the_same_request_with_messages_appended() -> None:
    first = {"role": "user", "content": "hello"}
    reply = {"role": "assistant", "content": "hi"}
    base = {"model": MINI.id, "max_tokens": 64, "messages": [first], "stream": True}
    grown = {**base, "messages": [first, reply], "max_tokens": 128, "stream": False}

    def digests(body: dict[str, Any]) -> tuple[bytes, ...]:
        features = request_features(MINI.id, body["max_tokens"], body)
        assert features is not None
        return features.prefixes.digests()

    assert len(digests(grown)) == 3  # no messages, one, two
    assert digests(grown)[1] == digests(base)[-1]  # max_tokens and stream aside
    other_fields = [
        {**grown, "tools": [{"type": "function", "function": {"name": "x"}}]},
        {**grown, "n": 2},
        {**grown, "system": "be brief"},
    ]
    for body in other_fields:
        assert digests(body)[1] != digests(base)[-1], body
    edited = {**grown, "messages": [{"role": "user", "content": "hello!"}, reply]}
    assert digests(edited)[1] != digests(base)[-1]
    # Message boundaries count: ["ab"] is not ["a", "b"].
    split = {**base, "messages": ["a", "b"]}
    joined = {**base, "messages": ["ab"]}
    assert digests(split)[-1] != digests(joined)[-1]


def test_a_prefix_seen_longer_ago_than_the_ttl_bounds_nothing() -> None:
    """A price may have been cut since: only 402s younger than the TTL are floors."""
    now = [0.0]
    # The learned formulas held back: they would sign this constant price before the bound.
    book = QuoteBook(
        ttl_seconds=300, clock=lambda: now[0], pinned_min_observations=DEFAULT_MIN_OBSERVATIONS
    )
    sent = bodies("conversation", GPT55.id)
    run = replay(book, GPT55, max_tokens_price, sent[:8], Timing(), random.Random(0))
    assert run.marks[-1] == "H" and run.signed[-1].source == "bound", run
    grown = request_features(GPT55.id, sent[8]["max_tokens"], sent[8])
    assert grown is not None
    # A 402 for another conversation keeps the quote fresh; the first one's are aged.
    now[0] = 290.0
    other = bodies("conversation", GPT55.id, seed=1)[0]
    features = request_features(GPT55.id, other["max_tokens"], other)
    assert features is not None
    book.observe(features, requirement(max_tokens_price(GPT55, other)), resource(GPT55), None)
    presign = book.presign(grown)
    assert presign is not None and presign.source == "bound"
    now[0] = 301.0
    assert book.presign(grown) is None


def _sweep_cases(count: int) -> list[tuple[str, str, int, int, Timing]]:
    rng = random.Random(11)
    cases = []
    for _ in range(count):
        shape = rng.choice([*MODELS, "shrinking"])
        inline = rng.random() < 0.3
        timing = Timing(
            refit_inline=inline,
            refit_lands=rng.choice((1.0, 0.7, 0.3)),
            catalogue=rng.choice(("never", "up_front", "asked")),
            catalogue_lands=rng.choice((1.0, 0.3)),
        )
        workload = rng.choice(("conversation", "tool_loop", "random_prompts"))
        tolerance = rng.choice((0, 2, 100, 100, 1000))
        cases.append((shape, workload, tolerance, rng.randrange(1000), timing))
    # The reserialised gateway with the tolerance on each workload, always: seeds
    # on which the size-dominance and estimate floors over-paid 101 to 133.
    for workload, seed in (("random_prompts", 7), ("conversation", 4), ("tool_loop", 9)):
        cases.append(("reserialised", workload, 100, seed, Timing(False, 0.7)))
    return cases


@pytest.mark.parametrize(("shape", "workload", "tolerance", "seed", "timing"), _sweep_cases(15))
def test_no_order_of_events_over_pays_past_the_tolerance(
    shape: str, workload: str, tolerance: int, seed: int, timing: Timing
) -> None:
    """Property: over many workloads, pricing shapes (and a hostile one), tolerances, and
    orders in which refits and the catalogue land, every accepted presign is at most the
    tolerance above the price (exactly the price without one) and at most what the book
    counted."""
    if shape == "shrinking":
        spec, pricing, catalogue = GPT55, shrinking, RESERIALISED.models
    else:
        spec = next(m for m in PRICING_SHAPES[shape].models if m.id == MODELS[shape])
        pricing, catalogue = PRICING_SHAPES[shape].price, PRICING_SHAPES[shape].models
    rng = random.Random(seed)
    sent = bodies(workload, spec.id, seed=seed)[:40]
    book = QuoteBook(tolerance_atomic=tolerance)
    run = replay(book, spec, pricing, sent, timing, rng, catalogue)
    assert_within(run, tolerance)
