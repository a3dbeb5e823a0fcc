"""Decoding 402 offers and settlement reports: good shapes parse, garbage gives None."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from blockrun_proxy.x402 import (
    PaymentRequired,
    decode_header,
    encode_header,
    parse_payment_required,
    parse_payment_response,
)
from blockrun_proxy.x402.wire import MAX_ACCEPTS, MAX_HEADER_CHARS

USDC_BASE = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAY_TO = "0x1111111111111111111111111111111111111111"


def requirement(**over: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "scheme": "exact",
        "network": "eip155:8453",
        "amount": "1234",
        "asset": USDC_BASE,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    req.update(over)
    return {k: v for k, v in req.items() if v is not ...}


def offer(*reqs: dict[str, Any], **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "x402Version": 2,
        "error": "Payment required",
        "resource": {
            "url": "https://blockrun.ai/api/v1/chat/completions",
            "description": "openai/gpt-5 - 128000 max output tokens",
            "mimeType": "application/json",
        },
        "accepts": list(reqs) or [requirement()],
    }
    doc.update(over)
    return doc


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


# --- headers ---------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    obj = {"a": 1, "b": ["x", {"c": None}], "ü": "ß"}
    header = encode_header(obj)
    assert header.isascii()
    assert base64.b64decode(header) == orjson.dumps(obj)
    assert decode_header(header) == obj


def test_decode_tolerates_missing_padding_urlsafe_and_whitespace() -> None:
    obj = {"k": "???>>>~~~", "n": 1}  # characters whose base64 uses + and /
    std = base64.b64encode(orjson.dumps(obj)).decode()
    assert "+" in std or "/" in std
    urlsafe = base64.urlsafe_b64encode(orjson.dumps(obj)).decode()
    for variant in (std, std.rstrip("="), urlsafe, urlsafe.rstrip("="), f"  {std}\r\n"):
        assert decode_header(variant) == obj


@pytest.mark.parametrize(
    "garbage",
    ["", "!!!!", "not base64 at all", "YQ", base64.b64encode(b"\xff\xfe").decode(), "=" * 8],
)
def test_decode_garbage_is_none(garbage: str) -> None:
    assert decode_header(garbage) is None


def test_encode_accepts_read_only_mappings() -> None:
    from types import MappingProxyType

    header = encode_header({"m": MappingProxyType({"x": 1}), "t": (1, 2)})
    assert decode_header(header) == {"m": {"x": 1}, "t": [1, 2]}


# --- PAYMENT-REQUIRED ------------------------------------------------------------------------


def test_header_v2_parses_every_field() -> None:
    doc = offer(extensions={"builder-code": {"info": {"a": "app"}}})
    parsed = parse_payment_required(b64(doc), None)
    assert isinstance(parsed, PaymentRequired)
    assert parsed.x402_version == 2
    assert parsed.error == "Payment required"
    assert parsed.resource == doc["resource"]
    assert parsed.extensions == {"builder-code": {"info": {"a": "app"}}}
    (req,) = parsed.accepts
    assert req.scheme == "exact"
    assert req.network == "eip155:8453"
    assert req.amount == 1234
    assert req.asset == USDC_BASE
    assert req.pay_to == PAY_TO
    assert req.max_timeout_seconds == 300
    assert req.extra == {"name": "USD Coin", "version": "2"}
    assert req.raw == doc["accepts"][0]  # echoed verbatim as `accepted`


def test_header_round_trip_through_encode_header() -> None:
    doc = offer(requirement(), requirement(scheme="upto", amount="99999"))
    parsed = parse_payment_required(encode_header(doc), None)
    assert parsed is not None
    assert [r.scheme for r in parsed.accepts] == ["exact", "upto"]
    assert [r.amount for r in parsed.accepts] == [1234, 99999]


def test_header_wins_over_body() -> None:
    header = b64(offer(requirement(amount="1")))
    body = orjson.dumps({"x402": offer(requirement(amount="2"))})
    parsed = parse_payment_required(header, body)
    assert parsed is not None and parsed.accepts[0].amount == 1


def test_an_offer_of_too_many_requirements_is_not_usable() -> None:
    assert parse_payment_required(b64(offer(*[requirement()] * MAX_ACCEPTS)), None) is not None
    assert parse_payment_required(b64(offer(*[requirement()] * (MAX_ACCEPTS + 1))), None) is None
    assert parse_payment_required(b64(offer(*[requirement()] * 1_000)), None) is None
    body = orjson.dumps({"x402": offer(*[requirement()] * 1_000)})
    assert parse_payment_required(None, body) is None


def test_a_header_over_the_bound_is_not_parsed() -> None:
    padded = b64(offer(padding="x" * MAX_HEADER_CHARS))
    assert len(padded) > MAX_HEADER_CHARS
    assert parse_payment_required(padded, None) is None


@pytest.mark.parametrize("header", [None, "", "%%%garbage%%%", b64([1, 2]), b64({"accepts": []})])
def test_body_used_when_header_absent_or_unusable(header: str | None) -> None:
    body = orjson.dumps(
        {
            "error": "Payment Required",
            "price": {"amount": "0.002000", "currency": "USD"},
            "x402": offer(requirement(amount="2000")),
        }
    )
    parsed = parse_payment_required(header, body)
    assert parsed is not None
    assert parsed.x402_version == 2
    assert parsed.accepts[0].amount == 2000


def test_body_v1_top_level_with_max_amount_required() -> None:
    v1_req = {
        "scheme": "exact",
        "network": "base",
        "maxAmountRequired": "5000",
        "resource": "https://blockrun.ai/api/v1/chat/completions",
        "description": "chat",
        "mimeType": "application/json",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "asset": USDC_BASE,
    }
    body = orjson.dumps(
        {"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [v1_req]}
    )
    parsed = parse_payment_required(None, body)
    assert parsed is not None
    assert parsed.x402_version == 1
    req = parsed.accepts[0]
    assert req.amount == 5000 and req.network == "base" and req.extra == {}
    # v1 carried the resource inside the requirement; it is lifted for the policy.
    assert parsed.resource == {
        "url": "https://blockrun.ai/api/v1/chat/completions",
        "description": "chat",
        "mimeType": "application/json",
    }


def test_v1_missing_scheme_is_exact_and_missing_timeout_defaults() -> None:
    parsed = parse_payment_required(
        b64(offer(requirement(scheme=..., maxTimeoutSeconds=...))), None
    )
    assert parsed is not None
    assert parsed.accepts[0].scheme == "exact"
    assert parsed.accepts[0].max_timeout_seconds == 300


def test_amount_key_wins_over_max_amount_required() -> None:
    parsed = parse_payment_required(b64(offer(requirement(maxAmountRequired="9"))), None)
    assert parsed is not None and parsed.accepts[0].amount == 1234


def test_int_amount_and_string_timeout_accepted() -> None:
    parsed = parse_payment_required(
        b64(offer(requirement(amount=777, maxTimeoutSeconds="120"))), None
    )
    assert parsed is not None
    assert parsed.accepts[0].amount == 777 and parsed.accepts[0].max_timeout_seconds == 120


MALFORMED: list[Any] = [
    requirement(amount="-1"),
    requirement(amount=-1),
    requirement(amount="1.5"),
    requirement(amount=1.5),
    requirement(amount="1e3"),
    requirement(amount="+5"),
    requirement(amount=" 5"),
    requirement(amount="1_000"),
    requirement(amount="٣"),  # a non-ASCII digit int() would accept
    requirement(amount=True),
    requirement(amount=str(2**256)),
    requirement(amount="9" * 5000),
    requirement(amount=...),
    requirement(network=...),
    requirement(asset=...),
    requirement(payTo=...),
    requirement(payTo=""),
    requirement(network=8453),
    requirement(scheme=5),
    requirement(maxTimeoutSeconds="soon"),
    requirement(maxTimeoutSeconds=1.5),
    requirement(extra="USD Coin"),
    "exact",
    None,
    [requirement()],
]


@pytest.mark.parametrize("bad", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_requirement_alone_gives_none(bad: Any) -> None:
    assert parse_payment_required(b64(offer(bad)), None) is None


def test_malformed_requirements_skipped_among_good_ones() -> None:
    size = MAX_ACCEPTS - 1  # offers of more are refused whole
    for start in range(0, len(MALFORMED), size):
        bad = MALFORMED[start : start + size]
        parsed = parse_payment_required(b64(offer(*bad, requirement(amount="42"))), None)
        assert parsed is not None
        assert [r.amount for r in parsed.accepts] == [42]


def test_zero_amount_parses_for_the_policy_to_refuse() -> None:
    parsed = parse_payment_required(b64(offer(requirement(amount="0"))), None)
    assert parsed is not None and parsed.accepts[0].amount == 0


@pytest.mark.parametrize(
    ("header", "body"),
    [
        (None, None),
        ("", b""),
        ("%%%", b"{not json"),
        (b64("a string"), b"[1, 2, 3]"),
        (b64([offer()]), orjson.dumps([offer()])),
        (b64({"x402Version": 2}), orjson.dumps({"error": "Payment Required"})),
        (b64(offer(accepts="exact")), orjson.dumps({"x402": "nope"})),
        (None, orjson.dumps({"x402": {"accepts": []}})),
        (None, b"\xff\xfe\x00"),
        (None, orjson.dumps(offer()) + b" " * (300 * 1024)),  # too big to parse
    ],
    ids=range(10),
)
def test_garbage_gives_none(header: str | None, body: bytes | None) -> None:
    assert parse_payment_required(header, body) is None


def test_odd_top_level_fields_are_ignored_not_fatal() -> None:
    doc = offer(x402Version="2", error=7, extensions=["x"], resource=12)
    parsed = parse_payment_required(b64(doc), None)
    assert parsed is not None
    assert parsed.x402_version == 2  # the header default
    assert parsed.error is None and parsed.extensions is None and parsed.resource == {}


def test_resource_as_plain_url_string() -> None:
    parsed = parse_payment_required(b64(offer(resource="https://blockrun.ai/api/x")), None)
    assert parsed is not None and parsed.resource == {"url": "https://blockrun.ai/api/x"}


# --- PAYMENT-RESPONSE ------------------------------------------------------------------------


def test_payment_response_full() -> None:
    resp = parse_payment_response(
        b64(
            {
                "success": True,
                "transaction": "0xabc",
                "network": "eip155:8453",
                "amount": "1234",
                "payer": PAY_TO,
            }
        )
    )
    assert resp is not None
    assert resp.success is True
    assert resp.transaction == "0xabc"
    assert resp.network == "eip155:8453"
    assert resp.amount == 1234
    assert resp.payer == PAY_TO
    assert resp.error_reason is None


def test_payment_response_tx_hash_alias_and_missing_amount() -> None:
    resp = parse_payment_response(encode_header({"success": True, "txHash": "0xdef"}))
    assert resp is not None
    assert resp.transaction == "0xdef" and resp.amount is None and resp.network is None


def test_payment_response_failure() -> None:
    resp = parse_payment_response(
        b64({"success": False, "errorReason": "insufficient_funds", "transaction": ""})
    )
    assert resp is not None
    assert resp.success is False
    assert resp.error_reason == "insufficient_funds"
    assert resp.transaction is None


def test_payment_response_without_success_flag() -> None:
    with_tx = parse_payment_response(b64({"transaction": "0x1"}))
    without = parse_payment_response(b64({"errorReason": "x"}))
    assert with_tx is not None and with_tx.success is True
    assert without is not None and without.success is False


def test_payment_response_odd_field_types() -> None:
    resp = parse_payment_response(
        b64({"success": "yes", "transaction": 5, "amount": "-3", "payer": ["x"]})
    )
    assert resp is not None
    assert resp.success is False and resp.transaction is None
    assert resp.amount is None and resp.payer is None


@pytest.mark.parametrize("garbage", [None, "", "%%%", b64([1]), b64("s"), b64(None)])
def test_payment_response_garbage(garbage: str | None) -> None:
    assert parse_payment_response(garbage) is None
