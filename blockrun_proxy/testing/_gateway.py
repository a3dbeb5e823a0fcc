"""``FakeGateway``: an aiohttp app that plays the BlockRun x402 gateway on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from blockrun_proxy.testing._misbehavior import Misbehavior
from blockrun_proxy.testing._models import (
    DEFAULT_MODELS,
    ModelSpec,
    PricingFn,
    default_price,
    estimate_input_tokens,
    usd_string,
)
from blockrun_proxy.testing._networks import NETWORKS, is_address
from blockrun_proxy.testing._payments import (
    Outcome,
    PaymentDecodeError,
    Quote,
    Verdict,
    check_payment,
    decode_header,
    encode_header,
)
from blockrun_proxy.testing._records import (
    PaymentRecord,
    RecordedRequest,
    SettledPayment,
    payment_record,
)
from blockrun_proxy.testing._replies import answer_for, completion, error_response, json_response
from blockrun_proxy.testing._stream import ChunkWriter, frames
from blockrun_proxy.testing._verify import VERIFY_MODES, VerifyMode

API_PREFIX = "/api"
DEFAULT_NETWORK = "eip155:84532"
# A recognisable, keyless address: nobody can sign for it, nothing is lost by paying it.
DEFAULT_PAY_TO = "0x000000000000000000000000000000000000dEaD"
MAX_TIMEOUT_SECONDS = 300
MAX_BODY_BYTES = 32 * 1024 * 1024


class FakeGateway:
    """The BlockRun gateway's x402 behaviour (PROTOCOL.md section 3), in-process.

    Create it, then either ``await start()`` for a real loopback server or hand
    ``gw.app`` to pytest-aiohttp. Flip ``gw.misbehave`` between calls and read
    ``requests`` / ``payments`` / ``settled`` to see what the proxy did.
    """

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
        record: bool = True,
        publish_prices: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
        if not is_address(pay_to):
            raise ValueError(f"pay_to {pay_to!r} is not a 0x address")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
        self.network = network
        self.pay_to = pay_to
        self.models: dict[str, ModelSpec] = {m.id: m for m in models}
        self.pricing = pricing
        self.verify: VerifyMode = verify
        self.stream_events = stream_events
        self.event_interval = event_interval
        self.event_size = event_size
        self.settle_amount_in_response = settle_amount_in_response
        # False: /v1/models lists the models without their prices (a gateway whose
        # catalogue says nothing the quote model can use).
        self.publish_prices = publish_prices
        # Benchmarks turn recording off so a long run does not grow memory; the
        # settlement ledger is always kept because replay detection needs it.
        self.record = record
        self.misbehave = Misbehavior()
        self.requests: list[RecordedRequest] = []
        # The exact body bytes of every 200 answer, for byte-for-byte relay tests.
        self.sent_bodies: list[bytes] = []
        self.payments: list[PaymentRecord] = []
        self.settled: list[SettledPayment] = []
        self.models_calls = 0
        self.base_url: str | None = None
        self._clock = clock
        self._settled_nonces: set[tuple[str, str]] = set()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_post(f"{API_PREFIX}/v1/chat/completions", self._chat_completions)
        self.app.router.add_get(f"{API_PREFIX}/v1/models", self._list_models)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded chat completion calls. ``requests`` also holds catalogue reads
        (``GET /v1/models``), which the proxy makes on its own to learn prices."""
        chat = f"{API_PREFIX}/v1/chat/completions"
        return [r for r in self.requests if r.path == chat]

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port); returns the base URL ending in /api."""
        # handler_cancellation: a client hanging up mid-stream stops the handler at
        # once instead of at its next write, as the proxy does too.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"http://{shown}:{bound_port}{API_PREFIX}"
        return self.base_url

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

    # ------------------------------------------------------------------- pricing

    def price_for(self, body: Mapping[str, Any]) -> int:
        """Atomic USDC the gateway would quote for this body now (0 for a free model).

        Includes ``misbehave.price_multiplier``: it is what the 402 would say.
        """
        model = self.models.get(str(body.get("model")))
        if model is None:
            raise ValueError(f"unknown model {body.get('model')!r}")
        return self._price(model, body)

    def _price(self, model: ModelSpec, body: Mapping[str, Any]) -> int:
        if model.free:
            return 0
        base = self.pricing(model, body) if self.pricing else default_price(model, body)
        multiplier = self.misbehave.price_multiplier
        if multiplier == 1.0:
            return base
        # Through str so 1.1 means 11/10, not the binary float just above it.
        return math.ceil(base * Fraction(str(multiplier)))

    def _quote(self, price: int) -> Quote:
        mb = self.misbehave
        network = mb.network or self.network
        table = NETWORKS.get(network, NETWORKS[self.network])
        return Quote(
            scheme=mb.scheme or "exact",
            network=network,
            amount=price,
            asset=mb.asset or table.usdc,
            pay_to=mb.pay_to or self.pay_to,
            max_timeout_seconds=(
                MAX_TIMEOUT_SECONDS if mb.max_timeout_seconds is None else mb.max_timeout_seconds
            ),
            domain_name=table.domain_name,
            domain_version=table.domain_version,
        )

    # ------------------------------------------------------------------ handlers

    async def _list_models(self, request: web.Request) -> web.Response:
        self.models_calls += 1
        if self.record:
            self._record(request, b"", None)
        listing = [m.listing() for m in self.models.values()]
        if not self.publish_prices:
            listing = [{k: v for k, v in m.items() if k != "pricing"} for m in listing]
        return json_response(200, {"object": "list", "data": listing})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        header = request.headers.get("PAYMENT-SIGNATURE") or request.headers.get("X-PAYMENT")
        payment: dict[str, Any] | None = None
        decode_error: str | None = None
        if header is not None:
            try:
                payment = decode_header(header)
            except PaymentDecodeError as exc:
                decode_error = str(exc)
        if self.record:
            self._record(request, raw, payment)

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
        if header is None and mb.fail_unpaid > 0:
            mb.fail_unpaid -= 1
            return self._injected_failure()
        if model.free:
            if header is not None:
                self._note_payment(payment, accepted=False, reason="free model: payment not used")
            return await self._serve(request, body, {})
        price = self._price(model, body)
        if header is None:
            return self._challenge(request, model, price)
        return await self._paid(request, body, model, price, payment, decode_error)

    async def _paid(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: ModelSpec,
        price: int,
        payment: dict[str, Any] | None,
        decode_error: str | None,
    ) -> web.StreamResponse:
        mb = self.misbehave
        if mb.fail_paid > 0:
            mb.fail_paid -= 1
            self._note_payment(payment, accepted=False, reason="injected failure before settling")
            return self._injected_failure()
        if mb.replay_on_paid:
            self._note_payment(payment, accepted=False, reason="injected PAYMENT_REPLAY")
            return _replay_response()

        quote = self._quote(price)
        if payment is None:
            verdict = Verdict(Outcome.INVALID, decode_error)
        else:
            verdict = check_payment(
                payment,
                quote,
                now=int(self._clock()),
                verify=self.verify,
                settled_nonces=self._settled_nonces,
            )
        self._note_payment(
            payment, accepted=verdict.outcome is Outcome.ACCEPTED, reason=verdict.reason
        )
        if verdict.outcome is Outcome.REPLAY:
            return _replay_response()
        if verdict.outcome is Outcome.INVALID:
            if mb.fresh_challenge_on_invalid:
                return self._challenge(request, model, price)
            return error_response(
                402,
                f"Payment verification failed: {verdict.reason}",
                type_="payment_error",
                code="PAYMENT_INVALID",
            )

        receipt = self._settle(verdict, quote)
        if mb.fail_after_settle > 0:
            mb.fail_after_settle -= 1
            return error_response(
                500,
                "The model failed after the payment was settled",
                type_="server_error",
                code="upstream_error",
            )
        return await self._serve(request, body, {"PAYMENT-RESPONSE": encode_header(receipt)})

    # ------------------------------------------------------------------- answers

    def _challenge(self, request: web.Request, model: ModelSpec, price: int) -> web.Response:
        quote = self._quote(price)
        required = {
            "x402Version": 2,
            "error": "Payment required",
            "resource": {
                "url": self.misbehave.resource_url or str(request.url),
                "description": f"{model.id} - {model.max_output} max output tokens",
                "mimeType": "application/json",
            },
            "accepts": [quote.to_json()],
        }
        body = {
            "error": "Payment Required",
            "x402": required,
            "price": {"amount": usd_string(price), "currency": "USD"},
        }
        return json_response(402, body, {"PAYMENT-REQUIRED": encode_header(required)})

    def _settle(self, verdict: Verdict, quote: Quote) -> dict[str, Any]:
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
        receipt: dict[str, Any] = {
            "success": True,
            "transaction": transaction,
            "network": quote.network,
            "payer": verdict.payer,
        }
        if self.settle_amount_in_response:
            receipt["amount"] = str(auth.value)
        return receipt

    async def _serve(
        self, request: web.Request, body: dict[str, Any], headers: Mapping[str, str]
    ) -> web.StreamResponse:
        n = next(self._ids)
        completion_id = f"chatcmpl-fake{n:010d}"
        answer = answer_for(body, f"call_fake{n:010d}")
        prompt_tokens = estimate_input_tokens(body)
        created = int(self._clock())
        if body.get("stream") is not True:
            reply = json_response(
                200,
                completion(completion_id, created, body["model"], answer, prompt_tokens),
                headers,
            )
            if self.record and isinstance(reply.body, bytes):
                self.sent_bodies.append(reply.body)
            return reply

        resp = web.StreamResponse(headers={"Cache-Control": "no-cache", **headers})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        options = body.get("stream_options")
        chunks = frames(
            ChunkWriter(completion_id, created, body["model"]),
            answer,
            events=self.stream_events,
            event_size=self.event_size,
            prompt_tokens=prompt_tokens,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )
        reset_after = self.misbehave.reset_after_events
        interval = self.event_interval
        sent_frames: list[bytes] | None = [] if self.record else None
        try:
            for sent, frame in enumerate(chunks):
                if reset_after is not None and sent >= reset_after:
                    _drop_connection(request)
                    break
                if sent and interval > 0:
                    await asyncio.sleep(interval)
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

    def _record(self, request: web.Request, raw: bytes, payment: dict[str, Any] | None) -> None:
        self.requests.append(
            RecordedRequest(
                request.method, request.path, CIMultiDict(request.headers), raw, payment
            )
        )

    def _note_payment(
        self, payment: dict[str, Any] | None, *, accepted: bool, reason: str | None
    ) -> None:
        if self.record:
            self.payments.append(payment_record(payment, accepted=accepted, reason=reason))

    def _retry_after(self) -> dict[str, str]:
        value = self.misbehave.retry_after
        return {"Retry-After": value} if value is not None else {}

    def _injected_failure(self) -> web.Response:
        status = self.misbehave.fail_status
        kind = (
            "rate_limit_error"
            if status == 429
            else "server_error"
            if status >= 500
            else "invalid_request_error"
        )
        return error_response(
            status,
            f"Injected gateway failure ({status})",
            type_=kind,
            code="fake_gateway_failure",
            headers=self._retry_after(),
        )


def _replay_response() -> web.Response:
    return error_response(
        409,
        "Payment already used: this authorization was settled for an earlier request",
        type_="payment_error",
        code="PAYMENT_REPLAY",
    )


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _parse_chat_body(raw: bytes) -> tuple[dict[str, Any], web.Response | None]:
    """The request as a dict, or an OpenAI-shaped 400 saying what is wrong with it."""

    def bad(message: str, param: str | None = None) -> tuple[dict[str, Any], web.Response]:
        return {}, error_response(
            400, message, type_="invalid_request_error", code="invalid_request", param=param
        )

    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return bad("Request body is not valid JSON")
    if not isinstance(body, dict):
        return bad("Request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        return bad("'model' is required and must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad("'messages' must be a non-empty array", "messages")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (type(value) is not int or value < 1):
            return bad(f"'{key}' must be a positive integer", key)
    if "stream" in body and not isinstance(body["stream"], bool):
        return bad("'stream' must be a boolean", "stream")
    return body, None
