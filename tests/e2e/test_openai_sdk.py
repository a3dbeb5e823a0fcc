"""The real openai SDK against a running proxy in front of the running fake gateway."""

from __future__ import annotations

import asyncio

import openai
import pytest

PAID = "openai/gpt-5.5"
FREE = "nvidia/deepseek-v4-flash"
MESSAGES = [{"role": "user", "content": "Say something nice"}]

pytestmark = pytest.mark.e2e


def client(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", [PAID, FREE])
async def test_async_non_stream(proxy, gateway, model):
    async with client(proxy) as c:
        reply = await c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=32)
    assert reply.choices[0].message.content
    assert len(gateway.payments) == (1 if model == PAID else 0)


@pytest.mark.parametrize("model", [PAID, FREE])
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
    if model == PAID:
        assert [p.accepted for p in gateway.payments] == [True, True, True]
        assert len({p.nonce for p in gateway.payments}) == 3
    else:
        assert gateway.payments == []


async def test_stream_content_reassembles(proxy, gateway):
    async with client(proxy) as c:
        stream = await c.chat.completions.create(
            model=PAID, messages=MESSAGES, stream=True, max_tokens=16
        )
        text = "".join(
            [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        )
    assert text.strip()
    assert len(gateway.settled) == 1


async def test_sync_client_in_a_thread(proxy, gateway):
    def call() -> str:
        with openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0) as c:
            reply = c.chat.completions.create(model=PAID, messages=MESSAGES, max_tokens=8)
            return reply.choices[0].message.content or ""

    assert await asyncio.to_thread(call)
    assert len(gateway.settled) == 1


async def test_refused_quote_surfaces_as_a_402_error(proxy, gateway):
    gateway.misbehave.price_multiplier = 10_000.0
    async with client(proxy) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model=PAID, messages=MESSAGES, max_tokens=8)
    assert info.value.status_code == 402
    assert info.value.code == "amount_over_cap"
    assert gateway.payments == []
