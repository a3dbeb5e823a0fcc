"""What the fake gateway remembers, for tests to assert on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    payment: dict[str, Any] | None  # decoded PAYMENT-SIGNATURE / X-PAYMENT, if decodable
    query: str = ""  # the query as sent, still %-encoded ("alt=sse", "model=xai%2F...")


@dataclass(frozen=True)
class PaymentRecord:
    """One payment header received, whatever became of it.

    Fields come from the authorization as sent (empty/0 when it was unreadable).
    """

    nonce: str
    amount: int
    payer: str
    pay_to: str
    network: str
    signature: str
    accepted: bool
    reason: str | None


# The name the brief's callers use; the record covers refused payments too.
AcceptedPayment = PaymentRecord


@dataclass(frozen=True)
class SettledPayment:
    amount: int
    nonce: str
    transaction: str
    payer: str
    network: str


def payment_record(
    payment: dict[str, Any] | None, *, accepted: bool, reason: str | None
) -> PaymentRecord:
    """Best-effort summary of a payment payload that may be malformed.

    An upto payload has ``permit2Authorization`` instead: its nonce (a decimal uint256),
    its ceiling and its witness's payee fill the same fields.
    """
    payload = _dict((payment or {}).get("payload"))
    auth = _dict(payload.get("authorization"))
    permit2 = _dict(payload.get("permit2Authorization"))
    if permit2 and not auth:
        auth = {
            "nonce": permit2.get("nonce", ""),
            "value": _dict(permit2.get("permitted")).get("amount"),
            "from": permit2.get("from", ""),
            "to": _dict(permit2.get("witness")).get("to", ""),
        }
    value = auth.get("value")
    try:
        amount = int(value) if isinstance(value, (str, int)) else 0
    except ValueError:
        amount = 0
    return PaymentRecord(
        nonce=str(auth.get("nonce", "")),
        amount=amount,
        payer=str(auth.get("from", "")),
        pay_to=str(auth.get("to", "")),
        network=str(_dict((payment or {}).get("accepted")).get("network", "")),
        signature=str(payload.get("signature", "")),
        accepted=accepted,
        reason=reason,
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
