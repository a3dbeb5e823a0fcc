"""The real google-genai SDK through the proxy's Gemini routes, against the fake gateway.

The SDK's base URL is the proxy's root and its API version ``v1beta`` (BlockRun serves
Gemini there; the SDK's default is ``v1``). Paid, streamed as ``?alt=sse``, the gateway's
bytes unchanged (``WireLog`` keeps what the SDK's httpx client read), one nonce per call
(the ``gateway`` fixture checks it per request id).
"""

from __future__ import annotations

import asyncio

import pytest
from google import genai
from google.genai import errors, types
from support.clients import WireLog, run_snippet
from support.payments import nonces

pytestmark = pytest.mark.e2e

GEMINI = "gemini-2.5-flash"
GENERATE = f"/api/v1beta/models/{GEMINI}:generateContent"
STREAM = f"/api/v1beta/models/{GEMINI}:streamGenerateContent"


def client(proxy, wire: WireLog, **options) -> genai.Client:
    http = types.HttpOptions(
        base_url=proxy.url,
        api_version="v1beta",
        httpx_client=wire.client(),
        httpx_async_client=wire.async_client(),
        **options,
    )
    return genai.Client(api_key="unused", http_options=http)


async def test_readme_example(proxy, gateway):
    printed = await asyncio.to_thread(run_snippet, "google-genai", proxy.url)
    assert [line.strip() for line in printed] == ["echo: Hi", "echo: Hi"]  # padded stream
    assert len(gateway.settled) == 2 and len(nonces(gateway)) == 2
    assert [r.path for r in gateway.requests if r.payment is not None] == [GENERATE, STREAM]


async def test_generate_content_is_paid_once_and_relayed_byte_for_byte(proxy, gateway):
    wire = WireLog()
    response = await client(proxy, wire).aio.models.generate_content(
        model=GEMINI,
        contents="Paris?",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64),
    )
    assert response.text == "echo: Paris?"
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    probe, paid = [r for r in gateway.requests if r.path == GENERATE]
    assert probe.payment is None and paid.payment is not None and paid.body == probe.body
    assert b'"maxOutputTokens":64' in paid.body.replace(b" ", b"")
    assert "x-goog-api-key" not in {h.lower() for h in paid.headers}  # the SDK's key stays
    assert len(gateway.settled) == 1 and len(nonces(gateway)) == 1


async def test_generate_content_stream_arrives_as_the_gateway_sent_it(proxy, gateway):
    wire = WireLog()
    stream = await client(proxy, wire).aio.models.generate_content_stream(
        model=GEMINI, contents="Paris?"
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks).strip() == "echo: Paris?"
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == "STOP"
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    assert [r.query for r in gateway.requests if r.path == STREAM] == ["alt=sse", "alt=sse"]
    assert len(gateway.settled) == 1 and len(nonces(gateway)) == 1


async def test_a_sync_stream_in_a_thread(proxy, gateway):
    wire = WireLog()

    def call() -> str:
        chunks = client(proxy, wire).models.generate_content_stream(model=GEMINI, contents="Hi")
        return "".join(c.text or "" for c in chunks)

    assert (await asyncio.to_thread(call)).strip() == "echo: Hi"
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    assert len(gateway.settled) == 1


async def test_the_proxy_token_goes_in_the_options_headers(start_proxy, gateway):
    token = "a-proxy-token-of-32-characters!!"
    proxy = await start_proxy(token=token)
    wire = WireLog()
    with_token = client(proxy, wire, headers={"Authorization": f"Bearer {token}"})
    response = await with_token.aio.models.generate_content(model=GEMINI, contents="Hi")
    assert response.text == "echo: Hi"
    with pytest.raises(errors.ClientError) as info:  # the SDK's api_key is not the token
        await client(proxy, wire).aio.models.generate_content(model=GEMINI, contents="Hi")
    assert info.value.code == 401
    assert len(gateway.settled) == 1
    for sent in gateway.requests:
        assert not {"authorization", "x-goog-api-key"} & {h.lower() for h in sent.headers}
