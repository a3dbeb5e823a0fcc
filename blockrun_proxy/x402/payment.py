"""Build the ``PAYMENT-SIGNATURE`` header for one exact-scheme requirement.

The policy decides WHETHER to pay (policy.py); this module only turns an accepted
requirement into a signed EIP-3009 authorization. It still re-checks the few
facts that decide what the signature means (scheme, network, asset), because
getting one wrong signs something other than "pay exactly `amount` USDC".
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .networks import Network, canonical_network
from .refusal import Refusal
from .signer import Authorization, Signer
from .wire import PaymentResponse, Requirement, encode_header

X402_VERSION = 2
# validAfter is backdated so a gateway whose clock runs behind still accepts it.
CLOCK_SKEW_SECONDS = 600
BUILDER_SERVICE_CODE = "blockrun"
# The official server refuses an echoed builder-code ``s`` list longer than this (its
# client and server reservations, 5 + 5): with a full list, ours is left out, not theirs.
MAX_SERVICE_CODES = 10
# What a gateway's settlement report can claim that cannot be true (a bounded set: these
# label a metric). The payer never takes either as a cost.
SETTLED_ABOVE_SIGNED = "settled_above_signed"
SETTLED_BELOW_SIGNED = "settled_below_signed"
SETTLEMENT_ANOMALIES = (SETTLED_ABOVE_SIGNED, SETTLED_BELOW_SIGNED)


@dataclass(frozen=True, slots=True)
class SignedPayment:
    """A signed payment ready to send, with what it authorizes."""

    header: str  # PAYMENT-SIGNATURE value: base64 JSON
    authorization: Authorization
    requirement: Requirement
    amount: int  # atomic units authorized (== requirement.amount)


def sign_payment(
    signer: Signer,
    requirement: Requirement,
    network: Network,
    resource: Mapping[str, Any],
    *,
    now: int,
    nonce: bytes | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> SignedPayment:
    """Sign ``requirement`` as an exact EIP-3009 transfer under OUR ``network`` domain.

    ``now`` is injected (unix seconds) so the validity window is testable;
    ``extensions`` are the 402's, echoed with BlockRun's builder code merged in.
    """
    _check_meaning(requirement, network)
    if nonce is None:
        nonce = secrets.token_bytes(32)
    elif len(nonce) != 32:
        raise ValueError("nonce must be 32 bytes")
    auth = Authorization(
        from_=signer.address,
        to=requirement.pay_to,
        value=requirement.amount,
        valid_after=max(0, now - CLOCK_SKEW_SECONDS),
        valid_before=now + requirement.max_timeout_seconds,
        nonce=nonce,
    )
    payload: dict[str, Any] = {"x402Version": X402_VERSION}
    if resource:  # optional in v2; omitted rather than sent empty
        payload["resource"] = resource
    payload["accepted"] = requirement.raw
    payload["payload"] = {
        "signature": signer.sign_transfer(network, auth),
        "authorization": auth.to_json(),
    }
    payload["extensions"] = with_builder_code(extensions)
    return SignedPayment(
        header=encode_header(payload),
        authorization=auth,
        requirement=requirement,
        amount=requirement.amount,
    )


class Signed(Protocol):
    """What ``settled_cost`` reads of a signed payment, whatever its scheme."""

    @property
    def amount(self) -> int: ...

    @property
    def requirement(self) -> Requirement: ...


def settled_cost(payment: Signed, settlement: PaymentResponse | None) -> tuple[int, str | None]:
    """What ``payment`` cost, and the anomaly when the gateway's report cannot be true.

    The amount in ``PAYMENT-RESPONSE`` is the gateway's word, not the chain's, so it is
    believed only where it could be true. What the signature authorizes bounds what can
    ever be taken:

    - ``exact`` transfers exactly the signed amount: the cost is that amount, and a
      report of any other (say 999.999999 USD, or 0) is an anomaly;
    - a scheme that settles *at most* a signed ceiling (``upto``) costs the settled
      amount when ``0 <= settled <= signed``; above the ceiling it is an anomaly and
      the ceiling is the cost.

    A report without an amount costs the signed amount (PROTOCOL.md section 3).
    """
    signed = payment.amount
    claimed = settlement.amount if settlement is not None else None
    if claimed is None or claimed == signed:
        return signed, None
    if claimed > signed:
        return signed, SETTLED_ABOVE_SIGNED
    if payment.requirement.scheme in SETTLES_AT_MOST_SIGNED:
        return claimed, None
    return signed, SETTLED_BELOW_SIGNED


# Schemes whose signature is a ceiling the gateway may settle below.
SETTLES_AT_MOST_SIGNED = frozenset({"upto"})


def _check_meaning(requirement: Requirement, network: Network) -> None:
    """Refuse to sign anything that would not mean "pay exactly amount USDC here"."""
    if requirement.scheme != "exact":
        # An upto ceiling signed as EIP-3009 would pay the whole ceiling.
        raise Refusal(
            f"x402 scheme {requirement.scheme!r} cannot be signed as an exact transfer",
            code="scheme_not_supported",
        )
    if canonical_network(requirement.network) != network.caip2:
        raise ValueError(
            f"requirement is for {requirement.network}, signing domain is {network.caip2}"
        )
    if requirement.asset.lower() != network.usdc.lower():
        raise Refusal(
            f"asset {requirement.asset} is not USDC on {network.name} ({network.usdc})",
            code="asset_mismatch",
        )


def with_builder_code(extensions: Mapping[str, Any] | None) -> dict[str, Any]:
    """The 402's extensions, echoed, with BlockRun's builder code added to ``builder-code``.

    The server's declared ``info.s`` list is kept and ``"blockrun"`` appended to it (a bare
    string counts as a one-entry list), as the official x402 client merges it: the official
    server rejects an echo that drops or changes a declared entry
    (``extension_echo_mismatch``), and caps the list at MAX_SERVICE_CODES. Everything else
    the server put there (an app code ``a``, a ``schema``) is echoed unchanged; copies, so
    the parsed 402 (which may be kept as a quote template) is never mutated.
    """
    merged = dict(extensions or {})
    builder = merged.get("builder-code")
    builder = dict(builder) if isinstance(builder, Mapping) else {}
    info = builder.get("info")
    info = dict(info) if isinstance(info, Mapping) else {}
    declared = info.get("s")
    if isinstance(declared, list):
        codes = list(declared)
    elif isinstance(declared, str):
        codes = [declared]
    else:
        codes = []
    if BUILDER_SERVICE_CODE not in codes and len(codes) < MAX_SERVICE_CODES:
        codes.append(BUILDER_SERVICE_CODE)
    info["s"] = codes
    builder["info"] = info
    merged["builder-code"] = builder
    return merged
