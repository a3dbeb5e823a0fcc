"""What the learner learns from, and what it answers: one 402's features and amount
(``Observation``), and the range of amounts a formula allows (``Quote``).

Records only, apart from fit.py's solver: the book, the prior and the keeper hold them
from the start, while the solver (and its ``Fraction`` arithmetic and dataclasses) is
imported at the first fit, which needs several 402s of one price key (startup is
measured).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


class Quote(NamedTuple):
    """The range of amounts a hypothesis allows for one request."""

    low: int
    high: int


def span(quotes: Iterable[Quote | None]) -> Quote | None:
    """The range covering every one of ``quotes``: None when one cannot say, or none do."""
    low = high = None
    for quote in quotes:
        if quote is None:
            return None
        low = quote.low if low is None else min(low, quote.low)
        high = quote.high if high is None else max(high, quote.high)
    return None if low is None or high is None else Quote(low, high)


@dataclass(frozen=True, slots=True)
class Observation:
    max_tokens: int  # already clamped at the model's output ceiling
    messages: int
    sizes: tuple[int, ...]
    amount: int
    extra: int = 0  # features.Features.extra: formulas speak only for values seen
    # For the quote book's prefix bound, not for fitting: the request's last prefix digest
    # (features.Prefixes) and when its 402 was seen (book clock). None when not known
    # (loaded from a saved book: digests are not kept across restarts).
    digest: bytes | None = None
    seen_at: float | None = None
