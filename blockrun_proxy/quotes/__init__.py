"""Signing up front: learn each model's price from the 402s seen, sign the first request.

- ``features``: what we measure of a request (no tokenizer);
- ``fit``: exact-rational fitting of the price formula from observations;
- ``book``: per price key (route, model), the latest requirement, the hypothesis and its trust.
"""

from blockrun_proxy.quotes.book import Presign, QuoteBook, QuoteStats, Template
from blockrun_proxy.quotes.features import (
    CHAT_ROUTE,
    MEASURES,
    Features,
    PriceKey,
    features_from_body,
    request_features,
)
from blockrun_proxy.quotes.fit import Hypothesis, Observation, Quote

__all__ = [
    "CHAT_ROUTE",
    "MEASURES",
    "Features",
    "Hypothesis",
    "Observation",
    "Presign",
    "PriceKey",
    "Quote",
    "QuoteBook",
    "QuoteStats",
    "Template",
    "features_from_body",
    "request_features",
]
