"""Why the gateway refused a payment, read from its answer.

Gateways say it in different places: the official x402 server puts the facilitator's
reason in a fresh 402's ``PAYMENT-REQUIRED`` ``error`` and a failed settlement's in
``PAYMENT-RESPONSE`` ``errorReason``; BlockRun's gateway answers
``{"error": "Payment verification failed", "details": "... invalidReason ..."}``; others
use ``invalidReason`` or an OpenAI-shaped ``{"error": {"code", "message"}}``.

``refusal_reason`` turns any of them into one short printable string (for the client's
message and the log line); ``reason_code`` maps it onto a bounded set of snake_case
codes (for the client's ``code`` and a metric label), ``None`` when it names none of
them. Everything here reads untrusted input: nothing raises, and nothing unbounded
comes out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from .wire import decode_header

# What a reason may be in a message or a log line: printable ASCII, this long.
MAX_REASON_CHARS = 160
# Never JSON-parse a refusal body larger than this.
MAX_BODY_BYTES = 64 * 1024
PAYMENT_REQUIRED = "payment-required"
PAYMENT_RESPONSE = "payment-response"

# The reasons worth a code and a metric label of their own: the official x402 package's
# EVM exact/upto/permit2 and generic codes, and the ones BlockRun's gateway is seen to
# send. Anything else is reported in the message only.
KNOWN_REASONS = frozenset(
    {
        "insufficient_funds",
        "invalid_payload",
        "invalid_signature",
        "invalid_network",
        "invalid_scheme",
        "payment_expired",
        "settlement_failed",
        "verification_failed",
        "transaction_failed",
        "transaction_simulation_failed",
        "unsupported_scheme",
        "network_mismatch",
        "missing_eip712_domain",
        "extension_echo_mismatch",
        "no_matching_payment_requirements",
        "settlement_pending",
        "asset_not_deployed_contract",
        "smart_wallet_deployment_failed",
        "eip6492_factory_not_allowed",
        "invalid_exact_evm_eip3009_not_supported",
        "invalid_exact_evm_failed_to_get_asset_info",
        "invalid_exact_evm_failed_to_get_network_config",
        "invalid_exact_evm_failed_to_verify_signature",
        "invalid_exact_evm_insufficient_balance",
        "invalid_exact_evm_nonce_already_used",
        "invalid_exact_evm_payload_authorization_valid_after",
        "invalid_exact_evm_payload_authorization_valid_before",
        "invalid_exact_evm_payload_authorization_value_mismatch",
        "invalid_exact_evm_payload_recipient_mismatch",
        "invalid_exact_evm_payload_signature",
        "invalid_exact_evm_payload_undeployed_smart_wallet",
        "invalid_exact_evm_token_name_mismatch",
        "invalid_exact_evm_token_version_mismatch",
        "invalid_exact_evm_transaction_simulation_failed",
        "invalid_exact_evm_transfer_event_mismatch",
        "invalid_upto_evm_network_mismatch",
        "invalid_upto_evm_payload_settlement_exceeds_amount",
        "invalid_upto_evm_scheme",
        "invalid_upto_evm_transaction_failed",
        "permit2_allowance_required",
        "permit2_amount_mismatch",
        "permit2_deadline_expired",
        "permit2_insufficient_balance",
        "permit2_not_yet_valid",
        "permit2_token_mismatch",
        "invalid_permit2_signature",
        "invalid_permit2_spender",
        "invalid_permit2_recipient_mismatch",
        "upto_amount_exceeds_permitted",
        "upto_facilitator_mismatch",
    }
)
# A 402's own ``error`` on an unpaid request: not a reason for refusing a payment.
_NOT_REASONS = frozenset({"payment required", "payment_required"})
_WORDS = re.compile(r"[a-z0-9_]+")
_SPACES = re.compile(r"\s+")


def refusal_reason(status: int, headers: Mapping[str, str], body: bytes) -> str | None:
    """The gateway's reason for refusing a payment, short and printable, or None.

    Looks, in order, at a failed ``PAYMENT-RESPONSE``'s ``errorReason``, the
    ``PAYMENT-REQUIRED`` challenge's ``error``, then the body's ``invalidReason``,
    ``errorReason``, ``error`` (a string, or an object's ``code`` and ``message``) and
    ``details``. A challenge's ``error`` counts only on a 402 (the status it belongs to).
    """
    settlement = decode_header(_header(headers, PAYMENT_RESPONSE) or "")
    if isinstance(settlement, dict) and settlement.get("success") is not True:
        found = _text(settlement.get("errorReason")) or _text(settlement.get("errorMessage"))
        if found:
            return found
    challenge = decode_header(_header(headers, PAYMENT_REQUIRED) or "") if status == 402 else None
    if isinstance(challenge, dict):
        found = _text(challenge.get("error"))
        if found:
            return found
    return _from_body(body)


def reason_code(reason: str | None) -> str | None:
    """The first known reason named in ``reason`` (a bounded set), or None."""
    if not reason:
        return None
    text = reason.lower()
    snake = _SPACES.sub("_", text.strip())
    if snake in KNOWN_REASONS:
        return snake  # "No matching payment requirements" and the like
    words: list[str] = _WORDS.findall(text)
    return next((word for word in words if word in KNOWN_REASONS), None)


def _from_body(body: bytes) -> str | None:
    if not body or len(body) > MAX_BODY_BYTES:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    parts: list[str] = []
    for key in ("invalidReason", "errorReason"):
        found = _text(doc.get(key))
        if found:
            return found
    error = doc.get("error")
    if isinstance(error, dict):
        parts += filter(None, (_text(error.get("code")), _text(error.get("message"))))
    else:
        parts += filter(None, [_text(error)])
    details = doc.get("details")
    parts += filter(None, [_text(details if isinstance(details, str) else _json(details))])
    x402 = doc.get("x402")
    if not parts and isinstance(x402, dict):
        parts += filter(None, [_text(x402.get("error"))])
    return _clip(": ".join(parts)) if parts else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value: object = headers.get(name)
    if value is None:
        # Plain dicts are case-sensitive; aiohttp's headers are not.
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value if isinstance(value, str) else None


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = _clip(value)
    return text if text and text.lower() not in _NOT_REASONS else None


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return None


def _clip(text: str) -> str:
    printable = "".join(c if c.isascii() and c.isprintable() else " " for c in text[:1000])
    text = _SPACES.sub(" ", printable).strip()
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
