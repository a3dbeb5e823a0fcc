"""The real openai SDK's images and speech through the proxy, against the fake gateway.

``images.generate`` parses BlockRun's image answer; ``audio.speech`` with a streaming
response gets the gateway's bytes unchanged: BlockRun's JSON naming a hosted file (what
its docs describe), or audio bytes when a gateway sends them (``speech_format="audio"``).
Paid once each, one nonce per call (the ``gateway`` fixture checks it per request id).
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from support.clients import WireLog, run_snippet
from support.payments import nonces

pytestmark = pytest.mark.e2e

SPEECH = {"model": "elevenlabs/flash-v2.5", "voice": "sarah", "input": "Hello there"}


def client(proxy, wire: WireLog) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=proxy.base_url, api_key="unused", max_retries=0, http_client=wire.async_client()
    )


@pytest.mark.parametrize("speech_format", ["json", "audio"])
async def test_readme_example(proxy, gateway, speech_format, tmp_path, monkeypatch):
    gateway.speech_format = speech_format
    monkeypatch.chdir(tmp_path)  # where the snippet saves hello.mp3
    printed = await asyncio.to_thread(run_snippet, "openai-media", proxy.base_url)
    image_answer, speech_answer = gateway.sent_bodies
    assert printed[0] == json.loads(image_answer)["data"][0]["url"]
    if speech_format == "json":
        assert printed[1] == "audio at: " + json.loads(speech_answer)["data"][0]["url"]
    else:
        assert printed[1] == "saved hello.mp3"
        assert (tmp_path / "hello.mp3").read_bytes() == speech_answer
    assert len(gateway.settled) == 2 and len(nonces(gateway)) == 2


async def test_images_generate_is_paid_once_and_relayed_byte_for_byte(proxy, gateway):
    wire = WireLog()
    async with client(proxy, wire) as c:
        raw = await c.images.with_raw_response.generate(
            model="google/nano-banana", prompt="a red fox", n=2, size="1024x1024"
        )
    result = raw.parse()
    assert result.data is not None and len(result.data) == 2
    assert all(image.url and image.url.endswith(".png") for image in result.data)
    assert wire.bodies[-1] == gateway.sent_bodies[-1]
    (settled,) = gateway.settled
    assert raw.headers["x-blockrun-cost-usd"] == f"{settled.amount / 1e6:.6f}"
    assert len(nonces(gateway)) == 1


@pytest.mark.parametrize("speech_format", ["json", "audio"])
async def test_speech_streams_the_gateways_bytes_whatever_they_are(proxy, gateway, speech_format):
    gateway.speech_format = speech_format
    wire = WireLog()
    async with (
        client(proxy, wire) as c,
        c.audio.speech.with_streaming_response.create(**SPEECH) as response,
    ):
        content_type = response.headers["content-type"]
        pieces = [piece async for piece in response.iter_bytes()]
    body = b"".join(pieces)
    assert body == gateway.sent_bodies[-1] == wire.bodies[-1]
    if speech_format == "json":
        # BlockRun's answer: what the SDK hands over as "audio" is JSON naming a file.
        assert content_type.startswith("application/json")
        assert json.loads(body)["data"][0]["format"] == "mp3"
    else:
        assert content_type == "audio/mpeg" and body.startswith(b"ID3")
    assert len(gateway.settled) == 1 and len(nonces(gateway)) == 1
