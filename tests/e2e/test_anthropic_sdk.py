"""The real anthropic SDK through the proxy's /v1/messages, against the fake gateway.

What a user of the SDK (or of Claude Code, which speaks the same API) gets: paid calls,
streamed as the gateway streams them, the gateway's bytes unchanged (``WireLog`` keeps what
the SDK's httpx client read), one nonce per call (the ``gateway`` fixture checks every
request id at teardown), token counting free, and no retry of a call that failed after
payment.
"""

from __future__ import annotations

import asyncio

import anthropic
import httpx2
import pytest
from support.clients import PAID_FAILURES, WireLog, run_snippet
from support.payments import nonces

from blockrun_proxy.testing import FakeGateway

pytestmark = pytest.mark.e2e

CLAUDE = "claude-sonnet-4-6"  # Anthropic's name, as Claude Code sends it; BlockRun maps it
HI = [{"role": "user", "content": "Hi there"}]
MESSAGES_PATH = "/api/v1/messages"
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def messages_requests(gateway: FakeGateway) -> list:
    return [r for r in gateway.requests if r.path == MESSAGES_PATH]


def client(proxy, wire: WireLog, **kwargs) -> anthropic.AsyncAnthropic:
    kwargs.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(
        base_url=proxy.url, api_key="unused", http_client=wire.async_client(httpx2), **kwargs
    )


async def test_readme_example(proxy, gateway):
    printed = await asyncio.to_thread(run_snippet, "anthropic", proxy.url)
    assert printed[0] == "echo: Hi"
    assert printed[1].strip() == "echo: Hi"
    assert printed[2].startswith("input tokens: ")
    assert printed[3] == f"cost USD: {gateway.settled[-1].amount / 1e6:.6f}"
    assert len(gateway.settled) == 3  # create, stream, create; count_tokens is free
    assert len(nonces(gateway)) == 3


async def test_create_is_paid_once_and_relayed_byte_for_byte(proxy, gateway):
    wire = WireLog()
    async with client(proxy, wire) as c:
        message = await c.messages.create(model=CLAUDE, max_tokens=64, messages=HI)
    assert message.content[0].text == "echo: Hi there"
    assert message.model == CLAUDE and message.usage.input_tokens > 0
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    probe, paid = messages_requests(gateway)
    assert probe.payment is None and paid.payment is not None
    assert paid.body == probe.body  # the SDK's bytes, as it sent them
    assert len(gateway.settled) == 1 and len(nonces(gateway)) == 1


async def test_stream_arrives_as_the_gateway_sent_it(proxy, gateway):
    wire = WireLog()
    async with (
        client(proxy, wire) as c,
        c.messages.stream(model=CLAUDE, max_tokens=64, messages=HI) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) > 1 and "".join(texts).strip() == "echo: Hi there"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert bytes(wire.bodies[-1]).startswith(b"event: message_start\n")
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    assert len(gateway.settled) == 1 and len(nonces(gateway)) == 1


async def test_streamed_tool_use_and_headers_reach_the_gateway(proxy, gateway):
    wire = WireLog()
    async with (
        client(proxy, wire, default_headers={"anthropic-beta": "tools-2024-04-04"}) as c,
        c.messages.stream(model=CLAUDE, max_tokens=64, messages=HI, tools=[TOOL]) as stream,
    ):
        final = await stream.get_final_message()
    (block,) = final.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.name == "get_weather" and block.input == {"echo": "Hi there"}
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    versions = {sent.headers["anthropic-version"] for sent in messages_requests(gateway)}
    assert len(versions) == 1 and versions != {""}  # the SDK's own, on probe and paid send
    for sent in messages_requests(gateway):
        assert sent.headers["anthropic-beta"] == "tools-2024-04-04"
        assert "x-api-key" not in sent.headers  # the SDK's key never goes upstream


async def test_count_tokens_is_free(proxy, gateway):
    wire = WireLog()
    async with client(proxy, wire) as c:
        counted = await c.messages.count_tokens(model=CLAUDE, messages=HI)
    assert counted.input_tokens > 0
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    assert gateway.payments == []


async def test_a_sync_client_streams_too(proxy, gateway):
    wire = WireLog()

    def call() -> str:
        with (
            anthropic.Anthropic(
                base_url=proxy.url, api_key="unused", http_client=wire.client(httpx2), max_retries=0
            ) as c,
            c.messages.stream(model=CLAUDE, max_tokens=64, messages=HI) as stream,
        ):
            return "".join(stream.text_stream)

    assert (await asyncio.to_thread(call)).strip() == "echo: Hi there"
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    assert len(gateway.settled) == 1


@pytest.mark.parametrize("kind", ["api_key", "auth_token"])
async def test_the_proxy_token_is_what_the_sdk_sends_as_bearer(start_proxy, gateway, kind):
    # This SDK sends api_key and auth_token alike as Authorization: Bearer, the proxy's
    # token header; neither reaches the gateway.
    token = "a-proxy-token-of-32-characters!!"
    proxy = await start_proxy(token=token)
    async with anthropic.AsyncAnthropic(base_url=proxy.url, max_retries=0, **{kind: token}) as c:
        message = await c.messages.create(model=CLAUDE, max_tokens=16, messages=HI)
        assert message.content[0].text == "echo: Hi there"
    async with anthropic.AsyncAnthropic(base_url=proxy.url, max_retries=0, **{kind: "no"}) as c:
        with pytest.raises(anthropic.AuthenticationError):
            await c.messages.create(model=CLAUDE, max_tokens=16, messages=HI)
    assert len(gateway.settled) == 1
    for sent in gateway.requests:
        assert not {"authorization", "x-api-key"} & {h.lower() for h in sent.headers}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("failure", PAID_FAILURES, ids=str)
async def test_default_retries_never_pay_twice(start_proxy, gateway, failure, stream):
    # The SDK's defaults retry 408, 409, 429 and 5xx twice (and obey x-should-retry).
    proxy = await start_proxy(paid_replays=failure.paid_replays)
    failure.arm(gateway)
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="unused") as c:
        assert c.max_retries == 2
        with pytest.raises(anthropic.APIStatusError) as info:
            response = await c.messages.create(
                model=CLAUDE, max_tokens=16, messages=HI, stream=stream
            )
            async for _ in response:
                pass
    assert info.value.status_code == 424
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(nonces(gateway)) == 1
    assert len(gateway.settled) == failure.settled
    assert [r.payment is None for r in messages_requests(gateway)][:1] == [True]  # one probe
    assert sum(r.payment is None for r in messages_requests(gateway)) == 1
