"""The real openai SDK through a proxy paying ``--scheme upto``: each call settles what its
answer cost, not its max_tokens reservation, and says so in its headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from support.calls import PRICED_MODEL
from support.payments import priced
from support.upto import UptoChain, permit2_nonces, schemes_sent, upto_chain, upto_gateway

from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.x402 import usd

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say something nice"}]


@pytest.fixture
async def chain() -> AsyncIterator[UptoChain]:
    async with upto_chain() as c:
        yield c


@pytest.fixture
async def gateway(chain: UptoChain) -> AsyncIterator[FakeGateway]:
    async with upto_gateway(chain) as gw:
        yield gw


@pytest.fixture
async def proxy(start_proxy: Any, chain: UptoChain, wallet_key: str) -> Any:
    chain.fund(wallet_key)
    return await start_proxy(scheme="upto", rpc_url=chain.rpc_url)


def client(proxy: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0)


async def test_json_and_streamed_calls_cost_what_they_settled(
    proxy: Any, gateway: FakeGateway
) -> None:
    async with client(proxy) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=PRICED_MODEL, messages=MESSAGES
        )
        reply = raw.parse()
        stream = await c.chat.completions.with_raw_response.create(
            model=PRICED_MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream.parse()]
    assert reply.choices[0].message.content == "echo: Say something nice"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == "echo: Say something nice"
    ceiling = priced(gateway, {"model": PRICED_MODEL, "messages": MESSAGES})
    settled = [s.amount for s in gateway.settled]
    assert len(settled) == 2 and all(0 < amount < ceiling // 10 for amount in settled)
    for headers, amount in zip((raw.headers, stream.headers), settled, strict=True):
        assert headers["x-blockrun-cost-usd"] == usd(amount)
        assert headers["x-litellm-response-cost"] == usd(amount)
        assert headers["x-blockrun-ceiling-usd"] == usd(ceiling)
    assert schemes_sent(gateway) == ["upto", "upto"]
    assert len(permit2_nonces(gateway)) == 2  # one per call (and the fixture: one per call)


async def test_a_tool_call_costs_its_arguments_tokens(proxy: Any, gateway: FakeGateway) -> None:
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    async with client(proxy) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=PRICED_MODEL, messages=MESSAGES, tools=[tool], max_tokens=4000
        )
    assert raw.parse().choices[0].message.tool_calls
    (settlement,) = gateway.settled
    assert raw.headers["x-blockrun-cost-usd"] == usd(settlement.amount)
    body = {"model": PRICED_MODEL, "messages": MESSAGES, "tools": [tool], "max_tokens": 4000}
    assert settlement.amount < priced(gateway, body) // 10
