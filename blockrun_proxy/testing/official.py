"""A gateway built from the official ``x402`` SDK's own resource server, for tests and benches.

The fake gateway (``FakeGateway``) is our reading of the protocol; this one is someone
else's: the official package's ``x402HTTPResourceServer`` decides what a request costs
(a dynamic price per request body), builds the 402, matches the payment's ``accepted``
against its own requirement for *this* request (``amount`` must be equal), checks the
echoed extensions, and settles through a facilitator. The facilitator is an in-process
stub that verifies the EIP-3009 signature offline with the SDK's own hashing and
recovery, tracks nonces and, if told to, balances.

Needs the ``x402`` package (the ``dev`` extra); it is imported when a gateway is built.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from blockrun_proxy.testing._models import DEFAULT_MODELS, ModelSpec, PricingFn, default_price
from blockrun_proxy.testing._replies import answer_for, completion, json_response
from blockrun_proxy.testing._serving import serve

API_PREFIX = "/api"
CHAT_PATH = f"{API_PREFIX}/v1/chat/completions"
DEFAULT_PAY_TO = "0x000000000000000000000000000000000000dEaD"
# What the official server declares for the builder-code extension when asked to: an app
# code and a service code of its own, which a client must echo (and may add to).
SERVER_APP_CODE = "bc_fake_gateway"
SERVER_SERVICE_CODE = "svc_fake_gateway"


class _Adapter:
    """The official server's view of one aiohttp request, body included (parsed once)."""

    def __init__(self, request: web.Request, body: Any) -> None:
        self._request = request
        self._body = body

    def get_header(self, name: str) -> str | None:
        return self._request.headers.get(name)

    def get_method(self) -> str:
        return self._request.method

    def get_path(self) -> str:
        return self._request.path

    def get_url(self) -> str:
        return str(self._request.url)

    def get_accept_header(self) -> str:
        return self._request.headers.get("accept", "")

    def get_user_agent(self) -> str:
        return self._request.headers.get("user-agent", "")

    def get_query_params(self) -> dict[str, str | list[str]]:
        return dict(self._request.query)

    def get_query_param(self, name: str) -> str | None:
        return self._request.query.get(name)

    def get_body(self) -> Any:
        return self._body


class StubFacilitator:
    """An x402 facilitator that never touches a chain: the signature is checked with the
    SDK's own EIP-712 hashing and ECDSA recovery, nonces are remembered, and a payer's
    balance is whatever ``balances`` says (unlimited when the payer is not in it)."""

    def __init__(self, network: str, *, balances: Mapping[str, int] | None = None) -> None:
        self.network = network
        self.balances = {k.lower(): v for k, v in (balances or {}).items()}
        self.used_nonces: set[tuple[str, str]] = set()
        self.verified = 0
        self.settled: list[int] = []
        # Settlement failures to inject, e.g. ["invalid_exact_evm_nonce_already_used"].
        self.fail_settlements: list[str] = []

    def get_supported(self) -> Any:
        from x402.schemas import SupportedKind, SupportedResponse

        return SupportedResponse(
            kinds=[SupportedKind(x402_version=2, scheme="exact", network=self.network)],
            extensions=["builder-code"],
            signers={"eip155:*": [DEFAULT_PAY_TO]},
        )

    async def verify(self, payload: Any, requirements: Any) -> Any:
        from x402.schemas import VerifyResponse

        self.verified += 1
        reason, payer = self._check(payload, requirements)
        return VerifyResponse(is_valid=reason is None, invalid_reason=reason, payer=payer)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        from x402.schemas import SettleResponse

        reason, payer = self._check(payload, requirements)
        if reason is None and self.fail_settlements:
            reason = self.fail_settlements.pop(0)
        if reason is not None:
            return SettleResponse(
                success=False,
                error_reason=reason,
                transaction="",
                network=self.network,
                payer=payer,
            )
        auth = payload.payload["authorization"]
        self.used_nonces.add((auth["from"].lower(), auth["nonce"].lower()))
        self.settled.append(int(auth["value"]))
        if payer is not None and payer.lower() in self.balances:
            self.balances[payer.lower()] -= int(auth["value"])
        transaction = "0x" + hashlib.sha256(auth["nonce"].encode()).hexdigest()
        return SettleResponse(
            success=True,
            transaction=transaction,
            network=self.network,
            payer=payer,
            amount=str(auth["value"]),
        )

    def _check(self, payload: Any, requirements: Any) -> tuple[str | None, str | None]:
        from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
        from x402.mechanisms.evm.types import ExactEIP3009Authorization
        from x402.mechanisms.evm.verify import verify_eoa_signature

        body = payload.payload
        auth = body.get("authorization") if isinstance(body, dict) else None
        if not isinstance(auth, dict):
            return "invalid_exact_evm_payload_signature", None
        payer = str(auth.get("from", ""))
        if str(auth.get("to", "")).lower() != requirements.pay_to.lower():
            return "invalid_exact_evm_payload_recipient_mismatch", payer
        if int(auth.get("value", -1)) != int(requirements.amount):
            return "invalid_exact_evm_payload_authorization_value_mismatch", payer
        now = int(time.time())
        if int(auth.get("validBefore", 0)) < now + 6:
            return "invalid_exact_evm_payload_authorization_valid_before", payer
        if int(auth.get("validAfter", now + 1)) > now:
            return "invalid_exact_evm_payload_authorization_valid_after", payer
        chain_id = int(requirements.network.split(":")[1])
        digest = hash_eip3009_authorization(
            ExactEIP3009Authorization(
                from_address=payer,
                to=auth["to"],
                value=str(auth["value"]),
                valid_after=str(auth["validAfter"]),
                valid_before=str(auth["validBefore"]),
                nonce=auth["nonce"],
            ),
            chain_id,
            requirements.asset,
            requirements.extra["name"],
            requirements.extra["version"],
        )
        signature = bytes.fromhex(str(body.get("signature", "")).removeprefix("0x"))
        if not verify_eoa_signature(digest, signature, payer):
            return "invalid_exact_evm_payload_signature", payer
        if (payer.lower(), str(auth["nonce"]).lower()) in self.used_nonces:
            return "invalid_exact_evm_nonce_already_used", payer
        balance = self.balances.get(payer.lower())
        if balance is not None and balance < int(auth["value"]):
            return "invalid_exact_evm_insufficient_balance", payer
        return None, payer


