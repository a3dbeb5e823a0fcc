"""What a route hands the gateway's one payment path, and how each route speaks errors.

Every paid route of the fake goes through the same stages as chat (record, misbehave,
guard, price, 402 challenge, verify, settle, serve). A route only supplies the parts
that differ: ``prepare`` turns the request into a priced ``Call`` (or a ``Refusal``),
``Call.serve`` writes the answer, and a ``Dialect`` says how errors and the 402 look
on that route (OpenAI, Anthropic, Google or BlockRun's own envelope).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from blockrun_proxy.testing._payments import PaymentDecodeError, decode_header, encode_header
from blockrun_proxy.testing._replies import json_response


@dataclass(frozen=True)
class Incoming:
    """A request as a route's guard sees it: bytes, path parameters and query, no aiohttp.

    Kept free of the aiohttp request so ``FakeGateway.price_for`` can price a body
    without a server.
    """

    raw: bytes
    params: Mapping[str, str]
    query: Mapping[str, str]


@dataclass(frozen=True)
class Refusal:
    """An answer that ends a request before any payment question (bad body, unknown model)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None


@dataclass(frozen=True)
class Settlement:
    """What a paid answer carries: the receipt and the headers that announce it."""

    receipt: dict[str, Any]
    headers: Mapping[str, str]

    @classmethod
    def of(cls, receipt: dict[str, Any]) -> Settlement:
        """The receipt with the headers BlockRun announces it in (PROTOCOL.md section 3)."""
        headers = {
            "PAYMENT-RESPONSE": encode_header(receipt),
            "X-Payment-Receipt": str(receipt["transaction"]),
        }
        return cls(receipt, headers)


# Writes the answer once the call is free or paid; ``None`` means not paid (free).
Serve = Callable[[web.Request, Settlement | None], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class JobPlan:
    """A paid POST that answers ``202`` at once and settles when a poll sees it completed.

    ``submitted`` builds the 202 body from the job id and poll URL; ``result`` the
    completed poll's body from the job id and the origin media URLs are hosted on
    (the gateway adds ``id``, ``status`` and ``payment``).
    """

    kind: str  # the poll path segment: "videos", "images" or "audio"
    model: str
    polls: int  # polls answered 202 before the job completes
    submitted: Callable[[str, str], dict[str, Any]]  # (job id, poll URL) -> 202 body
    result: Callable[[str, str], dict[str, Any]]  # (job id, origin) -> completed body
    poll_query: str = ""  # appended to the poll URL, e.g. "?model=...&duration=8"


@dataclass(frozen=True)
class Call:
    """A guarded, priced request, ready for the payment path.

    Exactly one of ``serve`` (answer now, settle first) and ``job`` (answer 202,
    settle on the completing poll) is set.
    """

    price: int  # atomic USDC the 402 asks for, misbehave.price_multiplier included
    description: str  # the 402's resource.description
    serve: Serve | None = None
    free: bool = False
    price_details: Mapping[str, Any] = field(default_factory=dict)  # extra 402 price fields
    job: JobPlan | None = None
    # What the answer really costs, for an upto payment to settle (None: the full price).
    # A callable so the hot path never computes it for exact payments.
    actual_cost: Callable[[], int] | None = None
    model: str | None = None  # the model called, when the route has one (charge records)

    def __post_init__(self) -> None:
        if (self.serve is None) == (self.job is None):
            raise ValueError("a Call either serves inline or is a job, not both or neither")

    def inline(self) -> Serve:
        assert self.serve is not None, "a job is answered by Jobs.submit"
        return self.serve


@dataclass(frozen=True)
class Route:
    """One paid route: where it lives, how it speaks, and how a request becomes a ``Call``."""

    name: str
    template: str  # aiohttp path template under the API prefix, e.g. "/v1/messages"
    dialect: Dialect
    prepare: Callable[[Incoming], Call | Refusal]
    method: str = "POST"


@dataclass(frozen=True)
class Dialect:
    """How one route family shapes an error body and the body of its 402."""

    name: str
    error: Callable[[Refusal], dict[str, Any]]
    payment_required: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]

    def refuse(self, refusal: Refusal, headers: Mapping[str, str] | None = None) -> web.Response:
        return json_response(refusal.status, self.error(refusal), headers)


def price_object(amount_usd: str, details: Mapping[str, Any]) -> dict[str, Any]:
    return {"amount": amount_usd, "currency": "USD", **details}


