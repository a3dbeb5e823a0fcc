"""x402 wire format: decode what the gateway sends, encode what we send.

Everything here faces untrusted input. Decoders never raise: anything that is not
the expected shape gives None (or is skipped, for one bad requirement among good
ones), and the caller answers "no usable payment requirement". Values are
validated at this boundary so the policy and the signer see typed data only.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from ._abi import UINT256_MAX

# A 402 body worth parsing is a few KiB; never JSON-parse a large one.
MAX_BODY_BYTES = 256 * 1024
# A PAYMENT-REQUIRED header is about 1 KiB per requirement; the proxy's HTTP client
# reads gateway header fields up to this size (upstream.GATEWAY_MAX_FIELD_SIZE).
MAX_HEADER_CHARS = 64 * 1024
# BlockRun offers two requirements (exact, then upto). An offer of more is not one to
# choose from but work forced on the payer: it is not a usable payment requirement.
MAX_ACCEPTS = 16
# Requirements missing maxTimeoutSeconds get the blockrun-llm SDK's default.
DEFAULT_MAX_TIMEOUT_SECONDS = 300

# Plain ASCII digits only: int() would also take "+1", " 1", "1_000" and other
# scripts' digits. 78 digits bound the value near uint256 before int() runs.
_UINT_RE = re.compile(r"[0-9]{1,78}\Z")
_INT_RE = re.compile(r"-?[0-9]{1,18}\Z")
_B64_URLSAFE = str.maketrans("-_", "+/")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One entry of a 402's ``accepts``: a way the gateway will take payment."""

    scheme: str  # "exact" when missing (v1)
    network: str
    amount: int  # atomic units (USDC: 6 decimals)
    asset: str
    pay_to: str
    max_timeout_seconds: int
    extra: Mapping[str, Any]
    raw: Mapping[str, Any]  # as the gateway sent it; echoed as the payment's `accepted`


@dataclass(frozen=True, slots=True)
class PaymentRequired:
    """A decoded 402 offer with at least one well-formed requirement."""

    x402_version: int
    resource: Mapping[str, Any]
    accepts: tuple[Requirement, ...]
    error: str | None
    extensions: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class PaymentResponse:
    """The gateway's settlement report (``PAYMENT-RESPONSE``)."""

    success: bool
    transaction: str | None
    network: str | None
    amount: int | None
    payer: str | None
    error_reason: str | None


# --- base64 JSON headers -------------------------------------------------------------------


def encode_header(obj: Any) -> str:
    """Standard base64 of compact JSON, as x402 headers carry it."""
    return base64.b64encode(orjson.dumps(obj, default=_json_default)).decode("ascii")


def decode_header(value: str) -> Any | None:
    """Decode a base64 JSON header; None if it is not one.

    Tolerates missing padding, surrounding whitespace and the urlsafe alphabet,
    which some servers emit.
    """
    if not isinstance(value, str):
        return None
    text = value.strip().translate(_B64_URLSAFE)
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
        return orjson.loads(raw)
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        return None


def _json_default(obj: Any) -> Any:
    # Requirements may hold read-only mappings (MappingProxyType); orjson wants dicts.
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple | frozenset):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# --- PAYMENT-REQUIRED ----------------------------------------------------------------------


def parse_payment_required(header_value: str | None, body: bytes | None) -> PaymentRequired | None:
    """The 402's offer: the ``PAYMENT-REQUIRED`` header first, then the JSON body.

    The body may be BlockRun's ``{"x402": {...}, "price": {...}}`` or a v1
    top-level ``{"x402Version", "accepts", ...}``. None when neither yields at
    least one well-formed requirement.
    """
    if header_value and len(header_value) <= MAX_HEADER_CHARS:
        offer = _payment_required(decode_header(header_value), default_version=2)
        if offer is not None:
            return offer
    if not body or len(body) > MAX_BODY_BYTES:
        return None
    try:
        doc = orjson.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("x402"), dict):
        return _payment_required(doc["x402"], default_version=2)
    if "accepts" in doc:
        return _payment_required(doc, default_version=1)
    return None


