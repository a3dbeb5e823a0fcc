"""The catalogue as a prior: price formulas built from ``/v1/models``, kept while the 402s agree.

``GET /v1/models`` publishes each model's input and output price (USD per million tokens,
which is micro-USDC per token) and a flat fee. A gateway that prices by them charges

    amount = ceil(output * max_tokens + input * (tokens(prompt) + k * messages) + c)

for some way of counting prompt tokens, some per-message overhead ``k`` and some
constant ``c`` (the flat fee, any fixed overhead). The catalogue pins the two slopes; what
it leaves open is enumerated: every size measure of features.py, every ``k`` from 0 to
MAX_PER_MESSAGE tokens. ``c`` is learned exactly from the 402s: each one bounds it to a
half-open interval, and the formula is dropped the moment a 402 leaves no ``c``.

Those formulas are the prior: a 402 that none of them explains refutes it (the learner
of fit.py takes over), and a formula is used to sign only while it explains every 402
seen and the book's out-of-sample streak vouches for it. With slopes known exactly, the
bounds hold at any request size, so growing conversations and prompts of any length are
predicted as well as the ones already seen.

Everything is integer arithmetic over one scale per formula: ``value`` is
``scale * (output*M + input*(u*S + k*N))`` and the interval for ``scale * c`` is
``(low, high]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import orjson

from blockrun_proxy.quotes.features import MEASURE_TOKENS
from blockrun_proxy.quotes.observation import Observation, Quote, span

# Per-message overheads tried, in tokens (OpenAI's own counting uses 3 or 4).
MAX_PER_MESSAGE = 8
# Fixed per-call input tokens tried on top of the flat fee (OpenAI primes replies with 3).
MAX_FIXED_TOKENS = 4
# A price above this (USD per million tokens) is not a price: ignored.
MAX_PRICE_PER_MTOK = Fraction(100_000)
# A catalogue body larger than this is not parsed.
MAX_CATALOGUE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CataloguePrice:
    """One model's published prices, in micro-USDC per token (= USD per million tokens),
    and its flat fee per call in micro-USDC (None when the catalogue gives none)."""

    input: Fraction
    output: Fraction
    max_output: int | None = None
    flat: Fraction | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "max_output": self.max_output,
            "flat": None if self.flat is None else str(self.flat),
        }

    @classmethod
    def from_json(cls, doc: Any) -> CataloguePrice | None:
        """From ``to_json``'s shape (prices per million tokens, flat fee in micro-USDC)."""
        if not isinstance(doc, dict):
            return None
        prices = [_price(doc.get("input")), _price(doc.get("output"))]
        if prices[0] is None or prices[1] is None:
            return None
        flat = _price(doc.get("flat")) if doc.get("flat") is not None else None
        return cls(prices[0], prices[1], _positive_int(doc.get("max_output")), flat)


def parse_catalogue(body: bytes) -> dict[str, CataloguePrice]:
    """Model id -> prices from a ``/v1/models`` body; entries that do not parse are skipped."""
    if len(body) > MAX_CATALOGUE_BYTES:
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    data = doc.get("data") if isinstance(doc, dict) else None
    found: dict[str, CataloguePrice] = {}
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        pricing = entry.get("pricing")
        if not isinstance(pricing, dict) or entry.get("billing_mode") == "free":
            continue
        flat = _price(pricing.get("flat"))  # USD per call
        price = CataloguePrice.from_json(
            {
                "input": pricing.get("input"),
                "output": pricing.get("output"),
                "max_output": entry.get("max_output"),
                "flat": None if flat is None else str(flat * 1_000_000),
            }
        )
        if price is not None:
            found[entry["id"]] = price
    return found


