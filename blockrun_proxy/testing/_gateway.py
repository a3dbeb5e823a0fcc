"""``FakeGateway``: an aiohttp app that plays the BlockRun x402 gateway on loopback.

This module is the gateway's one payment path (docs/PROTOCOL.md sections 3 and 9):
record, misbehave, guard, price, challenge, verify, settle, serve. The routes
(``_routes_*.py``) only say how a request is guarded and priced and what the answer
looks like; slow jobs settle later, when a poll sees them completed (``_jobs.py``).
The other rails are subclasses that override the payment hooks (see ``FakeGateway``),
so every route is paid for the same way on every rail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import orjson
from aiohttp import web
from multidict import CIMultiDict

from blockrun_proxy.testing._calls import (
    FAILED_AFTER_SETTLE,
    REPLAY,
    Call,
    Dialect,
    Incoming,
    Refusal,
    Route,
    Settlement,
    invalid_payment,
    price_object,
    read_payment,
)
from blockrun_proxy.testing._catalogue import DEFAULT_MEDIA, MediaSpec
from blockrun_proxy.testing._jobs import JOB_KINDS, Jobs
from blockrun_proxy.testing._misbehavior import Misbehavior
from blockrun_proxy.testing._models import (
    DEFAULT_MODELS,
    ModelSpec,
    PricingFn,
    default_price,
    usd_string,
)
from blockrun_proxy.testing._networks import NETWORKS, is_address
from blockrun_proxy.testing._payments import (
    Outcome,
    Quote,
    Verdict,
    check_payment,
    encode_header,
)
from blockrun_proxy.testing._records import (
    PaymentRecord,
    RecordedRequest,
    SettledPayment,
    payment_record,
)
from blockrun_proxy.testing._replies import ECHO_LIMIT, json_response
from blockrun_proxy.testing._routes_anthropic import anthropic_routes
from blockrun_proxy.testing._routes_chat import chat_routes
from blockrun_proxy.testing._routes_gemini import gemini_routes
from blockrun_proxy.testing._routes_media import hosted_media, media_routes
from blockrun_proxy.testing._routes_search import search_routes
from blockrun_proxy.testing._serving import serve
from blockrun_proxy.testing._upto import (
    UptoMode,
    UptoOutcome,
    declared_extensions,
    is_upto_payment,
    settle_upto,
    upto_requirement,
    verify_upto,
)
from blockrun_proxy.testing._verify import VERIFY_MODES, VerifyMode

API_PREFIX = "/api"
DEFAULT_NETWORK = "eip155:84532"
# A recognisable, keyless address: nobody can sign for it, nothing is lost by paying it.
DEFAULT_PAY_TO = "0x000000000000000000000000000000000000dEaD"
MAX_TIMEOUT_SECONDS = 300
MAX_BODY_BYTES = 32 * 1024 * 1024
CHAT_PATH = "/v1/chat/completions"

SpeechFormat = Literal["json", "audio"]


class FakeGateway:
    """The BlockRun gateway's x402 behaviour (PROTOCOL.md section 3), in-process.

    Create it, then either ``await start()`` for a real loopback server or hand
    ``gw.app`` to pytest-aiohttp. Flip ``gw.misbehave`` between calls and read
    ``requests`` / ``payments`` / ``settled`` / ``jobs`` to see what the proxy did.

    The other rails subclass it and override these hooks, nothing else of the path:

    - ``prefix``: the path every route hangs under ("/api"; "" on the API-key host).
    - ``_check_terms(network, pay_to)``: which terms the constructor accepts.
    - ``quote(price)``: the requirement a 402 offers (built with ``_shape_quote``).
    - ``verify_payment(payment, quote)``: the verdict on a decoded payment.
    - ``settle(verdict, quote)``: settle an accepted payment, answer its ``Settlement``.
    - ``describe_payment(payment, ...)``: the ``PaymentRecord`` kept in ``payments``
      (its ``payer`` is also how a job poll's wallet is told).
    - ``_handle(route, request)``: the whole payment step, for a host that is not x402
      (the API-key host), with ``_misbehave_first`` and ``serve_free`` to share.
    - ``jobs_type``: the job table, for a rail that charges jobs differently.

    ``SolanaFakeGateway`` overrides ``_check_terms``, ``quote``, ``verify_payment``,
    ``settle`` and ``describe_payment``; ``ApiKeyFakeGateway`` overrides ``prefix``,
    ``_check_terms``, ``_handle`` and ``jobs_type``.
    """

    prefix = API_PREFIX
    jobs_type: type[Jobs] = Jobs

    def __init__(
        self,
        network: str = DEFAULT_NETWORK,
        pay_to: str = DEFAULT_PAY_TO,
        models: Iterable[ModelSpec] = DEFAULT_MODELS,
        pricing: PricingFn | None = None,
        verify: VerifyMode = "eth_account",
        stream_events: int = 20,
        event_interval: float = 0.0,
        event_size: int | None = None,
        settle_amount_in_response: bool = True,
        *,
        media: Iterable[MediaSpec] = DEFAULT_MEDIA,
        job_polls: int = 2,
        count_tokens_fee: int = 0,
        speech_format: SpeechFormat = "json",
        record: bool = True,
        publish_prices: bool = True,
        clock: Callable[[], float] = time.time,
        upto: UptoMode | None = None,
        echo_limit: int = ECHO_LIMIT,
    ) -> None:
        self._check_terms(network, pay_to)
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
        if speech_format not in ("json", "audio"):
            raise ValueError(f"speech_format must be 'json' or 'audio', not {speech_format!r}")
        if upto is not None and upto.ledger.network != network:
            raise ValueError(f"the upto ledger is on {upto.ledger.network}, not {network}")
        self.network = network
        self.pay_to = pay_to
        # Upto mode (testing/_upto.py): None keeps the gateway exact-only.
        self.upto = upto
        self.models: dict[str, ModelSpec] = {m.id: m for m in models}
        self.media: dict[str, MediaSpec] = {m.id: m for m in media}
        self.pricing = pricing
        self.verify: VerifyMode = verify
        self.stream_events = stream_events
        # Characters of the user's message a chat answer echoes: how long answers are
        # (the upto scheme settles what they cost).
        self.echo_limit = echo_limit
        self.event_interval = event_interval
        self.event_size = event_size
        self.settle_amount_in_response = settle_amount_in_response
        # False: /v1/models lists the models without their prices (a gateway whose
        # catalogue says nothing the quote model can use).
        self.publish_prices = publish_prices
        self.job_polls = job_polls  # polls a slow job answers 202 before it completes
        self.count_tokens_fee = count_tokens_fee  # 0: count_tokens is free, as Anthropic's
        self.speech_format: SpeechFormat = speech_format
        # Benchmarks turn recording off so a long run does not grow memory; the
        # settlement ledger is always kept because replay detection needs it.
        self.record = record
        self.misbehave = Misbehavior()
        self.requests: list[RecordedRequest] = []
        # The exact body bytes of every 2xx answer, for byte-for-byte relay tests.
        self.sent_bodies: list[bytes] = []
        self.payments: list[PaymentRecord] = []
        self.settled: list[SettledPayment] = []
        # Refused payments a lying gateway kept (Misbehavior.keep_refused), for settle_kept.
        self.kept: list[tuple[Verdict, Quote]] = []
        self.models_calls = 0
        self.base_url: str | None = None
        self._clock = clock
        self._settled_nonces: set[tuple[str, str]] = set()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        # Poll URLs start with /api on every host, as BlockRun mints them (PROTOCOL.md 8).
        self.jobs = self.jobs_type(self, API_PREFIX)
        self.routes: dict[str, Route] = {}
        self._patterns: list[tuple[re.Pattern[str], Route]] = []
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        for route in (
            *chat_routes(self),
            *anthropic_routes(self),
            *gemini_routes(self),
            *media_routes(self),
            *search_routes(self),
        ):
            self._add_route(route)
        self.app.router.add_get(f"{self.prefix}/v1/models", self._list_models)
        for kind in JOB_KINDS:
            self.app.router.add_get(
                f"{self.prefix}/v1/{kind}/generations/{{job_id}}", partial(self.jobs.poll, kind)
            )
        # Generated files are links (absolute URLs), hosted under /api whatever the host.
        self.app.router.add_get(
            f"{API_PREFIX}/media/{{kind}}/{{name}}", partial(hosted_media, self)
        )

    def _add_route(self, route: Route) -> None:
        self.routes[route.name] = route
        self._patterns.append((_template_pattern(route.template), route))
        self.app.router.add_route(
            route.method, self.prefix + route.template, partial(self._handle, route)
        )

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded chat completion calls. ``requests`` also holds catalogue reads
        (``GET /v1/models``), which the proxy makes on its own to learn prices."""
        chat = f"{API_PREFIX}/v1/chat/completions"
        return [r for r in self.requests if r.path == chat]

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port); returns the base URL (with prefix)."""
        # handler_cancellation: a client hanging up mid-stream stops the handler at
        # once instead of at its next write, as the proxy does too.
        self._runner, origin = await serve(self.app, host, port, handler_cancellation=True)
        self.base_url = f"{origin}{self.prefix}"
        return self.base_url

    @property
    def chat_url(self) -> str:
        """The chat completions URL (once started), e.g. for another fake's ``redirect_to``."""
        if self.base_url is None:
            raise RuntimeError("the fake gateway is not started")
        return f"{self.base_url}{CHAT_PATH}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGateway:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_terms(self, network: str, pay_to: str) -> None:
        """ValueError for a network or payTo this gateway cannot quote."""
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
        if not is_address(pay_to):
            raise ValueError(f"pay_to {pay_to!r} is not a 0x address")

    # ------------------------------------------------------------------- pricing

    def price_for(self, body: Mapping[str, Any], path: str = CHAT_PATH) -> int:
        """Atomic USDC the gateway would quote for this body on ``path`` now (0 when free).

        ``path`` is relative to the API prefix and may carry a query, e.g.
        ``"/v1beta/models/gemini-2.5-flash:generateContent"``. Includes
        ``misbehave.price_multiplier``: it is what the 402 would say.
        """
        parts = urlsplit(path)
        for pattern, route in self._patterns:
            match = pattern.fullmatch(parts.path)
            if match is None or route.method != "POST":
                continue
            prepared = route.prepare(
                Incoming(orjson.dumps(body), match.groupdict(), dict(parse_qsl(parts.query)))
            )
            if isinstance(prepared, Refusal):
                raise ValueError(prepared.message)
            return 0 if prepared.free else prepared.price
        raise ValueError(f"no paid route serves {path!r}")

    def model_for(self, name: object) -> ModelSpec | None:
        """The catalogue model called ``name``, by id or by one of its aliases."""
        if not isinstance(name, str):
            return None
        model = self.models.get(name)
        if model is not None:
            return model
        return next((m for m in self.models.values() if name in m.aliases), None)

    def model_price(self, model: ModelSpec, body: Mapping[str, Any]) -> int:
        """A chat-shaped body's price on ``model`` (0 when free), multiplier included."""
        if model.free:
            return 0
        return self.scaled(
            self.pricing(model, body) if self.pricing else default_price(model, body)
        )

    def scaled(self, base: int) -> int:
        """``base`` after ``misbehave.price_multiplier``: what a 402 would ask."""
        multiplier = self.misbehave.price_multiplier
        if multiplier == 1.0:
            return base
        # Through str so 1.1 means 11/10, not the binary float just above it.
        return math.ceil(base * Fraction(str(multiplier)))

    def quote(self, price: int) -> Quote:
        """The requirement a 402 offers for ``price``: USDC on Base (EIP-3009 ``exact``)."""
        network = self.misbehave.network or self.network
        table = NETWORKS.get(network, NETWORKS[self.network])
        return self._shape_quote(
            price,
            network,
            table.usdc,
            domain_name=table.domain_name,
            domain_version=table.domain_version,
        )

    def _shape_quote(
        self,
        price: int,
        network: str,
        asset: str,
        *,
        domain_name: str = "",
        domain_version: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> Quote:
        """A quote on ``network`` for ``asset``, after the ``misbehave`` quote knobs."""
        mb = self.misbehave
        if mb.extra:
            extra = {**(extra or {"name": domain_name, "version": domain_version}), **mb.extra}
        return Quote(
            scheme=mb.scheme or "exact",
            network=network,
            amount=price,
            asset=mb.asset or asset,
            pay_to=mb.pay_to or self.pay_to,
            max_timeout_seconds=(
                MAX_TIMEOUT_SECONDS if mb.max_timeout_seconds is None else mb.max_timeout_seconds
            ),
            domain_name=domain_name,
            domain_version=domain_version,
            extra=extra,
        )

    # ------------------------------------------------------------------ handlers

    async def _list_models(self, request: web.Request) -> web.Response:
        self.models_calls += 1
        if self.record:
            self.record_request(request, b"", None)
        listing = [m.listing() for m in self.models.values()]
        if not self.publish_prices:
            listing = [{k: v for k, v in m.items() if k != "pricing"} for m in listing]
        return json_response(200, {"object": "list", "data": listing})

    async def _handle(self, route: Route, request: web.Request) -> web.StreamResponse:
        """The one paid path every route shares, in the order the real gateway works."""
        raw = await request.read()
        header, payment, decode_error = read_payment(request)
        if self.record:
            self.record_request(request, raw, payment)

        dialect = route.dialect
        held = await self._misbehave_first(dialect, paid=header is not None)
        if held is not None:
            return held
        prepared = route.prepare(Incoming(raw, request.match_info, request.query))
        if isinstance(prepared, Refusal):
            return dialect.refuse(prepared)
        call = prepared
        mb = self.misbehave
        if header is None and mb.fail_unpaid > 0:
            mb.fail_unpaid -= 1
            return self._injected_failure(dialect)
        if call.free:
            if header is not None:
                self.note_payment(payment, accepted=False, reason="free model: payment not used")
            return await self.serve_free(request, route, call)
        if header is None:
            return self.challenge(dialect, request, call)
        return await self._paid(route, request, call, payment, decode_error)

    async def _misbehave_first(self, dialect: Dialect, *, paid: bool) -> web.Response | None:
        """What the misbehaving gateway answers before looking at the request, if anything:
        a redirect, a delay (then None), a 429."""
        mb = self.misbehave
        if mb.redirect_to is not None and (mb.redirect_paid if paid else mb.redirect_unpaid):
            return web.Response(status=mb.redirect_status, headers={"Location": mb.redirect_to})
        if mb.delay_seconds > 0:
            await asyncio.sleep(mb.delay_seconds)
        if mb.rate_limit > 0:
            mb.rate_limit -= 1
            refusal = Refusal(429, "Rate limit exceeded", "rate_limit_error", "rate_limit_exceeded")
            return dialect.refuse(refusal, self._retry_after())
        return None

    async def serve_free(
        self, request: web.Request, route: Route, call: Call
    ) -> web.StreamResponse:
        """Answer a call nobody pays for: serve it, or submit its job with no owner."""
        if call.job is not None:
            return self.jobs.submit(request, route, call, payer=None)
        return await call.inline()(request, None)

    async def _paid(
        self,
        route: Route,
        request: web.Request,
        call: Call,
        payment: dict[str, Any] | None,
        decode_error: str | None,
    ) -> web.StreamResponse:
        dialect = route.dialect
        mb = self.misbehave
        if mb.fail_paid > 0:
            mb.fail_paid -= 1
            self.note_payment(payment, accepted=False, reason="injected failure before settling")
            return self._injected_failure(dialect)
        if mb.replay_on_paid:
            self.note_payment(payment, accepted=False, reason="injected PAYMENT_REPLAY")
            return dialect.refuse(REPLAY)
        if self.upto is not None and payment is not None and is_upto_payment(payment):
            return await self._paid_upto(route, request, call, payment, self.upto)

        quote = self.quote(call.price)
        if payment is None:
            verdict = Verdict(Outcome.INVALID, decode_error)
        else:
            verdict = self.verify_payment(payment, quote)
        if verdict.outcome is Outcome.ACCEPTED and mb.refuse_paid > 0:
            mb.refuse_paid -= 1  # a good payment, refused as not used all the same
            verdict = dataclasses.replace(
                verdict, outcome=Outcome.INVALID, reason="injected refusal"
            )
        if call.job is not None and verdict.outcome is Outcome.ACCEPTED:
            # One authorization submits one job: the nonce is claimed at the POST even
            # though it settles only when a poll sees the job completed.
            verdict = self.jobs.claim(verdict)
        accepted = verdict.outcome is Outcome.ACCEPTED
        reason = verdict.reason
        if accepted and call.job is not None:
            reason = "verified: settles when a poll sees the job completed"
        self.note_payment(payment, accepted=accepted, reason=reason)
        if verdict.outcome is Outcome.REPLAY:
            return dialect.refuse(REPLAY)
        if verdict.outcome is Outcome.INVALID:
            if mb.keep_refused and verdict.settleable:
                self.kept.append((verdict, quote))
            if mb.fresh_challenge_on_invalid:
                return self.challenge(dialect, request, call)
            return dialect.refuse(invalid_payment(verdict.reason))
        if call.job is not None:
            return self.jobs.submit(request, route, call, payer=verdict.payer)

        settlement = self.settle(verdict, quote)
        if mb.fail_after_settle > 0:
            mb.fail_after_settle -= 1
            return dialect.refuse(FAILED_AFTER_SETTLE)
        return await call.inline()(request, settlement)

    async def _paid_upto(
        self,
        route: Route,
        request: web.Request,
        call: Call,
        payment: dict[str, Any],
        mode: UptoMode,
    ) -> web.StreamResponse:
        """Verify an upto ceiling, settle what the answer actually costs, then serve it."""
        dialect = route.dialect
        if call.job is not None:
            # Not offered for jobs (nothing says BlockRun does): see ``challenge``.
            reason = "upto is not offered for a job"
            self.note_payment(payment, accepted=False, reason=reason)
            return dialect.refuse(invalid_payment(reason))
        requirement = upto_requirement(self.quote(call.price).to_json(), mode)
        verdict = await asyncio.to_thread(verify_upto, mode, payment, requirement)
        if verdict.outcome is UptoOutcome.ACCEPTED and self.misbehave.refuse_paid > 0:
            self.misbehave.refuse_paid -= 1  # a good payment, refused as not used all the same
            verdict = dataclasses.replace(
                verdict, outcome=UptoOutcome.INVALID, reason="injected refusal"
            )
        self.note_payment(
            payment, accepted=verdict.outcome is UptoOutcome.ACCEPTED, reason=verdict.reason
        )
        if verdict.outcome is UptoOutcome.REPLAY:
            return dialect.refuse(REPLAY)
        if verdict.outcome is UptoOutcome.INVALID:
            if self.misbehave.fresh_challenge_on_invalid:
                return self.challenge(dialect, request, call)
            return dialect.refuse(invalid_payment(verdict.reason))
        cost = call.actual_cost() if call.actual_cost is not None else call.price
        actual = min(cost, verdict.ceiling)
        receipt = await asyncio.to_thread(settle_upto, mode, payment, requirement, actual)
        if not receipt["success"]:
            refusal = Refusal(
                402,
                f"Settlement failed: {receipt.get('errorReason')}",
                "payment_error",
                "PAYMENT_INVALID",
            )
            return dialect.refuse(refusal)
        self.settled.append(
            SettledPayment(
                actual, str(verdict.nonce), receipt["transaction"], verdict.payer, self.network
            )
        )
        if mode.reported_amount is not None:
            receipt["amount"] = str(mode.reported_amount)
        elif not self.settle_amount_in_response:
            del receipt["amount"]
        if self.misbehave.fail_after_settle > 0:
            self.misbehave.fail_after_settle -= 1
            return dialect.refuse(FAILED_AFTER_SETTLE)
        return await call.inline()(request, Settlement.of(receipt))

    # ------------------------------------------------------------------- answers

    def challenge(self, dialect: Dialect, request: web.Request, call: Call) -> web.Response:
        quote = self.quote(call.price)
        accepts = [quote.to_json()]
        if self.upto is not None and call.job is None:
            # BlockRun lists exact first, then upto at the same price as its ceiling.
            upto = upto_requirement(accepts[0], self.upto)
            accepts = [upto] if self.upto.only_upto else [*accepts, upto]
        required: dict[str, Any] = {
            "x402Version": 2,
            "error": "Payment required",
            "resource": {
                "url": self.misbehave.resource_url or str(request.url),
                "description": call.description,
                "mimeType": "application/json",
            },
            "accepts": accepts * self.misbehave.accepts_copies,
        }
        if self.misbehave.required_padding:
            required["padding"] = "x" * self.misbehave.required_padding
        extensions = declared_extensions(self.upto) if self.upto is not None else None
        if extensions:
            required["extensions"] = extensions
        body = dialect.payment_required(
            required, price_object(usd_string(call.price), call.price_details)
        )
        return json_response(402, body, {"PAYMENT-REQUIRED": encode_header(required)})

    def verify_payment(self, payment: dict[str, Any], quote: Quote) -> Verdict:
        """Judge a decoded payment against the quote for this request (EIP-3009 on Base)."""
        return check_payment(
            payment,
            quote,
            now=int(self._clock()),
            verify=self.verify,
            settled_nonces=self._settled_nonces,
        )

    def settle(self, verdict: Verdict, quote: Quote) -> Settlement:
        """Settle an accepted payment once; ``settled`` and the nonce ledger remember it."""
        auth = verdict.auth
        assert auth is not None
        self._settled_nonces.add(verdict.nonce_key)
        # Deterministic per (payer, nonce), which is unique once settled.
        seed = b"fake-settlement" + auth.from_.lower().encode() + auth.nonce
        transaction = "0x" + hashlib.sha256(seed).hexdigest()
        nonce = "0x" + auth.nonce.hex()
        self.settled.append(
            SettledPayment(auth.value, nonce, transaction, verdict.payer, quote.network)
        )
        return self._settlement(transaction, quote.network, verdict.payer, auth.value)

    def _settlement(self, transaction: str, network: str, payer: str, amount: int) -> Settlement:
        """The receipt of a settled payment, its amount as ``misbehave`` and the options say."""
        receipt: dict[str, Any] = {
            "success": True,
            "transaction": transaction,
            "network": network,
            "payer": payer,
        }
        if self.misbehave.settlement_claim is not None:
            receipt["amount"] = self.misbehave.settlement_claim
        elif self.settle_amount_in_response:
            receipt["amount"] = str(amount)
        settlement = Settlement.of(receipt)
        report = self.misbehave.settlement_report
        if report is None:
            return settlement
        # Only PAYMENT-RESPONSE lies: X-Payment-Receipt keeps the real transaction.
        lie = encode_header({**receipt, **report})
        return Settlement(receipt, {**settlement.headers, "PAYMENT-RESPONSE": lie})

    def settle_kept(self) -> list[SettledPayment]:
        """What a lying gateway does with the payments it refused and kept: settle every
        one the chain would still take. Like USDC, it refuses a nonce already used by the
        same payer, so two authorizations sharing a nonce settle once at most."""
        settled = []
        kept, self.kept = self.kept, []
        for verdict, quote in kept:
            if verdict.nonce_key in self._settled_nonces:
                continue
            self.settle(verdict, quote)
            settled.append(self.settled[-1])
        return settled

    def reply(
        self, status: int, payload: object, settlement: Settlement | None = None
    ) -> web.Response:
        """A JSON answer, its bytes kept in ``sent_bodies`` when it is a success."""
        response = json_response(status, payload, settlement.headers if settlement else None)
        if self.record and 200 <= status < 300 and isinstance(response.body, bytes):
            self.sent_bodies.append(response.body)
        return response

    async def stream(
        self,
        request: web.Request,
        frames: Iterable[bytes],
        *,
        content_type: str,
        settlement: Settlement | None,
        interval: float | None = None,
    ) -> web.StreamResponse:
        """Write ``frames`` one by one (SSE events, audio chunks), as a slow model would.

        ``misbehave.reset_after_events`` drops the connection after that many frames;
        ``event_interval`` (or ``interval``) pauses between them. The frames sent are
        kept, joined, in ``sent_bodies``.
        """
        headers = {"Cache-Control": "no-cache", **(settlement.headers if settlement else {})}
        resp = web.StreamResponse(headers=headers)
        resp.content_type = content_type
        await resp.prepare(request)
        reset_after = self.misbehave.reset_after_events
        pause = self.event_interval if interval is None else interval
        sent_frames: list[bytes] | None = [] if self.record else None
        try:
            for sent, frame in enumerate(frames):
                if reset_after is not None and sent >= reset_after:
                    _drop_connection(request)
                    break
                if sent and pause > 0:
                    await asyncio.sleep(pause)
                await resp.write(frame)
                if sent_frames is not None:
                    sent_frames.append(frame)
        except ConnectionError:
            # The client went away; aiohttp's write_eof after this return meets the
            # same closed transport and ignores it, so there is nothing to log.
            pass
        if sent_frames is not None:
            self.sent_bodies.append(b"".join(sent_frames))
        return resp

    # ------------------------------------------------------------------- helpers

    def next_id(self) -> int:
        return next(self._ids)

    def now(self) -> int:
        return int(self._clock())

    def record_request(
        self, request: web.Request, raw: bytes, payment: dict[str, Any] | None
    ) -> None:
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                CIMultiDict(request.headers),
                raw,
                payment,
                request.rel_url.raw_query_string,
            )
        )

    def note_payment(
        self, payment: dict[str, Any] | None, *, accepted: bool, reason: str | None
    ) -> None:
        if self.record:
            self.payments.append(self.describe_payment(payment, accepted=accepted, reason=reason))

    def describe_payment(
        self, payment: dict[str, Any] | None, *, accepted: bool, reason: str | None
    ) -> PaymentRecord:
        """What ``payments`` keeps of a payment header, however malformed (EVM here)."""
        return payment_record(payment, accepted=accepted, reason=reason)

    def _retry_after(self) -> dict[str, str]:
        value = self.misbehave.retry_after
        return {"Retry-After": value} if value is not None else {}

    def _injected_failure(self, dialect: Dialect) -> web.Response:
        status = self.misbehave.fail_status
        kind = (
            "rate_limit_error"
            if status == 429
            else "server_error"
            if status >= 500
            else "invalid_request_error"
        )
        refusal = Refusal(
            status, f"Injected gateway failure ({status})", kind, "fake_gateway_failure"
        )
        return dialect.refuse(refusal, self._retry_after())


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


_TEMPLATE_PART = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<re>[^{}]+))?\}")


def _template_pattern(template: str) -> re.Pattern[str]:
    """The regex aiohttp would match ``template`` with, for pricing a path without a server."""
    pattern, end = [], 0
    for part in _TEMPLATE_PART.finditer(template):
        pattern.append(re.escape(template[end : part.start()]))
        pattern.append(f"(?P<{part['name']}>{part['re'] or '[^{}/]+'})")
        end = part.end()
    pattern.append(re.escape(template[end:]))
    return re.compile("".join(pattern))
