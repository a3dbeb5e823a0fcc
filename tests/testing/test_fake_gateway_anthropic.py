"""Anthropic Messages on the fake: shapes, the event stream, pricing and payment."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.gateway_client import Payer, b64json, paid_post, sse_events

from blockrun_proxy.testing import FakeGateway, ModelSpec

MESSAGES = "/api/v1/messages"
COUNT = "/api/v1/messages/count_tokens"
CLAUDE = (
    "claude-sonnet-4-6"  # what Claude Code sends; the catalogue id is anthropic/claude-sonnet-4.6
)
FREE = "anthropic/claude-free"
TOOLS = [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}]


def body(text: str = "hello", model: str = CLAUDE, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


@pytest.fixture
def gw() -> FakeGateway:
    free = ModelSpec(FREE, 0, 0, flat_fee=0, free=True, name="Claude Free")
    return FakeGateway(
        verify="fast", stream_events=4, models=[*FakeGateway().models.values(), free]
    )


async def test_message_json(client: TestClient) -> None:
    resp = await client.post(MESSAGES, json=body("Paris?", model=FREE))
    assert resp.status == 200
    message = await resp.json()
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("msg_") and message["model"] == FREE
    assert message["content"] == [{"type": "text", "text": "echo: Paris?"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert set(message["usage"]) == {"input_tokens", "output_tokens"}


async def test_stream_is_anthropics_event_sequence(gw: FakeGateway, client: TestClient) -> None:
    resp = await client.post(MESSAGES, json=body("Paris?", model=FREE, stream=True))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = await resp.read()
    assert raw == gw.sent_bodies[-1]
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)  # event name == data.type
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text.rstrip() == "echo: Paris?"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0


async def test_tool_use_json_and_stream(client: TestClient) -> None:
    asked = body("Paris?", model=FREE, tools=TOOLS)
    message = await (await client.post(MESSAGES, json=asked)).json()
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert block["id"].startswith("toolu_") and block["input"] == {"echo": "Paris?"}
    assert message["stop_reason"] == "tool_use"

    forced = {**asked, "tool_choice": {"type": "tool", "name": "other"}, "stream": True}
    events = sse_events(await (await client.post(MESSAGES, json=forced)).read())
    start = events[1][1]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "other" and start["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == {"echo": "Paris?"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    off = {**asked, "tool_choice": {"type": "none"}}
    message = await (await client.post(MESSAGES, json=off)).json()
    assert message["content"][0]["type"] == "text"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
        ({"model": 7}, "model"),
        ({"stream": "yes"}, "stream"),
    ],
)
async def test_bad_bodies_get_anthropic_errors(
    client: TestClient, change: dict[str, Any], param: str
) -> None:
    sent = {k: v for k, v in {**body(), **change}.items() if v is not None}
    resp = await client.post(MESSAGES, json=sent)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"
    assert param in answer["error"]["message"]


async def test_unknown_model_is_a_400(client: TestClient) -> None:
    resp = await client.post(MESSAGES, json=body(model="claude-nope"))
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "Unknown model: claude-nope"


async def test_402_names_the_model_and_prices_like_chat_with_the_system_prompt(
    gw: FakeGateway, client: TestClient
) -> None:
    asked = body("x" * 400, system="y" * 100)
    resp = await client.post(MESSAGES, json=asked)
    assert resp.status == 402
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    assert required["resource"]["description"] == "Claude Sonnet 4.6 API call"
    assert required["resource"]["url"].endswith(MESSAGES)
    # 100 + 25 input tokens (bytes / 4) + 4 per message, two messages; 256 reserved.
    expected = math.ceil(Fraction(3) * (125 + 8) + 15 * 256) + 1000
    assert required["accepts"][0]["amount"] == str(expected)
    assert gw.price_for(asked, "/v1/messages") == expected
    error = (await resp.json())["error"]
    assert error["type"] == "payment_required"
    assert error["price"] == {"amount": f"0.{expected:06d}", "currency": "USD"}
    assert error["paymentInfo"]["network"] == gw.network


async def test_paid_message_settles_and_carries_the_receipt(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    resp = await paid_post(client, MESSAGES, body(stream=True), payer)
    assert resp.status == 200
    receipt = b64json(resp.headers["PAYMENT-RESPONSE"])
    assert receipt["payer"] == payer.address
    assert resp.headers["X-Payment-Receipt"] == receipt["transaction"]
    assert sse_events(await resp.read())[-1][0] == "message_stop"
    assert len(gw.settled) == 1 and gw.settled[0].amount == gw.price_for(body(), "/v1/messages")


async def test_refused_payment_speaks_anthropic_with_a_code(
    client: TestClient, payer: Payer
) -> None:
    resp = await client.post(MESSAGES, json=body())
    requirement = b64json(resp.headers["PAYMENT-REQUIRED"])["accepts"][0]
    header = payer.pay(requirement, value=1)
    resp = await client.post(MESSAGES, json=body(), headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 402
    error = (await resp.json())["error"]
    assert error["type"] == "payment_error" and error["code"] == "PAYMENT_INVALID"
    assert error["message"].startswith("Payment verification failed")


async def test_count_tokens_is_free_by_default(gw: FakeGateway, client: TestClient) -> None:
    counted = {k: v for k, v in body("x" * 40).items() if k != "max_tokens"}
    resp = await client.post(COUNT, json=counted)
    assert resp.status == 200
    assert await resp.json() == {"input_tokens": 10 + 4}
    assert gw.payments == [] and gw.settled == []


async def test_count_tokens_can_be_paid(aiohttp_client: AiohttpClient, payer: Payer) -> None:
    gw = FakeGateway(verify="fast", count_tokens_fee=500)
    client = await aiohttp_client(gw.app)
    counted = {"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]}
    assert gw.price_for(counted, "/v1/messages/count_tokens") == 500
    resp = await paid_post(client, COUNT, counted, payer)
    assert resp.status == 200 and "input_tokens" in await resp.json()
    assert [s.amount for s in gw.settled] == [500]
