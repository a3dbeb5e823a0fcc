"""The in-process ``blockrun/`` LiteLLM provider, paying the fake gateway directly (no proxy)."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys

import litellm
import openai
import pytest
from support.calls import PRICED_MODEL, TEST_NETWORK
from support.clients import PAID_FAILURES, eventually, run_snippet, usd

from blockrun_proxy.config import Settings
from blockrun_proxy.litellm import BlockrunLLM, register
from blockrun_proxy.x402 import Signer

pytestmark = pytest.mark.e2e

MODEL = "blockrun/" + PRICED_MODEL
MESSAGES = [{"role": "user", "content": "Say something nice"}]
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
def provider(gateway, wallet_key):
    handler = register(
        Settings(api_url=gateway.base_url, networks=(TEST_NETWORK,), wallet_key=wallet_key)
    )
    yield handler
    handler.configure(None)  # stops its loop thread; the next test configures it again


def test_register_is_idempotent():
    first = register()
    assert register() is first
    assert [e["provider"] for e in litellm.custom_provider_map].count("blockrun") == 1
    assert isinstance(first, BlockrunLLM)


async def test_readme_example_reads_the_environment(gateway, wallet_key, monkeypatch, cost_log):
    monkeypatch.setenv("BLOCKRUN_API_URL", gateway.base_url)
    monkeypatch.setenv("BLOCKRUN_PROXY_NETWORKS", TEST_NETWORK)
    monkeypatch.setenv("BLOCKRUN_WALLET_KEY", wallet_key)
    handler = register()
    handler.configure(None)  # settings are read at the first call: re-read them now
    try:
        printed = await asyncio.to_thread(run_snippet, "litellm-provider", "unused")
    finally:
        handler.configure(None)
    assert printed[0] == "echo: Hi"
    assert printed[1] == f"cost USD: {usd(gateway.settled[0].amount)}"
    assert printed[2].strip() == "echo: Hi"
    assert {p.payer for p in gateway.payments} == {Signer(wallet_key).address}
    await eventually(lambda: len(cost_log.costs) == 2)
    assert cost_log.costs == [usd(s.amount) for s in gateway.settled]


async def test_async_plain_and_stream_record_the_settled_cost(provider, gateway, cost_log):
    reply = await litellm.acompletion(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert reply.choices[0].message.content == "echo: Say something nice"
    assert reply.usage.total_tokens > 0
    stream = await litellm.acompletion(model=MODEL, messages=MESSAGES, max_tokens=16, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.strip() == "echo: Say something nice"
    assert len(gateway.settled) == 2
    expected = sorted(usd(s.amount) for s in gateway.settled)
    await eventually(lambda: sorted(c or 0 for c in cost_log.costs) == expected)


async def test_stream_with_include_usage_shows_usage_and_cost(provider, gateway):
    stream = await litellm.acompletion(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage.total_tokens > 0
    assert chunks[-1].usage.cost == usd(gateway.settled[0].amount)


async def test_api_key_pays_from_another_wallet_per_call(provider, gateway, wallet_key):
    other = "0x" + secrets.token_hex(32)
    await litellm.acompletion(model=MODEL, messages=MESSAGES, max_tokens=8, api_key=other)
    await litellm.acompletion(model=MODEL, messages=MESSAGES, max_tokens=8)
    payers = [p.payer for p in gateway.payments]
    assert payers == [Signer(other).address, Signer(wallet_key).address]
    assert all(p.accepted for p in gateway.payments)


async def test_a_malformed_api_key_is_refused_without_echoing_it(provider, gateway):
    bad = "0x" + "zz" * 32
    with pytest.raises(litellm.AuthenticationError) as info:
        await litellm.acompletion(model=MODEL, messages=MESSAGES, max_tokens=8, api_key=bad)
    assert bad not in str(info.value)
    assert gateway.requests == []


async def test_sync_plain_and_stream(provider, gateway):
    def call() -> tuple[str, str]:
        reply = litellm.completion(model=MODEL, messages=MESSAGES, max_tokens=16)
        stream = litellm.completion(model=MODEL, messages=MESSAGES, max_tokens=16, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return reply.choices[0].message.content, text

    plain, streamed = await asyncio.to_thread(call)
    assert plain == "echo: Say something nice"
    assert streamed.strip() == plain
    assert len(gateway.settled) == 2


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_streamed_tool_call_arrives_intact(provider, gateway, asynchronous):
    kwargs = {"model": MODEL, "messages": MESSAGES, "max_tokens": 64, "tools": [TOOL]}
    if asynchronous:
        stream = await litellm.acompletion(stream=True, **kwargs)
        chunks = [c async for c in stream]
    else:
        chunks = await asyncio.to_thread(lambda: list(litellm.completion(stream=True, **kwargs)))
    message = litellm.stream_chunk_builder(chunks).choices[0].message
    (call,) = message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"echo": "Say something nice"}


async def test_every_parameter_reaches_the_gateway(provider, gateway):
    await litellm.acompletion(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=32,
        temperature=0.2,
        tools=[TOOL],
        tool_choice="none",
        response_format={"type": "json_object"},
        search_parameters={"mode": "on", "max_search_results": 3},
        fallback_models=["anthropic/claude-sonnet-4.6"],
        extra_body={"search": True},
    )
    sent = json.loads(gateway.chat_requests[-1].body)
    assert sent == {
        "model": PRICED_MODEL,
        "messages": MESSAGES,
        "max_tokens": 32,
        "temperature": 0.2,
        "tools": [TOOL],
        "tool_choice": "none",
        "response_format": {"type": "json_object"},
        "search_parameters": {"mode": "on", "max_search_results": 3},
        "fallback_models": ["anthropic/claude-sonnet-4.6"],
        "search": True,
    }


async def test_default_max_tokens_is_added_as_by_the_proxy(provider, gateway):
    await litellm.acompletion(model=MODEL, messages=MESSAGES)
    assert json.loads(gateway.chat_requests[-1].body)["max_tokens"] == 1024


async def test_over_cap_quote_is_refused_unpaid(provider, gateway):
    gateway.misbehave.price_multiplier = 10_000.0
    with pytest.raises(litellm.PaymentRequiredError, match="over the per-call cap"):
        await litellm.acompletion(model=MODEL, messages=MESSAGES, max_tokens=8)
    with pytest.raises(litellm.PaymentRequiredError):
        await asyncio.to_thread(
            litellm.completion, model=MODEL, messages=MESSAGES, max_tokens=8, stream=True
        )
    assert gateway.payments == []


@pytest.mark.parametrize("stream", [False, True])
async def test_failure_after_payment_says_so_and_is_paid_once(provider, gateway, stream):
    # The gateway settles then fails; the replay of the same signature finds it used (409).
    gateway.misbehave.fail_after_settle = 1
    with pytest.raises(openai.APIError, match=r"used.*\. A payment was made for this call") as info:
        response = await litellm.acompletion(
            model=MODEL, messages=MESSAGES, max_tokens=8, stream=stream
        )
        async for _ in response:
            pass
    # 424, as the proxy answers it; LiteLLM maps a custom provider's 424 to one of its 4xx
    # classes, which its own retry rule (litellm.should_retry) leaves alone too.
    assert not litellm.should_retry(info.value.status_code)
    assert len(gateway.settled) == 1
    assert len({p.nonce for p in gateway.payments}) == 1


# The provider runs the proxy's core with its default replays (2).
DEFAULT_REPLAY_FAILURES = [f for f in PAID_FAILURES if f.paid_replays == 2]


@pytest.mark.parametrize("failure", DEFAULT_REPLAY_FAILURES, ids=str)
async def test_router_default_retries_never_pay_twice(provider, gateway, failure):
    # The Router retries twice by default, by status (408, 409, 429, >= 500): not a 424.
    router = litellm.Router(model_list=[{"model_name": "m", "litellm_params": {"model": MODEL}}])
    assert router.num_retries == 2
    failure.arm(gateway)
    with pytest.raises(openai.APIError) as info:
        await router.acompletion(model="m", messages=MESSAGES, max_tokens=8)
    assert not litellm.should_retry(info.value.status_code)
    assert "A payment was made for this call" in str(info.value)
    failure.assert_paid_once(gateway)


async def test_concurrent_async_calls_share_one_core(provider, gateway):
    replies = await asyncio.gather(
        *[
            litellm.acompletion(
                model=MODEL, messages=[{"role": "user", "content": f"n{i}"}], max_tokens=8
            )
            for i in range(20)
        ]
    )
    assert sorted(r.choices[0].message.content for r in replies) == sorted(
        f"echo: n{i}" for i in range(20)
    )
    assert len({s.nonce for s in gateway.settled}) == 20


def test_the_proxy_never_imports_litellm():
    code = (
        "import sys, blockrun_proxy.app, blockrun_proxy.cli, blockrun_proxy.server, "
        "blockrun_proxy.inprocess; assert 'litellm' not in sys.modules, 'litellm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
