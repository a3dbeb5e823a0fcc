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


class Unauthorized(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_proxy_token"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class Overloaded(ProxyError):
    """The proxy's own concurrency limit is full; safe to retry (nothing was paid)."""

    status = 429
    type = "rate_limit_error"
    code = "proxy_overloaded"


class ShuttingDown(ProxyError):
    status = 503
    type = "server_error"
    code = "proxy_draining"


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
    and only for a payment signed up front from a learned quote."""

    code = "payment_not_accepted"


# --- the gateway's side --------------------------------------------------------------------


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"
    code = "gateway_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "gateway_timeout"


class PaidCallFailed(UpstreamError):
    """The gateway may have been paid, then failed. Retrying is a NEW paid call.

    Answered with ``x-should-retry: false`` so the openai SDK and LiteLLM do not
    retry it on their own (PROTOCOL.md section 5, rule 5).
    """

    code = "paid_call_failed"

    def __init__(self, message: str, *, code: str | None = None, status: int = 502) -> None:
        super().__init__(message, code=code, headers={"x-should-retry": "false"})
        self.status = status


class GatewayAnswer(ProxyError):
    """An error status the gateway sent, passed to the client as it came (status, body).

    Used where the proxy had to read the body to decide what it means (a refusal
    after a paid send); unread error answers are piped instead.
    """

    def __init__(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str,
        code: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"gateway answered {status}", code=code, headers=headers)
        self.status = status
        self.body = body
        self.content_type = content_type

    def to_json(self) -> bytes:
        return self.body
