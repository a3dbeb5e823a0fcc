"""The fake gateway's API-key mode: BlockRun's prepaid-credit host (``api.blockrun.ai``).

Routes hang at the root (``/v1/...``), not under ``/api``; ``/api/...`` answers
``wrong_host`` as the real host does. Every paid route of the x402 fake is served,
with the same guards, prices and answers, but paid differently: calls authenticate
with ``Authorization: Bearer brk_...`` (no header or a malformed one is 401, an unknown
key 401, a revoked key 403) and a paid call's price is drawn from the key's credit;
without enough credit the answer is 402 with no ``PAYMENT-REQUIRED`` (nothing to
sign). No cost is reported on a served call. Any x402 header a client sends is
recorded and ignored, so tests can assert the proxy never sends one here.

Slow jobs reserve their price when accepted and are charged on the poll that sees
them completed (a failed job gives the reservation back), as blockrun-llm's
``jobs.py`` describes the account rail; polls need the submitting key. Their
``poll_url`` starts with ``/api``, as BlockRun mints it, so a client must drop that
prefix on this host (docs/PROTOCOL.md section 8).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from blockrun_proxy.testing._calls import (
    JOB_NOT_FOUND,
    OPENAI,
    Incoming,
    Refusal,
    Route,
    Settlement,
)
from blockrun_proxy.testing._gateway import FakeGateway
from blockrun_proxy.testing._jobs import Job, Jobs
from blockrun_proxy.testing._payments import Verdict

API_KEY_PREFIX = "brk_"

NO_CREDIT = Refusal(
    402,
    "Insufficient credit: top up at https://user.blockrun.ai/dashboard/credits",
    "payment_error",
    "insufficient_credit",
)
BILLED_THEN_FAILED = Refusal(
    500, "The model failed after the call was billed", "server_error", "upstream_error"
)


@dataclass(frozen=True)
class Charge:
    """One call drawn from a key's credit."""

    key: str
    model: str  # the model called, or the route's name when it has none (search)
    amount: int  # atomic USDC units


class CreditJobs(Jobs):
    """Jobs on the API-key host: polled with the submitting key, charged on completion."""

    _gw: ApiKeyFakeGateway

    def __init__(self, gateway: FakeGateway, prefix: str) -> None:
        super().__init__(gateway, prefix)
        self._released: set[str] = set()  # failed jobs whose reservation went back

    def _admit(
        self,
        job: Job,
        request: web.Request,
        header: str | None,
        payment: dict[str, Any] | None,
        decode_error: str | None,
    ) -> Verdict | web.StreamResponse | None:
        if job.payer is None:
            return None
        key = self._gw.authenticate(request)
        if isinstance(key, Refusal):
            return job.route.dialect.refuse(key)
        if key != job.payer:
            # Another account's job does not exist, as far as this key can tell.
            return job.route.dialect.refuse(JOB_NOT_FOUND)
        return None

    def _charge(
        self, job: Job, payment: dict[str, Any] | None, verdict: Verdict | None
    ) -> Settlement | None:
        assert job.payer is not None
        self._gw.charges.append(Charge(job.payer, job.plan.model, job.call.price))
        return None  # nothing settles on chain: no receipt, no headers

    def _release(self, job: Job) -> None:
        if job.payer is None or job.id in self._released:
            return
        self._released.add(job.id)
        credit = self._gw.credit.get(job.payer)
        if credit is not None:
            self._gw.credit[job.payer] = credit + job.call.price


class ApiKeyFakeGateway(FakeGateway):
    """The API-key host. ``keys`` maps each valid key to its credit in atomic units
    (None: unlimited); ``new_key`` adds one. ``charges`` lists what was drawn."""

    prefix = ""
    jobs_type = CreditJobs

    def __init__(self, keys: Mapping[str, int | None] | None = None, **options: Any) -> None:
        self.credit: dict[str, int | None] = dict(keys or {})
        self.revoked: set[str] = set()
        self.charges: list[Charge] = []
        super().__init__(**options)
        self.app.router.add_route("*", "/api/{tail:.*}", self._wrong_host)

    def new_key(self, credit: int | None = None) -> str:
        """A fresh valid key with ``credit`` atomic units (None: unlimited)."""
        key = f"{API_KEY_PREFIX}test_{secrets.token_hex(16)}"
        self.credit[key] = credit
        return key

    def _check_terms(self, network: str, pay_to: str) -> None:
        return None  # nothing is quoted on this host

    async def _handle(self, route: Route, request: web.Request) -> web.StreamResponse:
        """The paid path of a host that bills a key instead of asking for a payment."""
        raw = await request.read()
        if self.record:
            self.record_request(request, raw, None)
        dialect = route.dialect
        held = await self._misbehave_first(dialect, paid="Authorization" in request.headers)
        if held is not None:
            return held
        key = self.authenticate(request)
        if isinstance(key, Refusal):
            return dialect.refuse(key)
        prepared = route.prepare(Incoming(raw, request.match_info, request.query))
        if isinstance(prepared, Refusal):
            return dialect.refuse(prepared)
        call = prepared
        if call.free:
            return await self.serve_free(request, route, call)
        credit = self.credit[key]
        if credit is not None and credit < call.price:
            return dialect.refuse(NO_CREDIT)
        mb = self.misbehave
        if mb.fail_paid > 0:
            mb.fail_paid -= 1
            return self._injected_failure(dialect)  # refused before drawing any credit
        if credit is not None:
            self.credit[key] = credit - call.price
        if call.job is not None:
            return self.jobs.submit(request, route, call, payer=key)  # reserved, not charged
        self.charges.append(Charge(key, call.model or route.name, call.price))
        if mb.fail_after_settle > 0:
            mb.fail_after_settle -= 1
            return dialect.refuse(BILLED_THEN_FAILED)
        return await call.inline()(request, None)

    def authenticate(self, request: web.Request) -> str | Refusal:
        """The request's valid key, or the 401/403 that refuses it."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.startswith(API_KEY_PREFIX):
            return _auth_error(401, "Missing or malformed API key (Authorization: Bearer brk_...)")
        if key in self.revoked:
            return _auth_error(403, "This API key has been revoked")
        if key not in self.credit:
            return _auth_error(401, "Invalid API key")
        return key

    async def _wrong_host(self, request: web.Request) -> web.Response:
        message = (
            "api.blockrun.ai serves /v1/... at the root; /api/v1/... is the x402 gateway's path"
        )
        return OPENAI.refuse(Refusal(404, message, code="wrong_host"))


def _auth_error(status: int, message: str) -> Refusal:
    return Refusal(status, message, "authentication_error", "invalid_api_key")
