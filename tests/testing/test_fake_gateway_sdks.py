"""The official SDKs parse everything the fake sends, streamed and not.

Each SDK is pointed straight at the fake (no proxy), the way a user points it at
BlockRun, and pays by hand: the test probes the 402 with aiohttp, signs it with
eth_account and hands the header to the SDK call. That keeps these tests about the
fake's shapes; the proxy's own end-to-end tests come with the proxy routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import types
from support.gateway_client import Payer, requirement_of

from blockrun_proxy.testing import FakeGateway

CLAUDE = "claude-sonnet-4-6"
GEMINI = "gemini-2.5-flash"


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway(verify="fast", stream_events=5, speech_format="audio")
    await gateway.start()
    yield gateway
    await gateway.close()


async def signed(gw: FakeGateway, payer: Payer, path: str, body: dict[str, Any]) -> str:
    """A PAYMENT-SIGNATURE for ``body`` on ``path``, from the fake's own 402."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.base_url}{path}", json=body) as resp,
    ):
        assert resp.status == 402, await resp.text()
        return payer.pay(requirement_of(resp.headers["PAYMENT-REQUIRED"]))


def paid(header: str) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": header}


# ------------------------------------------------------------------- anthropic


def claude(gw: FakeGateway) -> anthropic.AsyncAnthropic:
    # BlockRun's own AnthropicClient uses base_url=<gateway>/api the same way.
    return anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="unused", max_retries=0)


def anthropic_body(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 128,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


async def test_anthropic_messages_create(gw: FakeGateway, payer: Payer) -> None:
    body = anthropic_body("Paris?")
    header = await signed(gw, payer, "/v1/messages", body)
    async with claude(gw) as client:
        message = await client.messages.create(**body, extra_headers=paid(header))
    assert message.type == "message" and message.stop_reason == "end_turn"
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock) and block.text == "echo: Paris?"
    assert message.usage.input_tokens > 0
    assert len(gw.settled) == 1


async def test_anthropic_messages_stream(gw: FakeGateway, payer: Payer) -> None:
    body = anthropic_body("Paris?")
    header = await signed(gw, payer, "/v1/messages", body)
    async with (
        claude(gw) as client,
        client.messages.stream(**body, extra_headers=paid(header)) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) == 5 and "".join(texts).rstrip() == "echo: Paris?"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert len(gw.settled) == 1


async def test_anthropic_streamed_tool_use(gw: FakeGateway, payer: Payer) -> None:
    tools = [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}]
    body = anthropic_body("Paris?", tools=tools)
    header = await signed(gw, payer, "/v1/messages", {**body, "stream": True})
    async with (
        claude(gw) as client,
        client.messages.stream(**body, extra_headers=paid(header)) as stream,
    ):
        final = await stream.get_final_message()
    [block] = final.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.name == "get_weather" and block.input == {"echo": "Paris?"}
    assert final.stop_reason == "tool_use"


async def test_anthropic_count_tokens(gw: FakeGateway) -> None:
    async with claude(gw) as client:
        counted = await client.messages.count_tokens(
            model=CLAUDE, messages=[{"role": "user", "content": "x" * 40}]
        )
    assert counted.input_tokens == 14
    assert gw.payments == []


# ---------------------------------------------------------------- google-genai


def gemini(gw: FakeGateway) -> genai.Client:
    # google-genai defaults to the v1 API; BlockRun serves Gemini under v1beta.
    options = types.HttpOptions(base_url=gw.base_url, api_version="v1beta")
    return genai.Client(api_key="unused", http_options=options)


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Paris?"}]}]}


async def test_gemini_generate_content(gw: FakeGateway, payer: Payer) -> None:
    header = await signed(gw, payer, f"/v1beta/models/{GEMINI}:generateContent", GEMINI_BODY)
    config = types.GenerateContentConfig(http_options=types.HttpOptions(headers=paid(header)))
    response = await gemini(gw).aio.models.generate_content(
        model=GEMINI, contents="Paris?", config=config
    )
    assert response.text == "echo: Paris?"
    assert response.usage_metadata is not None and response.usage_metadata.total_token_count
    assert gw.requests[-1].path == f"/api/v1beta/models/{GEMINI}:generateContent"
    assert len(gw.settled) == 1


async def test_gemini_generate_content_stream(gw: FakeGateway, payer: Payer) -> None:
    path = f"/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse"
    header = await signed(gw, payer, path, GEMINI_BODY)
    config = types.GenerateContentConfig(http_options=types.HttpOptions(headers=paid(header)))
    stream = await gemini(gw).aio.models.generate_content_stream(
        model=GEMINI, contents="Paris?", config=config
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 5
    assert "".join(c.text or "" for c in chunks).rstrip() == "echo: Paris?"
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == "STOP"
    assert gw.requests[-1].query == "alt=sse"
    assert len(gw.settled) == 1


async def test_gemini_function_call(gw: FakeGateway, payer: Payer) -> None:
    declaration = {"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {}}}
    body = {**GEMINI_BODY, "tools": [{"functionDeclarations": [declaration]}]}
    header = await signed(gw, payer, f"/v1beta/models/{GEMINI}:generateContent", body)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(**declaration)])],
        http_options=types.HttpOptions(headers=paid(header)),
    )
    response = await gemini(gw).aio.models.generate_content(
        model=GEMINI, contents="Paris?", config=config
    )
    assert response.function_calls is not None
    [call] = response.function_calls
    assert call.name == "get_weather" and call.args == {"echo": "Paris?"}


# ---------------------------------------------------------------------- openai


def oai(gw: FakeGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key="unused", max_retries=0)


async def test_openai_images_generate(gw: FakeGateway, payer: Payer) -> None:
    body = {"model": "google/nano-banana", "prompt": "a cat", "n": 1}
    header = await signed(gw, payer, "/v1/images/generations", body)
    async with oai(gw) as client:
        result = await client.images.generate(**body, extra_headers=paid(header))
    assert result.data is not None
    [image] = result.data
    assert image.url is not None and image.url.endswith(".png")
    assert image.revised_prompt == "a cat"
    async with aiohttp.ClientSession() as session, session.get(image.url) as hosted:
        assert hosted.status == 200 and hosted.headers["Content-Type"] == "image/png"


async def test_openai_audio_speech_streamed(gw: FakeGateway, payer: Payer) -> None:
    body = {"model": "elevenlabs/flash-v2.5", "voice": "sarah", "input": "Hello there"}
    header = await signed(gw, payer, "/v1/audio/speech", body)
    async with (
        oai(gw) as client,
        client.audio.speech.with_streaming_response.create(
            **body, extra_headers=paid(header)
        ) as response,
    ):
        assert response.headers["Content-Type"] == "audio/mpeg"
        audio = b"".join([piece async for piece in response.iter_bytes()])
    assert audio.startswith(b"ID3") and audio == gw.sent_bodies[-1]
    assert len(gw.settled) == 1


async def test_openai_audio_speech_against_blockruns_json_answer(payer: Payer) -> None:
    # What BlockRun documents: JSON naming a hosted file, which the SDK hands over as bytes.
    async with FakeGateway(verify="fast") as gw:
        body = {"model": "elevenlabs/flash-v2.5", "voice": "sarah", "input": "Hello"}
        header = await signed(gw, payer, "/v1/audio/speech", body)
        async with oai(gw) as client:
            response = await client.audio.speech.create(**body, extra_headers=paid(header))
            answer = response.json()
    assert answer["data"][0]["format"] == "mp3"
