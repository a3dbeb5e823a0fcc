"""The LiteLLM library's openai provider pointed at the proxy (``openai/<id>``, ``api_base``)."""

from __future__ import annotations

import asyncio

import litellm
import pytest
from clients_support import FREE, PAID, eventually, run_snippet, usd

pytestmark = pytest.mark.e2e

MODEL = "openai/" + PAID  # LiteLLM's openai provider + the BlockRun model id
MESSAGES = [{"role": "user", "content": "Say something nice"}]


def kwargs(proxy, **extra):
    return {"model": MODEL, "api_base": proxy.base_url, "api_key": "unused", **extra}


async def test_readme_example(proxy, gateway, cost_log):
    printed = await asyncio.to_thread(run_snippet, "litellm", proxy.base_url)
    assert printed[0] == "echo: Hi"
    assert printed[1] == f"cost USD: {usd(gateway.settled[0].amount)}"
    assert printed[2].strip() == "echo: Hi"
    await eventually(lambda: len(cost_log.costs) == 2)
    assert cost_log.costs == [usd(s.amount) for s in gateway.settled]


async def test_completion_records_the_settled_cost(proxy, gateway, cost_log):
    reply = await asyncio.to_thread(
        litellm.completion, messages=MESSAGES, max_tokens=16, **kwargs(proxy)
    )
    assert reply.choices[0].message.content == "echo: Say something nice"
    (settled,) = gateway.settled
    assert reply._hidden_params["response_cost"] == usd(settled.amount)
    await eventually(lambda: cost_log.costs == [usd(settled.amount)])


async def test_a_free_model_records_zero_not_a_catalogue_price(proxy, gateway, cost_log):
    reply = await litellm.acompletion(
        messages=MESSAGES, max_tokens=16, **kwargs(proxy, model="openai/" + FREE)
    )
    assert reply.choices[0].message.content
    assert gateway.payments == []
    await eventually(lambda: cost_log.costs == [0.0])


async def test_stream_records_the_settled_cost(proxy, gateway, cost_log):
    def call() -> str:
        stream = litellm.completion(messages=MESSAGES, max_tokens=16, stream=True, **kwargs(proxy))
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert (await asyncio.to_thread(call)).strip() == "echo: Say something nice"
    (settled,) = gateway.settled
    await eventually(lambda: cost_log.costs == [usd(settled.amount)])


async def test_acompletion_and_async_stream(proxy, gateway, cost_log):
    reply = await litellm.acompletion(messages=MESSAGES, max_tokens=16, **kwargs(proxy))
    assert reply.choices[0].message.content == "echo: Say something nice"
    stream = await litellm.acompletion(
        messages=MESSAGES,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs(proxy),
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "echo: Say something nice"
    assert chunks[-1].usage.total_tokens > 0
    assert len(gateway.settled) == 2
    expected = sorted(usd(s.amount) for s in gateway.settled)
    await eventually(lambda: sorted(c or 0 for c in cost_log.costs) == expected)


async def test_max_tokens_is_renamed_for_gpt5_and_still_priced(proxy, gateway):
    # LiteLLM sends max_completion_tokens for gpt-5 names; the price must follow it.
    await litellm.acompletion(messages=MESSAGES, max_tokens=16, **kwargs(proxy))
    body = gateway.requests[-1].body
    assert b'"max_completion_tokens":16' in body and b'"max_tokens"' not in body
    assert gateway.settled[0].amount == gateway.price_for(
        {"model": PAID, "messages": MESSAGES, "max_completion_tokens": 16}
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_default_retries_never_pay_twice(start_proxy, gateway, stream):
    # LiteLLM's inner openai client retries 5xx twice by default; x-should-retry stops it.
    proxy = await start_proxy(paid_replays=0)
    gateway.misbehave.fail_after_settle = 10
    with pytest.raises(litellm.InternalServerError):
        response = await litellm.acompletion(
            messages=MESSAGES, max_tokens=8, stream=stream, **kwargs(proxy)
        )
        async for _ in response:
            pass
    assert len(gateway.settled) == 1
    assert len([r for r in gateway.requests if r.payment is None]) == 1


async def test_default_retries_still_retry_what_was_not_paid(proxy, gateway):
    gateway.misbehave.rate_limit = 1
    gateway.misbehave.retry_after = "0"
    reply = await litellm.acompletion(messages=MESSAGES, max_tokens=8, **kwargs(proxy))
    assert reply.choices[0].message.content
    assert len(gateway.settled) == 1
