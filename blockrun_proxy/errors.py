"""One exception tree for everything the proxy answers with an error.

Each class carries its HTTP status and OpenAI error ``type``/``code``; ``to_json``
is the single place they become the OpenAI-shaped body
``{"error": {"message", "type", "code"}}``. Nothing here ever includes key
material: messages are written by us, never copied from exceptions of libraries
that might format their arguments.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson


class ProxyError(Exception):
    """Base of every error the proxy turns into an HTTP answer."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    content_type: str = "application/json"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def to_json(self) -> bytes:
        return error_body(self.message, self.type, self.code)


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "code": code, "param": param}}
    )


# --- the client's mistakes (4xx, never a payment) -----------------------------------------


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(InvalidRequest):
    """A POST whose body is not declared ``application/json``: what a browser form or a
    ``text/plain`` "simple request" sends cross-site without asking (no CORS preflight)."""

    status = 415
    code = "unsupported_media_type"


class RequestTimeout(InvalidRequest):
    """The request body did not arrive in time: nothing was sent upstream or paid."""

    status = 408
    code = "request_timeout"


class Forbidden(ProxyError):
    """The request comes from somewhere that may not spend the wallet: a web page (its
    ``Origin``, ``Sec-Fetch-Site``) or a host name the proxy does not answer to (DNS
    rebinding). Retrying it the same way gets the same answer."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class Unauthorized(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_proxy_token"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class Overloaded(ProxyError):
    """The proxy's own concurrency limit is full; safe to retry (nothing was paid)."""

    status = 429
    type = "rate_limit_error"
    code = "proxy_overloaded"


class ShuttingDown(ProxyError):
    status = 503
    type = "server_error"
    code = "proxy_draining"


class BudgetStoreUnavailable(ProxyError):
    """The spend budget's store cannot answer (a shared store is down): without it the
    proxy cannot tell whether a payment fits, so it signs nothing. Safe to retry."""

    status = 503
    type = "server_error"
    code = "budget_store_unavailable"


class LedgerUnavailable(ProxyError):
    """The spend ledger (Redis) could not be read in time: /v1/spend cannot answer."""

    status = 503
    type = "server_error"
    code = "spend_ledger_unavailable"


# --- payment refusals: the proxy declined to sign (402, nothing paid) -----------------------


class PaymentRefused(ProxyError):
    """The payer policy refused to sign. ``code`` names the reason for metrics and clients."""

    status = 402
    type = "payment_error"
    code = "payment_refused"


class WalletNotConfigured(PaymentRefused):
    code = "wallet_not_configured"


class PaymentNotAccepted(PaymentRefused):
    """The gateway refused a signed payment and said it was NOT used (PROTOCOL.md 3):
    nothing was charged. The only refusal after which a fresh signature is allowed,
    and only for a payment signed up front from a learned quote.

    ``reason`` is the gateway's own (x402/reasons.py: short, printable); the ``code`` is
    its known x402 reason code when it names one (``invalid_exact_evm_insufficient_balance``),
    else ``payment_not_accepted``.
    """

    code = "payment_not_accepted"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        self.reason = reason


class ApiKeyNoCredit(ProxyError):
    """The API host answered 402 to a call made with BLOCKRUN_API_KEY: the account has
    no credit for it. On this rail a 402 is a refusal, never a challenge: nothing is
    signed and nothing was charged."""

    status = 402
    type = "payment_error"
    code = "api_key_no_credit"


class ApiKeyRejected(ProxyError):
    """The API host refused the proxy's BLOCKRUN_API_KEY (401/403). The client's own
    credentials are not in question, so this is not a 401 to the client: the proxy is
    misconfigured, and retrying will not help until the operator fixes the key."""

    status = 502
    type = "upstream_error"
    code = "api_key_rejected"

    def __init__(self, message: str) -> None:
        # Clients retry a 502 on their own; nothing was charged, but nothing will change.
        super().__init__(message, headers={"x-should-retry": "false"})


# --- the gateway's side --------------------------------------------------------------------


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"
    code = "gateway_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "gateway_timeout"


class SolanaRpcUnreachable(ProxyError):
    """No fresh Solana blockhash: the RPC (``--solana-rpc-url``) has not answered lately.

    Raised before anything is signed, so the call was not paid; 503 (the proxy cannot
    pay on Solana right now) rather than 502, which would blame the gateway."""

    status = 503
    type = "server_error"
    code = "solana_rpc_unreachable"


# The refusals of an upto payment the Permit2 allowance cannot take (allowance.py); here,
# with the other codes, so the payer reads them without importing allowance.py at start.
ALLOWANCE_REQUIRED = "permit2_allowance_required"
ALLOWANCE_BUSY = "permit2_allowance_busy"


class AllowanceUnknown(ProxyError):
    """The wallet's Permit2 allowance could not be read from ``--rpc-url`` for an upto
    payment (``--scheme upto``; ``auto`` pays exact instead). Raised before anything is
    signed; 503 like the other chain reads the proxy cannot do right now."""

    status = 503
    type = "server_error"
    code = "permit2_allowance_unknown"


