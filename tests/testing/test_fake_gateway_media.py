"""Images, speech, sound effects and hosted media files on the fake."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.gateway_client import Payer, b64json, paid_post

from blockrun_proxy.testing import DEFAULT_MEDIA, FakeGateway, MediaSpec

IMAGES = "/api/v1/images/generations"
EDITS = "/api/v1/images/image2image"
SPEECH = "/api/v1/audio/speech"
SOUND = "/api/v1/audio/sound-effects"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def local(url: str) -> str:
    """The path of a URL the fake hosts, for the test client (which knows the host)."""
    return urlsplit(url).path


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway(verify="fast")


async def test_image_with_a_hosted_url_that_serves_a_png(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    sent = {"model": "google/nano-banana", "prompt": "a cat", "n": 2}
    assert gw.price_for(sent, "/v1/images/generations") == 2 * 53_000
    resp = await paid_post(client, IMAGES, sent, payer)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["created"] > 0 and len(answer["data"]) == 2
    image = answer["data"][0]
    assert image["revised_prompt"] == "a cat" and image["backed_up"] is True
    assert resp.headers["X-Payment-Receipt"] == gw.settled[0].transaction
    assert answer["price"] == {"amount": "0.106000", "currency": "USD"}
    assert answer["payment"]["tx_hash"] == gw.settled[0].transaction
    hosted = await client.get(local(image["url"]))
    assert hosted.status == 200 and hosted.headers["Content-Type"] == "image/png"
    assert (await hosted.read()).startswith(PNG_SIGNATURE)
    assert len(gw.settled) == 1  # the download is free


async def test_gpt_image_answers_inline_with_a_data_uri(client: TestClient, payer: Payer) -> None:
    sent = {"model": "openai/gpt-image-1", "prompt": "a cat"}
    answer = await (await paid_post(client, IMAGES, sent, payer)).json()
    url = answer["data"][0]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(PNG_SIGNATURE)


async def test_image_edit(client: TestClient, payer: Payer) -> None:
    source = "data:image/png;base64,AAAA"
    sent = {"model": "openai/gpt-image-1", "prompt": "purple sky", "image": [source, source]}
    assert (await paid_post(client, EDITS, sent, payer)).status == 200
    resp = await client.post(EDITS, json={**sent, "image": []})
    assert resp.status == 400 and (await resp.json())["error"].startswith("image must be")


@pytest.mark.parametrize(
    ("path", "sent", "needle"),
    [
        (IMAGES, {"prompt": ""}, "prompt"),
        (IMAGES, {"prompt": "x", "n": 0}, "n must"),
        (IMAGES, {"prompt": "x", "model": "elevenlabs/flash-v2.5"}, "Unknown model"),
        (SPEECH, {"input": "hi", "response_format": "flac"}, "response_format"),
        (SPEECH, {"input": "hi", "speed": 3}, "speed"),
        (SPEECH, {}, "input"),
        (SOUND, {"prompt": "rain"}, "text"),
    ],
)
async def test_bad_media_bodies_are_400_in_blockruns_envelope(
    gw: FakeGateway, client: TestClient, path: str, sent: dict[str, Any], needle: str
) -> None:
    resp = await client.post(path, json=sent)
    assert resp.status == 400
    answer = await resp.json()
    assert needle in answer["error"] and answer["code"] == "invalid_request"
    assert gw.payments == []


async def test_speech_is_priced_per_character_with_a_floor(gw: FakeGateway) -> None:
    assert gw.price_for({"input": "hi"}, "/v1/audio/speech") == 3_000  # the $0.003 floor
    long = {"input": "x" * 2000}
    assert gw.price_for(long, "/v1/audio/speech") == 2 * 52_500


async def test_speech_json_points_at_hosted_audio(client: TestClient, payer: Payer) -> None:
    resp = await paid_post(client, SPEECH, {"input": "Hello there", "voice": "sarah"}, payer)
    answer = await resp.json()
    assert answer["model"] == "elevenlabs/flash-v2.5"
    [track] = answer["data"]
    assert track["format"] == "mp3" and track["characters"] == len("Hello there")
    audio = await client.get(local(track["url"]))
    assert audio.headers["Content-Type"] == "audio/mpeg"
    assert (await audio.read()).startswith(b"ID3")


async def test_speech_as_binary_audio_streams_in_chunks(
    aiohttp_client: AiohttpClient, payer: Payer
) -> None:
    gw = FakeGateway(verify="fast", speech_format="audio")
    client = await aiohttp_client(gw.app)
    resp = await paid_post(client, SPEECH, {"input": "Hello", "response_format": "wav"}, payer)
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    assert "Content-Length" not in resp.headers  # chunked, as a streamed synthesis is
    pieces = [piece async for piece in resp.content.iter_chunked(4096)]
    audio = b"".join(pieces)
    assert len(pieces) > 1 and audio == gw.sent_bodies[-1]
    assert b64json(resp.headers["PAYMENT-RESPONSE"])["payer"] == payer.address


async def test_sound_effect_is_flat(gw: FakeGateway, client: TestClient, payer: Payer) -> None:
    sent = {"text": "rain on a tin roof", "duration_seconds": 5}
    assert gw.price_for(sent, "/v1/audio/sound-effects") == 53_500
    answer = await (await paid_post(client, SOUND, sent, payer)).json()
    assert answer["model"] == "elevenlabs/sound-effects" and answer["data"][0]["format"] == "mp3"


async def test_a_free_media_model_needs_no_payment(aiohttp_client: AiohttpClient) -> None:
    free = MediaSpec("test/free-image", "image", 0, free=True)
    gw = FakeGateway(media=[*DEFAULT_MEDIA, free])
    client = await aiohttp_client(gw.app)
    resp = await client.post(IMAGES, json={"model": "test/free-image", "prompt": "x"})
    assert resp.status == 200 and "PAYMENT-RESPONSE" not in resp.headers


async def test_unknown_media_file_is_404(client: TestClient) -> None:
    assert (await client.get("/api/media/images/nothing.exe")).status == 404