class OfficialGateway:
    """Chat completions paid through the official SDK's HTTP resource server, on loopback.

    ``pricing`` prices a request body for a model (the fake gateway's formulas); the
    catalogue (``GET /v1/models``) lists the models' prices. ``builder_code=True`` makes
    the server declare the builder-code extension with codes of its own.
    """

    def __init__(
        self,
        models: Iterable[ModelSpec] = DEFAULT_MODELS,
        pricing: PricingFn | None = None,
        *,
        network: str = "eip155:84532",
        pay_to: str = DEFAULT_PAY_TO,
        builder_code: bool = True,
        balances: Mapping[str, int] | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        from x402 import x402ResourceServer
        from x402.http import x402HTTPResourceServer
        from x402.http.types import PaymentOption, RouteConfig
        from x402.mechanisms.evm.exact.server import ExactEvmScheme

        self.models = {m.id: m for m in models}
        self.pricing = pricing or default_price
        self.network = network
        self.pay_to = pay_to
        self.facilitator = StubFacilitator(network, balances=balances)
        # Every chat request is answered this much later (a network round trip, in benches).
        self.delay_seconds = delay_seconds
        self.requests: list[tuple[bool, int]] = []  # (carried a payment, status) per chat call
        self.base_url: str | None = None
        self._ids = itertools.count(1)
        server = x402ResourceServer(self.facilitator)
        # The SDK's scheme class is untyped and its payment_flows table wider than the
        # protocol it registers under says: its own problem, not this harness's.
        server.register(network, ExactEvmScheme())  # type: ignore[no-untyped-call,arg-type]
        extensions: dict[str, Any] | None = None
        if builder_code:
            from x402.extensions.builder_code import declare_builder_code_extension

            extensions = {
                "builder-code": declare_builder_code_extension(
                    SERVER_APP_CODE, [SERVER_SERVICE_CODE]
                )
            }
        route = RouteConfig(
            accepts=PaymentOption(
                scheme="exact",
                pay_to=pay_to,
                price=self._price,
                network=network,
                max_timeout_seconds=300,
            ),
            description="Chat completions",
            mime_type="application/json",
            extensions=extensions,
        )
        self.http = x402HTTPResourceServer(server, {f"POST {CHAT_PATH}": route})
        self.http.initialize()
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_post(CHAT_PATH, self._chat)
        self.app.router.add_get(f"{API_PREFIX}/v1/models", self._models)

    def price_for(self, body: Mapping[str, Any]) -> int:
        return self.pricing(self.models[str(body["model"])], body)

    def _price(self, context: Any) -> str:
        amount = self.price_for(context.adapter.get_body())
        # A money string, as servers built on the SDK write prices: exact to 6 decimals.
        return f"${amount // 1_000_000}.{amount % 1_000_000:06d}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner, origin = await serve(self.app, host, port)
        self.base_url = f"{origin}{API_PREFIX}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OfficialGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _models(self, request: web.Request) -> web.Response:
        listing = [m.listing() for m in self.models.values()]
        return json_response(200, {"object": "list", "data": listing})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        from x402.http.types import HTTPRequestContext, HTTPTransportContext

        body = orjson.loads(await request.read())
        if self.delay_seconds > 0:
            await asyncio.sleep(self.delay_seconds)
        adapter = _Adapter(request, body)
        context = HTTPRequestContext(
            adapter=adapter,
            path=request.path,
            method=request.method,
            payment_header=adapter.get_header("payment-signature"),
        )
        result = await self.http.process_http_request(context)
        paid = context.payment_header is not None
        if result.type == "payment-error":
            assert result.response is not None
            self.requests.append((paid, result.response.status))
            return _instructions(result.response)
        n = next(self._ids)
        answer = answer_for(body, f"call_official{n:010d}")
        reply = completion(f"chatcmpl-official{n:010d}", int(time.time()), body["model"], answer, 0)
        assert result.payment_payload is not None and result.payment_requirements is not None
        settle = await self.http.process_settlement(
            result.payment_payload,
            result.payment_requirements,
            context=context,
            declared_extensions=result.declared_extensions,
            transport_context=HTTPTransportContext(request=context),
        )
        if not settle.success:
            assert settle.response is not None
            self.requests.append((paid, settle.response.status))
            return _instructions(settle.response)
        self.requests.append((paid, 200))
        return json_response(200, reply, settle.headers)


def _instructions(response: Any) -> web.Response:
    body = response.body if response.body is not None else {}
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
    return json_response(response.status, body, headers)