def _price(value: object) -> Fraction | None:
    """A per-million-tokens price as an exact fraction: 0.15 means 3/20, not the float."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        price = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    if not 0 <= price <= MAX_PRICE_PER_MTOK or price.denominator > 10**9:
        return None
    return price


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


class PriorFormula:
    """One way the catalogue's prices could produce the 402s: a size measure and a
    per-message overhead, with the constant bounded by the 402s seen so far."""

    __slots__ = ("_m", "_n", "_s", "high", "k", "low", "measure", "scale")

    def __init__(
        self, price: CataloguePrice, measure: int, k: int, constant: Fraction | None = None
    ) -> None:
        per_unit = price.input * MEASURE_TOKENS[measure]
        self.measure = measure
        self.k = k
        denominators = [price.output.denominator, per_unit.denominator, price.input.denominator]
        if constant is not None:
            denominators.append(constant.denominator)
        self.scale = math.lcm(*denominators)
        self._m = int(price.output * self.scale)
        self._s = int(per_unit * self.scale)
        self._n = int(price.input * k * self.scale)
        # scale * c in (low, high]; a constant given up front is that one value.
        self.low: int | None = None if constant is None else int(constant * self.scale) - 1
        self.high: int | None = None if constant is None else int(constant * self.scale)

    def value(self, max_tokens: int, size: int, messages: int) -> int:
        return self._m * max_tokens + self._s * size + self._n * messages

    def admit(self, observation: Observation) -> bool:
        """Narrow the constant to what this 402 allows; False if nothing is left."""
        v = self.value(
            observation.max_tokens, observation.sizes[self.measure], observation.messages
        )
        top = observation.amount * self.scale - v  # scale*c <= top
        bottom = top - self.scale  # scale*c > bottom
        self.low = bottom if self.low is None else max(self.low, bottom)
        self.high = top if self.high is None else min(self.high, top)
        return self.low < self.high

    def quote(self, max_tokens: int, sizes: tuple[int, ...], messages: int) -> Quote | None:
        if self.low is None or self.high is None:
            return None
        v = self.value(max_tokens, sizes[self.measure], messages)
        # amount = ceil((v + C) / scale) with low < C <= high.
        return Quote((v + self.low) // self.scale + 1, -(-(v + self.high) // self.scale))

    def describe(self) -> str:
        return f"measure {self.measure}, {self.k} tokens per message"


class Prior:
    """The catalogue formulas for one price key that still explain every 402 seen.

    Two tiers: ``fixed`` formulas take the constant from the catalogue too (its flat fee
    plus ``c0`` input tokens of fixed overhead, c0 = 0..MAX_FIXED_TOKENS) and so predict
    one amount from the first 402 on; ``free`` ones learn the constant from the 402s.
    While any fixed formula explains every 402, the fixed ones decide: the catalogue's
    word, confirmed. The free tier takes over when the flat fee turns out to be another.
    """

    def __init__(self, price: CataloguePrice, observations: Iterable[Observation] = ()) -> None:
        self.price = price
        shapes = [(m, k) for m in range(len(MEASURE_TOKENS)) for k in range(MAX_PER_MESSAGE + 1)]
        self.free = [PriorFormula(price, m, k) for m, k in shapes]
        self.fixed = (
            []
            if price.flat is None
            else [
                PriorFormula(price, m, k, price.flat + price.input * c0)
                for m, k in shapes
                for c0 in range(MAX_FIXED_TOKENS + 1)
            ]
        )
        self.seen = 0
        for observation in observations:
            self.admit(observation)

    @property
    def live(self) -> bool:
        return bool(self.free)

    @property
    def formulas(self) -> list[PriorFormula]:
        """The formulas that decide: the fixed tier while it lives, else the free one."""
        return self.fixed or self.free

    def admit(self, observation: Observation) -> None:
        self.seen += 1
        self.free = [f for f in self.free if f.admit(observation)]
        self.fixed = [f for f in self.fixed if f.admit(observation)]

    def quote(self, max_tokens: int, sizes: tuple[int, ...], messages: int) -> Quote | None:
        """The range of amounts the deciding formulas allow for this request."""
        if not self.free or self.seen == 0:
            return None
        return span(formula.quote(max_tokens, sizes, messages) for formula in self.formulas)


def catalogue_snapshot(prices: Mapping[str, CataloguePrice]) -> dict[str, Any]:
    return {model: price.to_json() for model, price in prices.items()}