# Every error answered after a payment was sent uses this status. Clients retry 408, 409,
# 429 and 5xx on their own (the openai SDK and so langchain; LiteLLM's ``should_retry`` and so
# its Router and the LiteLLM Proxy), and a retry there is a NEW paid call (PROTOCOL.md
# section 5, rule 5). ``x-should-retry: false`` alone is not enough: the Router ignores it
# and the LiteLLM Proxy renames it on the way to its own clients. A 4xx none of them retries
# is: 424 Failed Dependency, "the gateway failed", which is what happened. (LiteLLM's
# ``num_retries`` on a plain ``completion`` retries every error whatever its status; no
# answer can stop that, so the README says to leave it unset.)
PAID_FAILURE_STATUS = 424
# What the gateway did (its status, or "timeout" / "dropped" / "unreachable"), for operators
# and clients, since the status line no longer says it.
UPSTREAM_STATUS_HEADER = "x-blockrun-upstream-status"


class PaidCallFailed(UpstreamError):
    """The call failed after its payment was sent: it may have been charged, and
    retrying it is a NEW paid call.

    Answered ``424`` with ``x-should-retry: false`` so that no common client retries
    it on its own, and ``x-blockrun-upstream-status`` saying what the gateway did.
    An ``UpstreamError``: metrics and logs count it as the gateway's failure.
    """

    status = PAID_FAILURE_STATUS
    code = "paid_call_failed"

    def __init__(
        self, message: str, *, upstream_status: int | str, code: str | None = None
    ) -> None:
        super().__init__(
            message,
            code=code,
            headers={"x-should-retry": "false", UPSTREAM_STATUS_HEADER: str(upstream_status)},
        )
        self.upstream_status = str(upstream_status)


class OptimisticPaymentRefused(PaidCallFailed):
    """The gateway refused, after it was sent, a payment it may still settle: a Solana
    transaction stays valid until its blockhash expires (about a minute), and Solana
    gateways settle in parallel with the work (PROTOCOL.md sections 3 and 7). So the
    refusal is not the "not used" it is on EVM: the call is answered ``424`` like every
    failure after a payment, nothing is signed again, and the budget keeps counting it.
    The gateway's reason and its known x402 code are kept, as on EVM."""

    def __init__(self, refusal: PaymentNotAccepted, *, upstream_status: int) -> None:
        said = refusal.reason or "no reason given"
        super().__init__(
            f"the gateway refused the Solana payment after it was sent ({said}); the signed "
            "transaction stays valid for about a minute and may still be settled, so it may "
            "have been charged. Nothing more was signed. Not retried.",
            code=refusal.code,
            upstream_status=upstream_status,
        )
        self.reason = refusal.reason
        self.headers.update(refusal.headers)  # the gateway's failed PAYMENT-RESPONSE


class GatewayAnswer(PaidCallFailed):
    """The gateway's own error answer to a paid send (a 5xx after the replays, 409
    ``PAYMENT_REPLAY``, ...), answered ``424`` like every failure after a payment.

    The gateway's body goes to the client as it came when it is an OpenAI-shaped
    error (the client sees the gateway's own message and code); anything else is
    wrapped into one that says what happened. A JSON object the gateway sent is kept
    under ``error.gateway``: BlockRun's "already served" answer names there where the
    paid-for result can be fetched (``poll_url``, ``job_id``).
    """

    def __init__(
        self,
        upstream_status: int,
        body: bytes,
        *,
        code: str,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
    ) -> None:
        said = f": {reason}" if reason else ""
        super().__init__(
            message
            or f"the gateway failed after the payment was sent (status {upstream_status}{said}); "
            "it may have been charged. Not retried.",
            code=code,
            upstream_status=upstream_status,
        )
        self.reason = reason
        # The gateway's failed PAYMENT-RESPONSE, passed on as it came: the client's own
        # x402 tooling can read the settlement's errorReason from it.
        self.headers.update(headers or {})
        self.body = body if is_openai_error(body) else self._wrapped(body)

    def _wrapped(self, gateway_body: bytes) -> bytes:
        error: dict[str, object] = {
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": None,
        }
        decoded = json_object(gateway_body)
        if decoded is not None:
            error["gateway"] = decoded
        return orjson.dumps({"error": error})

    def to_json(self) -> bytes:
        return self.body


def is_openai_error(body: bytes) -> bool:
    """Whether ``body`` is an OpenAI-shaped error, ``{"error": {"message": str, ...}}``:
    what OpenAI clients parse into their exception's message and code."""
    data = json_object(body)
    error = data.get("error") if data is not None else None
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def json_object(body: bytes) -> dict[str, object] | None:
    """``body`` decoded when it is a JSON object, else None: how an answer whose shape is
    not trusted (an error body from the gateway or the API host, a job's 202) is read."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
