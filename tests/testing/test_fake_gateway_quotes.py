"""The unpaid side: 402 challenges, prices, the catalogue, free models, bad input."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.calls import FRACTIONAL_MODEL, FREE_MODEL
from support.gateway_client import CHAT, MODELS, b64json, chat_body

from blockrun_proxy.testing import DEFAULT_MODELS, FakeGateway, ModelSpec

SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


async def test_402_header_and_body(gw: FakeGateway, client: TestClient) -> None:
    body = chat_body("hi there", max_tokens=100)
    resp = await client.post(CHAT, json=body)
    assert resp.status == 402
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    price = gw.price_for(body)
    assert required == {
        "x402Version": 2,
        "error": "Payment required",
        "resource": {
            "url": str(client.make_url(CHAT)),
            "description": f"{FRACTIONAL_MODEL} - 16384 max output tokens",
            "mimeType": "application/json",
        },
        "accepts": [
            {
                "scheme": "exact",
                "network": "eip155:84532",
                "amount": str(price),
                "asset": SEPOLIA_USDC,
                "payTo": gw.pay_to,
                "maxTimeoutSeconds": 300,
                "extra": {"name": "USDC", "version": "2"},
            }
        ],
    }
    payload = await resp.json()
    assert payload["error"] == "Payment Required"
    assert payload["x402"] == required
    assert payload["price"] == {"amount": f"0.{price:06d}", "currency": "USD"}
    assert gw.payments == [] and gw.settled == []


async def test_base_mainnet_quotes_its_own_usdc_domain() -> None:
    gw = FakeGateway(network="eip155:8453")
    requirement = gw.quote(1234).to_json()
    assert requirement["asset"] == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    assert requirement["extra"] == {"name": "USD Coin", "version": "2"}


def test_default_price_formula() -> None:
    gw = FakeGateway()
    mini = {m.id: m for m in DEFAULT_MODELS}[FRACTIONAL_MODEL]
    text = "é" * 10  # 20 UTF-8 bytes -> 5 tokens, plus 4 for the one message
    expected = math.ceil(Fraction("0.15") * 9 + Fraction("0.6") * 200) + mini.flat_fee
    assert gw.price_for(chat_body(text, max_tokens=200)) == expected
    # max_completion_tokens moves the price like max_tokens (LiteLLM renames it).
    assert gw.price_for(chat_body(text, max_completion_tokens=200)) == expected
    # No limit: a 4096-token reservation; over the ceiling: clamped to max_output.
    default = gw.price_for(chat_body(text))
    assert default == math.ceil(Fraction("0.15") * 9 + Fraction("0.6") * 4096) + 1000
    clamped = gw.price_for(chat_body(text, max_tokens=10**9))
    assert clamped == math.ceil(Fraction("0.15") * 9 + Fraction("0.6") * 16384) + 1000
    # The same model costs more for a longer prompt.
    assert gw.price_for(chat_body(text * 10, max_tokens=200)) > expected


def test_price_counts_content_parts_and_every_message() -> None:
    gw = FakeGateway(pricing=None)
    parts = {
        "model": FRACTIONAL_MODEL,
        "max_tokens": 1,
        "messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "efgh"}]},
        ],
    }
    assert gw.price_for(parts) == math.ceil(Fraction("0.15") * (2 + 8) + Fraction("0.6")) + 1000


async def test_pricing_callable_is_honoured(aiohttp_client: AiohttpClient) -> None:
    seen: list[str] = []

    def by_max_tokens(model: ModelSpec, body: Any) -> int:
        seen.append(model.id)
        return 10 * int(body.get("max_tokens", 1))

    gw = FakeGateway(pricing=by_max_tokens)
    client = await aiohttp_client(gw.app)
    for max_tokens, text in ((5, "short"), (5, "a much longer prompt" * 50), (7, "short")):
        resp = await client.post(CHAT, json=chat_body(text, max_tokens=max_tokens))
        amount = b64json(resp.headers["PAYMENT-REQUIRED"])["accepts"][0]["amount"]
        assert amount == str(10 * max_tokens)
    assert seen == [FRACTIONAL_MODEL] * 3
    assert gw.price_for(chat_body(model=FREE_MODEL)) == 0  # free models never ask


async def test_free_model_answers_without_payment(gw: FakeGateway, client: TestClient) -> None:
    resp = await client.post(CHAT, json=chat_body("ping", model=FREE_MODEL))
    assert resp.status == 200
    assert "PAYMENT-RESPONSE" not in resp.headers
    answer = await resp.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == FREE_MODEL
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: ping"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_models_listing(gw: FakeGateway, client: TestClient) -> None:
    resp = await client.get(MODELS)
    listing = await resp.json()
    assert listing["object"] == "list"
    by_id = {m["id"]: m for m in listing["data"]}
    assert {"openai/gpt-5.5", "anthropic/claude-sonnet-4.6", FRACTIONAL_MODEL, FREE_MODEL} <= set(
        by_id
    )
    mini = by_id[FRACTIONAL_MODEL]
    assert mini["object"] == "model"
    assert mini["provider"] == "openai"
    assert mini["pricing"] == {"input": 0.15, "output": 0.6, "flat": 0.001}
    assert mini["billing_mode"] == "paid" and mini["available"] is True
    assert mini["max_output"] == 16384 and mini["context_window"] == 128000
    assert by_id[FREE_MODEL]["billing_mode"] == "free"
    await client.get(MODELS)
    assert gw.models_calls == 2


async def test_bad_requests_get_openai_shaped_errors(client: TestClient) -> None:
    cases: list[tuple[bytes, int, str | None]] = [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "openai/gpt-4o-mini", "messages": []}', 400, "messages"),
        (b'{"model": "openai/gpt-4o-mini", "messages": [{}], "max_tokens": -1}', 400, "max_tokens"),
        (b'{"model": "openai/gpt-4o-mini", "messages": [{}], "stream": "yes"}', 400, "stream"),
        (b'{"model": "nope/nothing", "messages": [{}]}', 404, "model"),
    ]
    for raw, status, param in cases:
        resp = await client.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == status, raw
        error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert "PAYMENT-REQUIRED" not in resp.headers


async def test_requests_are_recorded(gw: FakeGateway, client: TestClient) -> None:
    await client.post(CHAT, json=chat_body(), headers={"X-Test": "1"})
    recorded = gw.requests[-1]
    assert recorded.method == "POST" and recorded.path == CHAT
    assert recorded.headers["x-test"] == "1"
    assert b'"hello"' in recorded.body
    assert recorded.payment is None