def _payment_required(doc: object, *, default_version: int) -> PaymentRequired | None:
    if not isinstance(doc, dict):
        return None
    accepts = doc.get("accepts")
    if not isinstance(accepts, list) or len(accepts) > MAX_ACCEPTS:
        return None
    reqs = tuple(r for r in map(_requirement, accepts) if r is not None)
    if not reqs:
        return None
    version = doc.get("x402Version")
    error = doc.get("error")
    extensions = doc.get("extensions")
    return PaymentRequired(
        x402_version=version if _is_int(version) else default_version,
        resource=_resource(doc.get("resource"), reqs),
        accepts=reqs,
        error=error if isinstance(error, str) else None,
        extensions=extensions if isinstance(extensions, dict) else None,
    )


def _resource(value: object, reqs: tuple[Requirement, ...]) -> Mapping[str, Any]:
    """v2 puts ``resource`` at the top; v1 put a URL string in each requirement."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return {"url": value}
    first = reqs[0].raw
    url = first.get("resource")
    if not isinstance(url, str):
        return {}
    resource: dict[str, Any] = {"url": url}
    for key in ("description", "mimeType"):
        if isinstance(first.get(key), str):
            resource[key] = first[key]
    return resource


def parse_requirement(item: object) -> Requirement | None:
    """One requirement as a gateway (or a saved quote) wrote it, or None if malformed."""
    return _requirement(item)


def _requirement(item: object) -> Requirement | None:
    """A typed Requirement, or None if any field is missing or of the wrong shape."""
    if not isinstance(item, dict):
        return None
    scheme = item.get("scheme")
    if scheme is None:
        scheme = "exact"  # v1 requirements had no scheme; exact was the only one
    network, asset, pay_to = item.get("network"), item.get("asset"), item.get("payTo")
    if not (
        isinstance(scheme, str)
        and isinstance(network, str)
        and isinstance(asset, str)
        and isinstance(pay_to, str)
    ) or "" in (scheme, network, asset, pay_to):
        return None
    amount = _uint(item["amount"] if "amount" in item else item.get("maxAmountRequired"))
    timeout_value = item.get("maxTimeoutSeconds")
    timeout = DEFAULT_MAX_TIMEOUT_SECONDS if timeout_value is None else _int(timeout_value)
    extra = item.get("extra")
    if extra is None:
        extra = {}
    if amount is None or timeout is None or not isinstance(extra, dict):
        return None
    return Requirement(
        scheme=scheme,
        network=network,
        amount=amount,
        asset=asset,
        pay_to=pay_to,
        max_timeout_seconds=timeout,
        extra=extra,
        raw=item,
    )


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; JSON true must not read as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _uint(value: object) -> int | None:
    """A non-negative uint256 from a JSON int or a decimal string."""
    if _is_int(value):
        return value if 0 <= value <= UINT256_MAX else None
    if isinstance(value, str) and _UINT_RE.match(value):
        n = int(value)
        return n if n <= UINT256_MAX else None
    return None


def _int(value: object) -> int | None:
    """A (possibly negative) int from a JSON int or a short decimal string."""
    if _is_int(value):
        return value
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    return None


# --- PAYMENT-RESPONSE ----------------------------------------------------------------------


def parse_payment_response(header_value: str | None) -> PaymentResponse | None:
    """Decode ``PAYMENT-RESPONSE``; None if absent or not a JSON object."""
    if not header_value:
        return None
    doc = decode_header(header_value)
    if not isinstance(doc, dict):
        return None
    tx = _str(doc.get("transaction")) or _str(doc.get("txHash"))
    success = doc.get("success")
    return PaymentResponse(
        # Without an explicit flag, a transaction hash is the only evidence of settlement.
        success=success if isinstance(success, bool) else tx is not None,
        transaction=tx,
        network=_str(doc.get("network")),
        amount=_uint(doc.get("amount")),
        payer=_str(doc.get("payer")),
        error_reason=_str(doc.get("errorReason")),
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
