"""langchain-openai's ChatOpenAI pointed at the proxy: invoke, stream, bind_tools."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from support.calls import PRICED_MODEL
from support.clients import PAID_FAILURES, run_snippet

pytestmark = pytest.mark.e2e


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def chat_model(proxy, **kwargs) -> ChatOpenAI:
    kwargs.setdefault("max_retries", 0)
    return ChatOpenAI(model=PRICED_MODEL, base_url=proxy.base_url, api_key="unused", **kwargs)


async def test_readme_example(proxy, gateway):
    printed = await asyncio.to_thread(run_snippet, "langchain", proxy.base_url)
    assert len(printed) == 3
    assert printed[0] == "echo: Hi"
    assert printed[1].strip() == "echo: Hi"  # the fake pads streamed text with spaces
    assert printed[2] == "get_weather"
    assert len(gateway.settled) == 3


async def test_ainvoke(proxy, gateway):
    answer = await chat_model(proxy).ainvoke("Hello there")
    assert answer.content == "echo: Hello there"
    assert answer.usage_metadata["total_tokens"] > 0
    assert len(gateway.settled) == 1


async def test_astream_reassembles_and_gets_usage(proxy, gateway):
    llm = chat_model(proxy, stream_usage=True)
    chunks = [chunk async for chunk in llm.astream("Hello there")]
    assert len(chunks) > 2
    assert "".join(str(c.content) for c in chunks).strip() == "echo: Hello there"
    total = sum(c.usage_metadata["total_tokens"] for c in chunks if c.usage_metadata)
    assert total > 0
    assert b'"stream_options":{"include_usage":true}' in gateway.chat_requests[-1].body
    assert len(gateway.settled) == 1


async def test_bind_tools_invoke(proxy, gateway):
    answer = await chat_model(proxy).bind_tools([get_weather]).ainvoke("Weather in Paris?")
    assert answer.tool_calls == [
        {
            "name": "get_weather",
            "args": {"echo": "Weather in Paris?"},
            "id": answer.tool_calls[0]["id"],
            "type": "tool_call",
        }
    ]
    sent = json.loads(gateway.chat_requests[-1].body)
    assert sent["tools"][0]["function"]["name"] == "get_weather"


async def test_bind_tools_stream_merges_the_split_tool_call(proxy, gateway):
    llm = chat_model(proxy).bind_tools([get_weather])
    merged: AIMessageChunk | None = None
    count = 0
    async for chunk in llm.astream("Weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
        count += 1
    assert merged is not None and count > 3
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        ("get_weather", {"echo": "Weather in Paris?"})
    ]


@pytest.mark.parametrize("failure", PAID_FAILURES, ids=str)
async def test_default_retries_never_pay_twice(start_proxy, gateway, failure):
    proxy = await start_proxy(paid_replays=failure.paid_replays)
    failure.arm(gateway)
    llm = ChatOpenAI(
        model=PRICED_MODEL, base_url=proxy.base_url, api_key="unused"
    )  # default retries
    assert llm.root_async_client.max_retries == 2  # langchain leaves the SDK's default
    with pytest.raises(openai.APIStatusError) as info:
        await llm.ainvoke("Hello")
    assert info.value.status_code == 424
    failure.assert_paid_once(gateway)
