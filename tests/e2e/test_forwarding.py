"""What reaches the gateway, as the README's "What reaches the gateway" promises.

The body a real client sends arrives byte for byte (every parameter, tools,
response_format, stream_options, BlockRun extras); the client's Authorization
never goes upstream; x-request-id passes through both ways.
"""

from __future__ import annotations

import json

import aiohttp
import httpx
import openai
import pytest
from support.calls import PRICED_MODEL

pytestmark = pytest.mark.e2e

TOKEN = "proxy-token-not-for-the-gateway"
RICH = {
    "model": PRICED_MODEL,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris? ünïcödé"},
    ],
    "max_tokens": 64,
    "temperature": 0.25,
    "top_p": 0.9,
    "seed": 7,
    "stop": ["\n\n"],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "search_parameters": {"mode": "on", "sources": [{"type": "web"}]},
    "fallback_models": ["anthropic/claude-sonnet-4.6", "openai/gpt-4o-mini"],
    "user": "user-1",
}


class Capture:
    """Keeps the exact bytes and headers the openai SDK put on the wire."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)


def sdk(proxy, capture: Capture, **kwargs) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(event_hooks={"request": [capture]})
    return openai.AsyncOpenAI(
        base_url=proxy.base_url, api_key=TOKEN, max_retries=0, http_client=http, **kwargs
    )


def sdk_params(stream: bool) -> dict:
    params = {k: v for k, v in RICH.items() if k not in ("search_parameters", "fallback_models")}
    extra = {"search_parameters": RICH["search_parameters"]}
    extra["fallback_models"] = RICH["fallback_models"]
    if stream:
        params |= {"stream": True, "stream_options": {"include_usage": True}}
    return {**params, "extra_body": extra}


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_body_arrives_byte_for_byte(start_proxy, gateway, stream):
    proxy = await start_proxy(token=TOKEN)
    capture = Capture()
    async with sdk(proxy, capture) as c:
        response = await c.chat.completions.with_raw_response.create(**sdk_params(stream))
        await response.http_response.aread()
    (sent,) = capture.requests
    upstream = [r for r in gateway.requests if r.path.endswith("/chat/completions")]
    assert len(upstream) == 2  # the unpaid probe, then the paid send
    assert upstream[0].body == upstream[1].body == sent.content
    body = json.loads(sent.content)
    for key in ("tools", "response_format", "search_parameters", "fallback_models", "user"):
        assert body[key] == RICH[key]
    if stream:
        assert body["stream_options"] == {"include_usage": True}


async def test_raw_body_keeps_key_order_spacing_and_numbers(start_proxy, gateway):
    proxy = await start_proxy()
    raw = (
        b'{ "temperature" : 1.50, "model":"' + PRICED_MODEL.encode() + b'",\n'
        b' "messages":[{"role":"user","content":"hi \\u00e9"}], "max_tokens": 8,'
        b' "search_parameters": {"mode":"auto"}, "fallback_models": [] }'
    )
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            proxy.base_url + "/chat/completions",
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200
    assert gateway.chat_requests[-1].body == raw


async def test_only_max_tokens_is_ever_added(start_proxy, gateway):
    proxy = await start_proxy()
    raw = json.dumps({"model": PRICED_MODEL, "messages": RICH["messages"]}).encode()
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            proxy.base_url + "/chat/completions",
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200
    assert gateway.chat_requests[-1].body == b'{"max_tokens":1024,' + raw[1:]


async def test_authorization_stays_and_request_id_passes_both_ways(start_proxy, gateway):
    proxy = await start_proxy(token=TOKEN)
    capture = Capture()
    async with sdk(proxy, capture) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=PRICED_MODEL,
            messages=RICH["messages"],
            max_tokens=8,
            extra_headers={"x-request-id": "req-e2e-1", "X-Custom": "not-forwarded"},
        )
    assert capture.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert raw.headers["x-request-id"] == "req-e2e-1"
    for request in gateway.chat_requests:
        assert "Authorization" not in request.headers
        assert TOKEN not in str(dict(request.headers))
        assert "X-Custom" not in request.headers
        assert request.headers["x-request-id"] == "req-e2e-1"


async def test_a_request_id_is_made_when_the_client_sends_none(proxy, gateway):
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            proxy.base_url + "/chat/completions",
            json={"model": PRICED_MODEL, "messages": RICH["messages"], "max_tokens": 8},
        )
        made = resp.headers["x-request-id"]
    assert len(made) >= 16
    assert {r.headers["x-request-id"] for r in gateway.chat_requests} == {made}
