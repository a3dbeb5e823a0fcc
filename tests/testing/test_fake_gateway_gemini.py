"""Gemini's native routes on the fake: the model in the path, JSON and SSE, payment."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support.gateway_client import Payer, b64json, paid_post, sse_events

from blockrun_proxy.testing import FakeGateway, ModelSpec

FREE = "gemini-free"  # served as google/gemini-free
PAID = "gemini-2.5-flash"
TOOLS = [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}]


def generate(model: str = FREE, method: str = "generateContent", query: str = "") -> str:
    return f"/api/v1beta/models/{model}:{method}{query}"


def body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


@pytest.fixture
def gw() -> FakeGateway:
    free = ModelSpec("google/gemini-free", 0, 0, flat_fee=0, free=True)
    return FakeGateway(
        verify="fast", stream_events=3, models=[*FakeGateway().models.values(), free]
    )


async def test_generate_content_json(client: TestClient) -> None:
    resp = await client.post(generate(), json=body("Paris?"))
    assert resp.status == 200
    answer = await resp.json()
    [candidate] = answer["candidates"]
    assert candidate["content"] == {"parts": [{"text": "echo: Paris?"}], "role": "model"}
    assert candidate["finishReason"] == "STOP"
    usage = answer["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert answer["modelVersion"] == "gemini-free"


async def test_stream_is_sse_with_crlf_frames(gw: FakeGateway, client: TestClient) -> None:
    resp = await client.post(
        generate(method="streamGenerateContent", query="?alt=sse"), json=body("Paris?")
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = await resp.read()
    assert raw == gw.sent_bodies[-1]
    assert raw.count(b"\r\n\r\n") == 3 and raw.endswith(b"\r\n\r\n")
    chunks = [data for _, data in sse_events(raw)]
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text.rstrip() == "echo: Paris?"
    assert "finishReason" not in chunks[0]["candidates"][0]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] > 0
    assert gw.requests[-1].query == "alt=sse"


async def test_stream_without_alt_sse_is_still_sse(client: TestClient) -> None:
    # BlockRun's gateway chooses SSE from the method; the query does not matter.
    resp = await client.post(generate(method="streamGenerateContent"), json=body())
    assert resp.headers["Content-Type"].startswith("text/event-stream")


async def test_google_prefix_and_models_prefix_name_the_same_model(client: TestClient) -> None:
    for model in (f"google/{FREE}", f"models/{FREE}"):
        resp = await client.post(generate(model), json=body())
        assert resp.status == 200, model


async def test_function_call(client: TestClient) -> None:
    answer = await (await client.post(generate(), json=body("Paris?", tools=TOOLS))).json()
    part = answer["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "get_weather", "args": {"echo": "Paris?"}}}
    off = body("Paris?", tools=TOOLS, toolConfig={"functionCallingConfig": {"mode": "NONE"}})
    answer = await (await client.post(generate(), json=off)).json()
    assert "text" in answer["candidates"][0]["content"]["parts"][0]


@pytest.mark.parametrize(
    ("path", "sent", "status", "status_name"),
    [
        (generate("gemini-nope"), body(), 404, "NOT_FOUND"),
        (generate(method="countTokens"), body(), 404, "NOT_FOUND"),
        (generate(), {"contents": []}, 400, "INVALID_ARGUMENT"),
        (generate(), body(generationConfig={"maxOutputTokens": 0}), 400, "INVALID_ARGUMENT"),
    ],
)
async def test_errors_are_googles_envelope(
    client: TestClient, path: str, sent: dict[str, Any], status: int, status_name: str
) -> None:
    resp = await client.post(path, json=sent)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == status and error["status"] == status_name and error["message"]


async def test_paid_model_prices_by_max_output_tokens(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    sent = body("x" * 40, generationConfig={"maxOutputTokens": 100})
    path = generate(PAID, "streamGenerateContent", "?alt=sse")
    resp = await client.post(path, json=sent)
    assert resp.status == 402
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    expected = math.ceil(Fraction("0.3") * (10 + 4) + Fraction("2.5") * 100) + 1000
    assert required["accepts"][0]["amount"] == str(expected)
    assert (
        required["resource"]["description"] == "google/gemini-2.5-flash - 65536 max output tokens"
    )
    assert gw.price_for(sent, path.removeprefix("/api")) == expected
    paid = await paid_post(client, path, sent, payer)
    assert paid.status == 200 and b64json(paid.headers["PAYMENT-RESPONSE"])["success"] is True
    assert sse_events(await paid.read())[-1][1]["candidates"][0]["finishReason"] == "STOP"
    assert [s.amount for s in gw.settled] == [expected]
