"""The gateway's side of x402 exact payments: quotes, header codecs, and the verdict.

Deliberately independent of ``blockrun_proxy.x402``: this is the other end of
the wire, written from the protocol notes, so it can catch the signer's mistakes.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from blockrun_proxy.testing._eip712 import UINT256_MAX, Authorization, Domain
from blockrun_proxy.testing._networks import chain_id_of, is_address
from blockrun_proxy.testing._verify import (
    SignatureError,
    VerifyMode,
    parse_signature,
    recover_signer,
)


@dataclass(frozen=True)
class Quote:
    """One requirement the gateway offers (an entry of ``accepts``)."""

    scheme: str
    network: str
    amount: int
    asset: str
    pay_to: str
    max_timeout_seconds: int
    domain_name: str
    domain_version: str
    # The requirement's ``extra`` when it is not the EIP-712 domain (Solana: the feePayer).
    extra: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "network": self.network,
            "amount": str(self.amount),
            "asset": self.asset,
            "payTo": self.pay_to,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": (
                dict(self.extra)
                if self.extra is not None
                else {"name": self.domain_name, "version": self.domain_version}
            ),
        }


def encode_header(obj: dict[str, Any]) -> str:
    return base64.b64encode(orjson.dumps(obj)).decode("ascii")


class PaymentDecodeError(ValueError):
    pass


def decode_header(value: str) -> dict[str, Any]:
    """A PAYMENT-SIGNATURE value: strict standard base64 of a JSON object.

    Strict on purpose: a proxy that sends url-safe or unpadded base64 would be
    refused by a strict gateway, and the fake should say so.
    """
    try:
        obj = orjson.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise PaymentDecodeError(f"payment header is not base64 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PaymentDecodeError("payment header is not a JSON object")
    return obj


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    INVALID = "invalid"
    REPLAY = "replay"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str | None = None
    auth: Authorization | None = None
    payer: str = ""
    # Solana: the base64 transaction that was verified (what settlement signs and sends)
    # and the sha256 of its message, which is what makes it unique (its "nonce").
    transaction: str | None = None
    message_hash: str | None = None

    @property
    def settleable(self) -> bool:
        """Whether this verdict carries a well-signed payment a chain would settle."""
        return self.auth is not None or self.transaction is not None

    @property
    def nonce_key(self) -> tuple[str, str]:
        """What a chain settles at most once: (payer, EIP-3009 nonce) or (payer, message hash)."""
        if self.auth is not None:
            return (self.auth.from_.lower(), self.auth.nonce.hex())
        assert self.message_hash is not None, "a verdict without a payment has no nonce"
        return (self.payer, self.message_hash)


class _Invalid(Exception):
    """Internal: carries the refusal reason out of the nested checks."""


def check_payment(
    payment: dict[str, Any],
    quote: Quote,
    *,
    now: int,
    verify: VerifyMode,
    settled_nonces: Container[tuple[str, str]],
) -> Verdict:
    """Judge a decoded PAYMENT-SIGNATURE against the quote for this very request.

    Order matters: structure and signature first, then the nonce (a signed
    authorization that was already settled is a replay, whatever its price or
    expiry now), then price and time window.
    """
    signed: Authorization | None = None  # once the signature is known to be good
    try:
        accepted, auth, signature = _parse(payment)
        _match_quote(accepted, auth, quote)
        domain = _domain(quote)
        try:
            signer = recover_signer(verify, domain, auth, signature)
        except SignatureError as exc:
            raise _Invalid(f"invalid signature: {exc}") from None
        if signer != auth.from_.lower():
            raise _Invalid(
                f"invalid signature: recovered {signer}, authorization.from is {auth.from_}"
            )
        signed = auth
        if (auth.from_.lower(), auth.nonce.hex()) in settled_nonces:
            return Verdict(Outcome.REPLAY, "nonce already used", auth, auth.from_)
        if auth.value < quote.amount:
            raise _Invalid(f"amount {auth.value} is below the price {quote.amount}")
        if not auth.valid_after <= now < auth.valid_before:
            raise _Invalid(
                f"authorization not valid now ({now} outside "
                f"[{auth.valid_after}, {auth.valid_before}))"
            )
    except _Invalid as exc:
        # A refused payment whose signature is good still names its authorization: a
        # dishonest gateway could keep it and settle it later (Misbehavior.keep_refused).
        return Verdict(Outcome.INVALID, str(exc), signed, signed.from_ if signed else "")
    return Verdict(Outcome.ACCEPTED, None, auth, auth.from_)


def _parse(payment: dict[str, Any]) -> tuple[dict[str, Any], Authorization, bytes]:
    if payment.get("x402Version") != 2:
        raise _Invalid(f"unsupported x402Version {payment.get('x402Version')!r}")
    accepted = payment.get("accepted")
    body = payment.get("payload")
    if not isinstance(accepted, dict) or not isinstance(body, dict):
        raise _Invalid("payment lacks accepted/payload objects")
    raw = body.get("authorization")
    if not isinstance(raw, dict):
        raise _Invalid("payload lacks an authorization object")
    try:
        signature = parse_signature(body.get("signature"))
    except SignatureError as exc:
        raise _Invalid(f"invalid signature: {exc}") from None
    return accepted, _authorization(raw), signature


def _authorization(raw: dict[str, Any]) -> Authorization:
    for key in ("from", "to"):
        if not is_address(raw.get(key)):
            raise _Invalid(f"authorization.{key} is not an address")
    nonce = raw.get("nonce")
    if not isinstance(nonce, str) or len(nonce) != 66 or not nonce.startswith("0x"):
        raise _Invalid("authorization.nonce is not 0x + 32 bytes hex")
    try:
        nonce_bytes = bytes.fromhex(nonce[2:])
    except ValueError:
        raise _Invalid("authorization.nonce is not hex") from None
    return Authorization(
        from_=raw["from"],
        to=raw["to"],
        value=_uint(raw, "value"),
        valid_after=_uint(raw, "validAfter"),
        valid_before=_uint(raw, "validBefore"),
        nonce=nonce_bytes,
    )


def _uint(raw: dict[str, Any], key: str) -> int:
    # The SDK sends decimal strings; accept JSON integers too, nothing else.
    value = raw.get(key)
    if _is_decimal(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise _Invalid(f"authorization.{key} is not a decimal integer")
    if not 0 <= number <= UINT256_MAX:
        raise _Invalid(f"authorization.{key} is out of uint256 range")
    return number


def _is_decimal(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _match_quote(accepted: dict[str, Any], auth: Authorization, quote: Quote) -> None:
    if accepted.get("scheme", "exact") != quote.scheme:
        raise _Invalid(f"scheme {accepted.get('scheme')!r} does not match {quote.scheme!r}")
    if quote.scheme != "exact":
        raise _Invalid(f"scheme {quote.scheme!r} is not verifiable by this gateway")
    if accepted.get("network") != quote.network:
        raise _Invalid(f"network {accepted.get('network')!r} does not match {quote.network!r}")
    if str(accepted.get("asset", "")).lower() != quote.asset.lower():
        raise _Invalid(f"asset {accepted.get('asset')!r} does not match {quote.asset}")
    if str(accepted.get("payTo", "")).lower() != quote.pay_to.lower():
        raise _Invalid(f"payTo {accepted.get('payTo')!r} does not match {quote.pay_to}")
    if auth.to.lower() != quote.pay_to.lower():
        raise _Invalid(f"authorization.to {auth.to} does not match payTo {quote.pay_to}")
    amount = accepted.get("amount")
    if not _is_decimal(amount) or int(amount) != auth.value:
        raise _Invalid(
            f"authorization.value {auth.value} does not equal accepted.amount {amount!r}"
        )


def _domain(quote: Quote) -> Domain:
    chain_id = chain_id_of(quote.network)
    if chain_id is None or not is_address(quote.asset):
        raise _Invalid(f"cannot verify on network {quote.network!r} / asset {quote.asset!r}")
    return Domain(quote.domain_name, quote.domain_version, chain_id, quote.asset)
