"""Signing up front: learn each price key's price from the 402s seen, sign the first request.

- ``features``: what we measure of a request (no tokenizer), and the price key;
- ``prior``: the catalogue's prices as formulas the 402s confirm or refute;
- ``fit``: exact-rational fitting of the price formula from observations alone;
- ``book``: per price key, the latest requirement, the formulas and their trust;
- ``entries``: the book as named, stamped entries, what a quote store keeps;
- ``store``: the file store (``quote_store.py`` has the interface and the Redis store);
- ``keeper``: the async edge: fetches the catalogue, loads, saves and re-loads the book
  off the loop, so a restarted sidecar or a new replica starts warm.
"""

from blockrun_proxy.quotes.book import Presign, QuoteBook, QuoteStats, Template
from blockrun_proxy.quotes.features import (
    CHAT_ROUTE,
    MEASURES,
    Features,
    PriceKey,
    features_from_body,
    request_features,
    text_sizes,
)
from blockrun_proxy.quotes.fit import Hypothesis, Observation, Quote
from blockrun_proxy.quotes.prior import CataloguePrice, Prior, parse_catalogue

__all__ = [
    "CHAT_ROUTE",
    "MEASURES",
    "CataloguePrice",
    "Features",
    "Hypothesis",
    "Observation",
    "Presign",
    "PriceKey",
    "Prior",
    "Quote",
    "QuoteBook",
    "QuoteStats",
    "Template",
    "features_from_body",
    "parse_catalogue",
    "request_features",
    "text_sizes",
]
