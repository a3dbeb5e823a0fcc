"""The LiteLLM library's openai provider pointed at the proxy (``openai/<id>``, ``api_base``)."""

from __future__ import annotations

import asyncio

import litellm
import openai
import pytest
from support.calls import FREE_MODEL, PRICED_MODEL
from support.clients import PAID_FAILURES, eventually, run_snippet, usd

pytestmark = pytest.mark.e2e

MODEL = "openai/" + PRICED_MODEL  # LiteLLM's openai provider + the BlockRun model id
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
        messages=MESSAGES, max_tokens=16, **kwargs(proxy, model="openai/" + FREE_MODEL)
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
    body = gateway.chat_requests[-1].body
    assert b'"max_completion_tokens":16' in body and b'"max_tokens"' not in body
    assert gateway.settled[0].amount == gateway.price_for(
        {"model": PRICED_MODEL, "messages": MESSAGES, "max_completion_tokens": 16}
    )


async def call(stream: bool = False, **extra) -> None:
    """One call, its stream read to the end."""
    response = await litellm.acompletion(messages=MESSAGES, max_tokens=8, stream=stream, **extra)
    if stream:
        async for _ in response:
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("failure", PAID_FAILURES, ids=str)
async def test_default_retries_never_pay_twice(start_proxy, gateway, failure, stream):
    # LiteLLM's defaults: no num_retries of its own; its inner openai client retries 408,
    # 409, 429 and 5xx twice. The proxy's 424 (and x-should-retry: false) stops it.
    proxy = await start_proxy(paid_replays=failure.paid_replays)
    failure.arm(gateway)
    with pytest.raises(openai.APIError) as info:
        await call(stream, **kwargs(proxy))
    assert getattr(info.value, "status_code", None) == 424
    failure.assert_paid_once(gateway)


@pytest.mark.parametrize("failure", PAID_FAILURES, ids=str)
async def test_router_default_retries_never_pay_twice(start_proxy, gateway, failure):
    # The Router (what the LiteLLM Proxy runs) retries twice by default, by status
    # (litellm.should_retry: 408, 409, 429, >= 500); a 424 is not one of them.
    proxy = await start_proxy(paid_replays=failure.paid_replays)
    router = litellm.Router(model_list=[{"model_name": "m", "litellm_params": kwargs(proxy)}])
    assert router.num_retries == 2
    failure.arm(gateway)
    with pytest.raises(openai.APIError) as info:
        await router.acompletion(model="m", messages=MESSAGES, max_tokens=8)
    assert getattr(info.value, "status_code", None) == 424
    failure.assert_paid_once(gateway)


async def test_through_a_router_what_was_not_paid_is_still_retried(proxy, gateway):
    gateway.misbehave.rate_limit = 1  # a 429 on the unpaid probe: retrying it is free
    gateway.misbehave.retry_after = "0"
    router = litellm.Router(model_list=[{"model_name": "m", "litellm_params": kwargs(proxy)}])
    reply = await router.acompletion(model="m", messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content
    assert len(gateway.settled) == 1


async def test_num_retries_on_a_plain_call_retries_even_a_424(start_proxy, gateway):
    # Why the README says to leave num_retries unset on litellm.completion: LiteLLM's own
    # loop there (completion_with_retries) retries every error, 4xx included, and each
    # retry is signed and paid again. No status can prevent it; the Router does not do it.
    # If this starts failing, LiteLLM changed, and the README's warning can go.
    proxy = await start_proxy()
    gateway.misbehave.replay_on_paid = True  # every paid send: "already used"
    with pytest.raises(openai.APIError) as info:
        await call(num_retries=2, **kwargs(proxy))
    assert getattr(info.value, "status_code", None) == 424
    assert len({p.nonce for p in gateway.payments}) == 3  # the call, then two paid retries


async def test_default_retries_still_retry_what_was_not_paid(proxy, gateway):
    gateway.misbehave.rate_limit = 1
    gateway.misbehave.retry_after = "0"
    reply = await litellm.acompletion(messages=MESSAGES, max_tokens=8, **kwargs(proxy))
    assert reply.choices[0].message.content
    assert len(gateway.settled) == 1
