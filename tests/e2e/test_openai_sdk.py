"""The real openai SDK against a running proxy in front of the running fake gateway."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from support.calls import FREE_MODEL, PRICED_MODEL
from support.clients import PAID_FAILURES, run_snippet

MESSAGES = [{"role": "user", "content": "Say something nice"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

pytestmark = pytest.mark.e2e


def client(proxy, **kwargs) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key="unused", **kwargs)


@pytest.mark.parametrize("model", [PRICED_MODEL, FREE_MODEL])
async def test_async_non_stream(proxy, gateway, model):
    async with client(proxy) as c:
        reply = await c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=32)
    assert reply.choices[0].message.content
    assert len(gateway.payments) == (1 if model == PRICED_MODEL else 0)


@pytest.mark.parametrize("model", [PRICED_MODEL, FREE_MODEL])
async def test_async_stream_gets_the_gateways_bytes_with_one_signature_per_call(
    proxy, gateway, model
):
    async with client(proxy) as c:
        for call in range(1, 4):
            stream = await c.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, stream=True, max_tokens=16 * call
            )
            raw = b"".join([chunk async for chunk in stream.http_response.aiter_bytes()])
            assert raw == gateway.sent_bodies[-1]
    if model == PRICED_MODEL:
        assert [p.accepted for p in gateway.payments] == [True, True, True]
        assert len({p.nonce for p in gateway.payments}) == 3
    else:
        assert gateway.payments == []


async def test_stream_content_reassembles(proxy, gateway):
    async with client(proxy) as c:
        stream = await c.chat.completions.create(
            model=PRICED_MODEL, messages=MESSAGES, stream=True, max_tokens=16
        )
        text = "".join(
            [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        )
    assert text.strip() == "echo: Say something nice"
    assert len(gateway.settled) == 1


async def test_streamed_tool_call_arrives_intact(proxy, gateway):
    async with client(proxy) as c:
        stream = await c.chat.completions.create(
            model=PRICED_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL], stream=True, max_tokens=64
        )
        chunks = [chunk async for chunk in stream]
    pieces = [t for ch in chunks if ch.choices for t in ch.choices[0].delta.tool_calls or ()]
    assert len(pieces) > 1  # the fake splits the call over many chunks
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert json.loads(arguments) == {"echo": "Say something nice"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_options_include_usage_is_honoured(proxy, gateway, include_usage):
    async with client(proxy) as c:
        stream = await c.chat.completions.create(
            model=PRICED_MODEL,
            messages=MESSAGES,
            stream=True,
            max_tokens=16,
            stream_options={"include_usage": include_usage},
        )
        chunks = [chunk async for chunk in stream]
    usage = [ch for ch in chunks if ch.usage is not None]
    if include_usage:
        assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0].choices == []
        assert usage[0].usage.total_tokens > 0
    else:
        assert usage == []


async def test_sync_client_in_a_thread(proxy, gateway):
    def call() -> str:
        with openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0) as c:
            reply = c.chat.completions.create(model=PRICED_MODEL, messages=MESSAGES, max_tokens=8)
            return reply.choices[0].message.content or ""

    assert await asyncio.to_thread(call)
    assert len(gateway.settled) == 1


async def test_sync_stream_in_a_thread(proxy, gateway):
    def call() -> str:
        with openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0) as c:
            stream = c.chat.completions.create(
                model=PRICED_MODEL, messages=MESSAGES, max_tokens=8, stream=True
            )
            return "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)

    assert (await asyncio.to_thread(call)).strip() == "echo: Say something nice"
    assert len(gateway.settled) == 1


async def test_readme_example(proxy, gateway):
    printed = await asyncio.to_thread(run_snippet, "openai", proxy.base_url)
    assert printed[0] == "echo: Hi"
    assert printed[1].strip() == "echo: Hi"
    assert printed[2].startswith("tokens: ")
    assert printed[3] == f"cost USD: {gateway.settled[-1].amount / 1e6:.6f}"
    assert len(gateway.settled) == 3


async def test_refused_quote_surfaces_as_a_402_error(proxy, gateway):
    gateway.misbehave.price_multiplier = 10_000.0
    async with client(proxy) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model=PRICED_MODEL, messages=MESSAGES, max_tokens=8)
    assert info.value.status_code == 402
    assert info.value.code == "amount_over_cap"
    assert gateway.payments == []


# --- retries: the SDK's own (max_retries=2 by default) must never pay twice -----------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("failure", PAID_FAILURES, ids=str)
async def test_default_retries_never_pay_twice_for_a_failure_after_payment(
    start_proxy, gateway, failure, stream
):
    proxy = await start_proxy(paid_replays=failure.paid_replays)
    failure.arm(gateway)
    # The SDK's defaults: it retries 408, 409, 429 and 5xx twice.
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="unused") as c:
        assert c.max_retries == 2
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(
                model=PRICED_MODEL, messages=MESSAGES, max_tokens=8, stream=stream
            )
    assert info.value.status_code == 424
    headers = info.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert headers["x-blockrun-upstream-status"] == failure.upstream_status
    failure.assert_paid_once(gateway)


async def test_default_retries_still_retry_what_was_not_paid(proxy, gateway):
    gateway.misbehave.rate_limit = 1  # the unpaid probe gets a 429, which the proxy passes on
    gateway.misbehave.retry_after = "0"
    async with client(proxy, max_retries=2) as c:
        reply = await c.chat.completions.create(model=PRICED_MODEL, messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content
    assert len(gateway.settled) == 1
