"""One line of the spend ledger: what a paid call signed, what it settled, how it ended.

Amounts are USDC atomic units (1e-6 USDC, "micro-USDC"), as everywhere in the proxy.
A record is made from the finished request's ``Exchange`` at the one place the app
reports a finished request (app.front_middleware), for every call whose payment may have
reached the gateway (``signed``: the largest authorization sent; one nonce per call, so
at most one of a call's authorizations can settle) and every call the proxy refused to
pay for (so a spent budget shows on the page). A signature that never left the proxy
cost nothing and is not recorded.

Outcomes:

- ``ok``: the gateway accepted the payment and answered; ``settled`` is what it settled
  (the signed amount when it did not say);
- ``failed_after_payment``: the payment was sent and the call failed after it (the client
  got a ``424``, or a stream broke): it may have been charged, ``settled`` is unknown;
- ``refused``: nothing was charged: the proxy refused to sign (budget, policy, budget
  store down), the gateway refused the signature as unused, or the signed call never
  reached it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from blockrun_proxy.errors import PAID_FAILURE_STATUS
from blockrun_proxy.exchange import CLIENT_CLOSED, Exchange

OK = "ok"
REFUSED = "refused"
FAILED_AFTER_PAYMENT = "failed_after_payment"
OUTCOMES = (OK, REFUSED, FAILED_AFTER_PAYMENT)
# Refusals of the proxy's own that are about paying (recorded with nothing signed).
PAYMENT_REFUSAL_STATUSES = frozenset({402})
PAYMENT_REFUSAL_CODES = frozenset({"budget_store_unavailable"})
# Model ids are the client's strings: bounded before they become ledger keys.
MAX_MODEL_CHARS = 128
MAX_TEXT_CHARS = 200


@dataclass(frozen=True, slots=True)
class SpendRecord:
    ts: float  # unix time the call finished
    request_id: str
    model: str
    route: str
    status: int  # what the client was answered (499: it hung up)
    outcome: str
    signed: int  # the authorization sent: the most this call may have cost
    settled: int | None
    settlement: str | None  # the settlement transaction, when the gateway named one
    error: str | None  # the proxy's or the gateway's error code
    replica: str  # which proxy process (host:pid)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SpendRecord | None:
        """A record read back from a store, or None if it is not one (never raises)."""
        if not isinstance(data, dict):
            return None
        try:
            record = cls(
                ts=float(data["ts"]),
                request_id=str(data["request_id"]),
                model=str(data["model"]),
                route=str(data["route"]),
                status=int(data["status"]),
                outcome=str(data["outcome"]),
                signed=int(data["signed"]),
                settled=None if data.get("settled") is None else int(data["settled"]),
                settlement=_text_or_none(data.get("settlement")),
                error=_text_or_none(data.get("error")),
                replica=str(data.get("replica", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return record if record.outcome in OUTCOMES else None


def outcome_of(exchange: Exchange) -> str | None:
    """How a finished call ended, for the ledger; None when it is not the ledger's business
    (a free call, a bad request, a call that never came near a payment)."""
    if not exchange.signed_atomic:
        refused = exchange.status in PAYMENT_REFUSAL_STATUSES or (
            exchange.refusal in PAYMENT_REFUSAL_CODES
        )
        return REFUSED if refused and exchange.refusal is not None else None
    if exchange.status == PAID_FAILURE_STATUS or exchange.upstream_error == "stream_broken":
        return FAILED_AFTER_PAYMENT
    if exchange.cost_atomic is not None:
        return OK  # answered (a client hanging up mid-stream does not undo the payment)
    if exchange.status == CLIENT_CLOSED:
        return FAILED_AFTER_PAYMENT  # hung up while the signed call was out: maybe charged
    # Signed, but nothing was charged: refused as unused (402) or never delivered (502).
    return REFUSED


def record_for(exchange: Exchange, *, now: float, replica: str) -> SpendRecord | None:
    outcome = outcome_of(exchange)
    if outcome is None:
        return None
    return SpendRecord(
        ts=now,
        request_id=exchange.request_id,
        model=(exchange.model or "")[:MAX_MODEL_CHARS],
        route=exchange.route,
        status=exchange.status,
        outcome=outcome,
        signed=exchange.signed_atomic or 0,
        settled=exchange.cost_atomic if outcome == OK else None,
        settlement=exchange.settlement_tx if outcome != REFUSED else None,
        error=exchange.refusal or exchange.upstream_error,
        replica=replica,
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)[:MAX_TEXT_CHARS]