# --------------------------------------------------------------------- dialects


def _openai_error(refusal: Refusal) -> dict[str, Any]:
    error = {
        "message": refusal.message,
        "type": refusal.type,
        "code": refusal.code,
        "param": refusal.param,
    }
    return {"error": error}


def _openai_payment_required(required: dict[str, Any], price: dict[str, Any]) -> dict[str, Any]:
    # The chat route also repeats the requirements in the body, as BlockRun's does.
    return {"error": "Payment Required", "x402": required, "price": price}


# Anthropic's error types for the statuses the fake answers with.
_ANTHROPIC_TYPES = {
    "server_error": "api_error",
    "rate_limit_error": "rate_limit_error",
    "payment_error": "payment_error",
    "invalid_request_error": "invalid_request_error",
}


def _anthropic_error(refusal: Refusal) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": _ANTHROPIC_TYPES.get(refusal.type, refusal.type),
        "message": refusal.message,
    }
    # Not in Anthropic's envelope: the fake keeps its machine code (PAYMENT_INVALID,
    # PAYMENT_REPLAY, ...) so a classifier can tell refusals apart (docs/PROTOCOL.md 10).
    if refusal.code is not None:
        error["code"] = refusal.code
    return {"type": "error", "error": error}


def _anthropic_payment_required(required: dict[str, Any], price: dict[str, Any]) -> dict[str, Any]:
    network = required["accepts"][0]["network"] if required.get("accepts") else None
    return {
        "type": "error",
        "error": {
            "type": "payment_required",
            "message": "This endpoint requires x402 payment",
            "price": price,
            "paymentInfo": {"network": network, "asset": "USDC", "x402Version": 2},
        },
    }


# google.rpc.Code names for the statuses the fake answers with.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _google_error(refusal: Refusal) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": refusal.status,
        "message": refusal.message,
        "status": _GOOGLE_STATUS.get(refusal.status, "UNKNOWN"),
    }
    if refusal.code is not None:  # the fake's machine code, as on the other dialects
        error["reason"] = refusal.code
    return {"error": error}


def _blockrun_error(refusal: Refusal) -> dict[str, Any]:
    body: dict[str, Any] = {"error": refusal.message}
    if refusal.code is not None:
        body["code"] = refusal.code
    return body


def _blockrun_payment_required(required: dict[str, Any], price: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": "Payment Required",
        "message": "This endpoint requires x402 payment",
        "price": price,
    }


OPENAI = Dialect("openai", _openai_error, _openai_payment_required)
ANTHROPIC = Dialect("anthropic", _anthropic_error, _anthropic_payment_required)
GOOGLE = Dialect("google", _google_error, _blockrun_payment_required)
BLOCKRUN = Dialect("blockrun", _blockrun_error, _blockrun_payment_required)


def parse_object(raw: bytes) -> dict[str, Any] | Refusal:
    """The body as a JSON object, or the refusal that says why it is not one."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Refusal(400, "Request body is not valid JSON", code="invalid_request")
    if not isinstance(body, dict):
        return Refusal(400, "Request body must be a JSON object", code="invalid_request")
    return body


def bad(message: str, param: str | None = None) -> Refusal:
    return Refusal(400, message, code="invalid_request", param=param)


def positive_int(body: Mapping[str, Any], key: str) -> int | None:
    """``body[key]`` when it is a positive integer (bools excluded), else None."""
    value = body.get(key)
    if type(value) is int and value >= 1:
        return value
    return None


# ------------------------------------------------------ answers every route shares

REPLAY = Refusal(
    409,
    "Payment already used: this authorization was settled for an earlier request",
    "payment_error",
    "PAYMENT_REPLAY",
)
FAILED_AFTER_SETTLE = Refusal(
    500, "The model failed after the payment was settled", "server_error", "upstream_error"
)
JOB_NOT_FOUND = Refusal(404, "Job not found", code="job_not_found")


def invalid_payment(reason: str | None) -> Refusal:
    return Refusal(
        402, f"Payment verification failed: {reason}", "payment_error", "PAYMENT_INVALID"
    )


def read_payment(request: web.Request) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """The payment header as sent, decoded when it can be, and why not when it cannot."""
    header = request.headers.get("PAYMENT-SIGNATURE") or request.headers.get("X-PAYMENT")
    if header is None:
        return None, None, None
    try:
        return header, decode_header(header), None
    except PaymentDecodeError as exc:
        return header, None, str(exc)
