"""The gateway's reason for refusing a payment, from wherever it put it."""

from __future__ import annotations

import orjson
import pytest

from blockrun_proxy.x402 import encode_header, reason_code, refusal_reason
from blockrun_proxy.x402.reasons import KNOWN_REASONS, MAX_REASON_CHARS


def test_official_server_fresh_402_error() -> None:
    challenge = encode_header(
        {"x402Version": 2, "error": "invalid_exact_evm_insufficient_balance", "accepts": []}
    )
    reason = refusal_reason(402, {"PAYMENT-REQUIRED": challenge}, b"{}")
    assert reason == "invalid_exact_evm_insufficient_balance"
    assert reason_code(reason) == "invalid_exact_evm_insufficient_balance"


def test_failed_settlement_header_wins() -> None:
    settlement = encode_header(
        {"success": False, "errorReason": "invalid_exact_evm_nonce_already_used"}
    )
    reason = refusal_reason(402, {"payment-response": settlement}, b"{}")
    assert reason == "invalid_exact_evm_nonce_already_used"
    # A successful settlement is not a refusal.
    ok = encode_header({"success": True, "transaction": "0xabc"})
    assert refusal_reason(200, {"PAYMENT-RESPONSE": ok}, b"") is None


def test_blockrun_verification_failed_body() -> None:
    body = orjson.dumps(
        {
            "error": "Payment verification failed",
            "details": (
                'Verification failed: {"isValid":false,"invalidReason":"insufficient_funds"}'
            ),
        }
    )
    reason = refusal_reason(402, {}, body)
    assert reason is not None and reason.startswith("Payment verification failed: Verification")
    assert reason_code(reason) == "insufficient_funds"


def test_openai_shaped_and_invalid_reason_bodies() -> None:
    body = orjson.dumps({"error": {"code": "PAYMENT_INVALID", "message": "bad signature"}})
    assert refusal_reason(402, {}, body) == "PAYMENT_INVALID: bad signature"
    assert reason_code("PAYMENT_INVALID: bad signature") is None
    assert refusal_reason(400, {}, b'{"invalidReason": "invalid_payload"}') == "invalid_payload"
    assert reason_code("No matching payment requirements") == "no_matching_payment_requirements"


def test_unpaid_challenge_and_junk_are_no_reason() -> None:
    challenge = encode_header({"x402Version": 2, "error": "Payment required", "accepts": []})
    assert (
        refusal_reason(402, {"PAYMENT-REQUIRED": challenge}, b'{"error": "Payment Required"}')
        is None
    )
    assert refusal_reason(402, {"PAYMENT-REQUIRED": "%%%"}, b"not json") is None
    assert refusal_reason(500, {}, b"[1, 2]") is None
    assert refusal_reason(402, {}, b"") is None


@pytest.mark.parametrize(
    "hostile",
    [
        "x" * 20_000,
        "line\r\nInjected: header\x00\x1b[31m",
        "日本語 insufficient_funds",
    ],
    ids=["long", "control-characters", "non-ascii"],
)
def test_reasons_are_short_printable_and_codes_bounded(hostile: str) -> None:
    reason = refusal_reason(402, {}, orjson.dumps({"error": hostile}))
    assert reason is not None and len(reason) <= MAX_REASON_CHARS
    assert reason.isascii() and reason.isprintable()
    code = reason_code(reason)
    assert code is None or code in KNOWN_REASONS
