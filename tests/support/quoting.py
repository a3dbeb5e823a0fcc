"""Helpers for the quote book's own tests: feed it 402s as the proxy would, no network."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from blockrun_proxy.quotes import Features, Presign, QuoteBook, parse_catalogue, request_features
from blockrun_proxy.testing import ModelSpec
from blockrun_proxy.x402 import Requirement

SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAY_TO = "0x000000000000000000000000000000000000dEaD"

Pricing = Callable[[ModelSpec, Mapping[str, Any]], int]


def requirement(amount: int, pay_to: str = PAY_TO, scheme: str = "exact") -> Requirement:
    raw = {
        "scheme": scheme,
        "network": "eip155:84532",
        "amount": str(amount),
        "asset": SEPOLIA_USDC,
        "payTo": pay_to,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2"},
    }
    return Requirement(scheme, "eip155:84532", amount, SEPOLIA_USDC, pay_to, 300, raw["extra"], raw)


def resource(spec: ModelSpec) -> dict[str, str]:
    return {
        "url": "https://gateway.test/api/v1/chat/completions",
        "description": f"{spec.id} - {spec.max_output} max output tokens",
        "mimeType": "application/json",
    }


def with_catalogue(book: QuoteBook, *specs: ModelSpec) -> QuoteBook:
    book.set_catalogue(parse_catalogue(orjson.dumps({"data": [s.listing() for s in specs]})))
    return book


@dataclass
class Log:
    """What happened per call: H presigned at the price, O above it (over-paid),
    x presigned below it (refused), . probed."""

    marks: list[str] = field(default_factory=list)
    overpaid: int = 0

    def share_after(self, warm_up: int) -> float:
        after = self.marks[warm_up:]
        return sum(m in "HO" for m in after) / len(after)

    def __str__(self) -> str:
        return "".join(self.marks)


def offer(book: QuoteBook, features: Features, price: int) -> tuple[str, Presign | None]:
    """Ask the book for a presign and judge it as the gateway would: accepted at or above
    the price, refused below. Returns the call's mark (H, O, x, or . for none offered) and
    the accepted presign; None means the call probes and must observe the 402."""
    presign = book.presign(features)
    if presign is None:
        return ".", None
    if presign.amount >= price:
        book.accepted(presign)
        return ("H" if presign.amount == price else "O"), presign
    book.refused(presign)
    return "x", None


def feed(book: QuoteBook, spec: ModelSpec, pricing: Pricing, bodies: list[dict[str, Any]]) -> Log:
    """Replay what the proxy does per call: presign if the book offers (accepted at or
    above the price, refused below), else probe and observe the 402."""
    log = Log()
    for body in bodies:
        price = pricing(spec, body)
        features = request_features(spec.id, body["max_tokens"], body)
        assert features is not None
        mark, presign = offer(book, features, price)
        log.marks.append(mark)
        if presign is not None:
            log.overpaid += presign.amount - price
            continue
        book.observe(features, requirement(price), resource(spec), None)
    return log
