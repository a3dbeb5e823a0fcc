"""SSE framing and tool calls, streamed and not."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.calls import FREE_MODEL
from support.gateway_client import CHAT, Payer, b64json, chat_body, requirement_of

from blockrun_proxy.testing import FakeGateway

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


def split_frames(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    frames = raw[:-2].split(b"\n\n")
    assert all(f.startswith(b"data: ") for f in frames)
    return [f[len(b"data: ") :] for f in frames]


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    frames = split_frames(raw)
    assert frames[-1] == b"[DONE]"
    return [json.loads(f) for f in frames[:-1]]


async def stream(client: TestClient, body: dict[str, Any], **headers: str) -> bytes:
    resp = await client.post(CHAT, json={**body, "stream": True}, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return await resp.read()


async def test_sse_framing_without_usage(client: TestClient) -> None:
    raw = await stream(client, chat_body("stream me", model=FREE_MODEL))
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = chunks_of(raw)
    assert len(chunks) == 1 + 5 + 1  # role, stream_events pieces, finish
    first, *pieces, last = chunks
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == first["id"] and c["model"] == FREE_MODEL for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in [first, *pieces])
    assert all(c["choices"][0]["delta"]["content"] for c in pieces)
    text = "".join(c["choices"][0]["delta"]["content"] for c in pieces)
    assert text.rstrip() == "echo: stream me"
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all("usage" not in c for c in chunks)


async def test_usage_chunk_only_when_asked(client: TestClient) -> None:
    body = chat_body("x", model=FREE_MODEL, stream_options={"include_usage": True})
    chunks = chunks_of(await stream(client, body))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    off = chat_body("x", model=FREE_MODEL, stream_options={"include_usage": False})
    assert all("usage" not in c for c in chunks_of(await stream(client, off)))


async def test_paid_stream_sends_receipt_with_headers(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    body = {**chat_body(), "stream": True}
    challenge = await client.post(CHAT, json=body)
    header = payer.pay(requirement_of(challenge.headers["PAYMENT-REQUIRED"]))
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 200
    # The receipt is readable before a single body byte has been consumed.
    assert b64json(resp.headers["PAYMENT-RESPONSE"])["payer"] == payer.address
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    assert len(gw.settled) == 1


async def test_non_stream_tool_call(client: TestClient) -> None:
    body = chat_body("Paris?", model=FREE_MODEL, tools=TOOLS)
    answer = await (await client.post(CHAT, json=body)).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"echo": "Paris?"}
    forced = {**body, "tool_choice": {"type": "function", "function": {"name": "other"}}}
    answer = await (await client.post(CHAT, json=forced)).json()
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "other"
    plain = await (await client.post(CHAT, json={**body, "tool_choice": "none"})).json()
    assert plain["choices"][0]["message"]["content"] == "echo: Paris?"


async def test_streamed_tool_call_reassembles(client: TestClient) -> None:
    body = chat_body("Paris?", model=FREE_MODEL, tools=TOOLS)
    chunks = chunks_of(await stream(client, body))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert len(calls) == 5
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function"
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert all(
        set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in calls[1:]
    )
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"echo": "Paris?"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_event_count_size_and_interval(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway(stream_events=4, event_size=300, event_interval=0.02)
    client = await aiohttp_client(gw.app)
    started = time.perf_counter()
    chunks = chunks_of(await stream(client, chat_body(model=FREE_MODEL)))
    elapsed = time.perf_counter() - started
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(pieces) == 4 and all(len(p) == 300 for p in pieces)
    assert elapsed >= 5 * 0.02  # six frames before [DONE], a pause between each


async def test_many_events_stream_quickly(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway(stream_events=5000, verify="none")
    client = await aiohttp_client(gw.app)
    started = time.perf_counter()
    chunks = chunks_of(await stream(client, chat_body(model=FREE_MODEL)))
    assert len(chunks) == 5002
    assert time.perf_counter() - started < 5  # generous: this is a smoke check, not a benchmark
