"""Signing up front: learn each price key's price from the 402s seen, sign the first request.

- ``features``: what we measure of a request (no tokenizer), and the price key;
- ``prior``: the catalogue's prices as formulas the 402s confirm or refute;
- ``observation``: a 402's features and amount, and a quoted range (records);
- ``fit``: exact-rational fitting of the price formula from observations alone (imported
  at the first fit, not at start);
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
from blockrun_proxy.quotes.observation import Observation, Quote
from blockrun_proxy.quotes.prior import CataloguePrice, Prior, parse_catalogue

__all__ = [
    "CHAT_ROUTE",
    "MEASURES",
    "CataloguePrice",
    "Features",
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
