"""The real openai SDK through the proxy on the other two rails: Solana (every payment
judged by the official x402 SVM verifier) and the BlockRun API key."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from support.calls import PRICED_MODEL

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.testing import ApiKeyFakeGateway, SolanaFakeGateway

MESSAGES = [{"role": "user", "content": "Say something nice"}]

pytestmark = pytest.mark.e2e


def client(proxy: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0)


async def test_solana_paid_calls_plain_and_streamed(
    start_solana_proxy: Any, solana_gateway: SolanaFakeGateway
) -> None:
    proxy = await start_solana_proxy()
    async with client(proxy) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=PRICED_MODEL, messages=MESSAGES, max_tokens=32
        )
        reply = raw.parse()
        assert reply.choices[0].message.content == "echo: Say something nice"
        assert float(raw.headers["x-blockrun-cost-usd"]) > 0
        for call in range(1, 3):
            stream = await c.chat.completions.create(
                model=PRICED_MODEL,
                messages=MESSAGES,
                stream=True,
                max_tokens=16 * call,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert text.strip() == "echo: Say something nice"
            assert chunks[-1].usage is not None
    assert [p.accepted for p in solana_gateway.payments] == [True, True, True]
    assert len({p.nonce for p in solana_gateway.payments}) == 3  # one transaction per call
    assert len(solana_gateway.settled) == 3
    assert proxy.app[CORE_KEY].payer.solana.signatures == 3


async def test_solana_a_failure_after_payment_is_not_retried_by_the_sdk(
    start_solana_proxy: Any, solana_gateway: SolanaFakeGateway
) -> None:
    proxy = await start_solana_proxy()
    solana_gateway.misbehave.refuse_paid = 1
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="unused") as c:  # retries on
        with pytest.raises(openai.APIStatusError) as exc:
            await c.chat.completions.create(model=PRICED_MODEL, messages=MESSAGES, max_tokens=8)
    assert exc.value.status_code == 424
    assert len(solana_gateway.payments) == 1  # the SDK's retries never sent a second one


async def test_api_key_calls_plain_and_streamed(
    run_proxy: Any, api_host: ApiKeyFakeGateway
) -> None:
    key = api_host.new_key(credit=10_000_000)
    proxy = await run_proxy(api_key=key, api_key_url=api_host.base_url)
    async with client(proxy) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=PRICED_MODEL, messages=MESSAGES, max_tokens=32
        )
        assert raw.parse().choices[0].message.content == "echo: Say something nice"
        assert raw.headers["x-blockrun-cost-source"] == "none"
        assert "x-litellm-response-cost" not in raw.headers
        stream = await c.chat.completions.create(
            model=PRICED_MODEL, messages=MESSAGES, stream=True, max_tokens=16
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text.strip() == "echo: Say something nice"
    assert [c.key for c in api_host.charges] == [key, key]


async def test_api_key_without_credit_is_a_402_the_sdk_does_not_retry(
    run_proxy: Any, api_host: ApiKeyFakeGateway
) -> None:
    proxy = await run_proxy(api_key=api_host.new_key(credit=0), api_key_url=api_host.base_url)
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="unused") as c:
        with pytest.raises(openai.APIStatusError) as exc:
            await c.chat.completions.create(model=PRICED_MODEL, messages=MESSAGES)
    assert exc.value.status_code == 402
    assert exc.value.code == "api_key_no_credit"
    assert api_host.charges == []
