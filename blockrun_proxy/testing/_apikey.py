"""The fake gateway's API-key mode: BlockRun's prepaid-credit host (``api.blockrun.ai``).

Routes hang at the root (``/v1/...``), not under ``/api``; ``/api/...`` answers
``wrong_host`` as the real host does. Calls authenticate with
``Authorization: Bearer brk_...``: no header or a malformed one is 401, an unknown key
401, a revoked key 403. A paid model's price is drawn from the key's credit; without
enough credit the answer is 402 with no ``PAYMENT-REQUIRED`` (nothing to sign). No
cost is reported on a served call. Any x402 header a client sends is recorded and
ignored, so tests can assert the proxy never sends one here.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from blockrun_proxy.testing._gateway import FakeGateway, _parse_chat_body
from blockrun_proxy.testing._replies import error_response

API_KEY_PREFIX = "brk_"


@dataclass(frozen=True)
class Charge:
    """One call drawn from a key's credit."""

    key: str
    model: str
    amount: int  # atomic USDC units


class ApiKeyFakeGateway(FakeGateway):
    """The API-key host. ``keys`` maps each valid key to its credit in atomic units
    (None: unlimited); ``new_key`` adds one. ``charges`` lists what was drawn."""

    prefix = ""

    def __init__(self, keys: Mapping[str, int | None] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.credit: dict[str, int | None] = dict(keys or {})
        self.revoked: set[str] = set()
        self.charges: list[Charge] = []
        self.app.router.add_route("*", "/api/{tail:.*}", self._wrong_host)

    def new_key(self, credit: int | None = None) -> str:
        """A fresh valid key with ``credit`` atomic units (None: unlimited)."""
        key = f"{API_KEY_PREFIX}test_{secrets.token_hex(16)}"
        self.credit[key] = credit
        return key

    def _check_terms(self, network: str, pay_to: str) -> None:
        return None  # nothing is quoted on this host

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self.record:
            self._record(request, raw, None)
        mb = self.misbehave
        if mb.delay_seconds > 0:
            await asyncio.sleep(mb.delay_seconds)
        if mb.rate_limit > 0:
            mb.rate_limit -= 1
            return error_response(
                429,
                "Rate limit exceeded",
                type_="rate_limit_error",
                code="rate_limit_exceeded",
                headers=self._retry_after(),
            )
        key, refused = self._authenticate(request)
        if refused is not None:
            return refused
        body, invalid = _parse_chat_body(raw)
        if invalid is not None:
            return invalid
        model = self.models.get(body["model"])
        if model is None:
            return error_response(
                404,
                f"The model '{body['model']}' does not exist",
                type_="invalid_request_error",
                code="model_not_found",
                param="model",
            )
        if model.free:
            return await self._serve(request, body, {})
        price = self._price(model, body)
        credit = self.credit[key]
        if credit is not None and credit < price:
            return error_response(
                402,
                "Insufficient credit: top up at https://user.blockrun.ai/dashboard/credits",
                type_="payment_error",
                code="insufficient_credit",
            )
        if mb.fail_paid > 0:
            mb.fail_paid -= 1
            return self._injected_failure()  # refused before drawing any credit
        if credit is not None:
            self.credit[key] = credit - price
        self.charges.append(Charge(key, model.id, price))
        if mb.fail_after_settle > 0:
            mb.fail_after_settle -= 1
            return error_response(
                500,
                "The model failed after the call was billed",
                type_="server_error",
                code="upstream_error",
            )
        return await self._serve(request, body, {})

    def _authenticate(self, request: web.Request) -> tuple[str, web.Response | None]:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.startswith(API_KEY_PREFIX):
            return "", _auth_error(
                401, "Missing or malformed API key (Authorization: Bearer brk_...)"
            )
        if key in self.revoked:
            return "", _auth_error(403, "This API key has been revoked")
        if key not in self.credit:
            return "", _auth_error(401, "Invalid API key")
        return key, None

    async def _wrong_host(self, request: web.Request) -> web.Response:
        return error_response(
            404,
            "api.blockrun.ai serves /v1/... at the root; /api/v1/... is the x402 gateway's path",
            type_="invalid_request_error",
            code="wrong_host",
        )


def _auth_error(status: int, message: str) -> web.Response:
    return error_response(status, message, type_="authentication_error", code="invalid_api_key")
