"""Slow jobs (video, music, slow images): 202 + poll_url, settled by the completing poll."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.gateway_client import Payer, b64json, pay, requirement_of

from blockrun_proxy.testing import DEFAULT_MEDIA, FakeGateway, MediaSpec

VIDEOS = "/api/v1/videos/generations"
MUSIC = "/api/v1/audio/generations"
IMAGES = "/api/v1/images/generations"
VIDEO = {"model": "xai/grok-imagine-video", "prompt": "an apple spinning", "duration_seconds": 5}


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway(verify="fast", job_polls=2)


async def submit(
    client: TestClient, path: str, body: dict[str, Any], payer: Payer
) -> tuple[dict[str, Any], str]:
    header = await pay(client, path, body, payer)
    resp = await client.post(path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 202, await resp.text()
    return await resp.json(), header


async def poll(client: TestClient, poll_url: str, header: str | None) -> aiohttp.ClientResponse:
    headers = {"PAYMENT-SIGNATURE": header} if header else {}
    return await client.get(poll_url, headers=headers)


async def test_video_job_settles_once_on_the_completing_poll(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    price = gw.price_for(VIDEO, "/v1/videos/generations")
    assert price == 5 * 50_000 + 1_000
    job, header = await submit(client, VIDEOS, VIDEO, payer)
    assert job["status"] == "queued" and job["payment_status"] == "verified"
    assert job["object"] == "video.generation.job" and job["duration_seconds"] == 5
    assert job["price"] == {"amount": "0.251000", "currency": "USD"}
    # "{provider}:{id}", quoted into a relative poll URL that keeps model and duration.
    assert job["id"].startswith("xai:vidjob_")
    poll_url = job["poll_url"]
    parts = urlsplit(poll_url)
    assert parts.path.startswith(VIDEOS + "/xai%3Avidjob_")
    assert unquote(parts.path.rsplit("/", 1)[1]) == job["id"]
    assert parts.query == "model=xai%2Fgrok-imagine-video&duration=5"
    assert gw.settled == []  # verified, not charged

    for _ in range(2):
        running = await poll(client, poll_url, header)
        assert running.status == 202
        assert (await running.json())["status"] == "in_progress"
    assert gw.settled == []

    done = await poll(client, poll_url, header)
    assert done.status == 200
    answer = await done.json()
    assert answer["status"] == "completed" and answer["id"] == job["id"]
    assert answer["data"][0]["duration_seconds"] == 5
    assert answer["data"][0]["url"].endswith(".mp4")
    assert answer["payment"]["status"] == "settled"
    assert done.headers["X-Payment-Receipt"] == answer["payment"]["tx_hash"]
    assert b64json(done.headers["PAYMENT-RESPONSE"])["amount"] == str(price)
    assert [s.amount for s in gw.settled] == [price]

    again = await poll(client, poll_url, header)
    assert again.status == 200
    assert (await again.json())["payment"]["status"] == "already_settled"
    assert "PAYMENT-RESPONSE" not in again.headers
    assert len(gw.settled) == 1  # never twice
    # One authorization throughout: the submit and every poll carried the same nonce.
    assert len({p.nonce for p in gw.payments}) == 1
    assert [r.method for r in gw.requests] == ["POST", "POST", *["GET"] * 4]
    # (aiohttp's client may unquote the %2F on the way; the values are what matter.)
    assert dict(parse_qsl(gw.requests[-1].query)) == dict(parse_qsl(parts.query))


async def test_a_poll_without_payment_gets_the_jobs_challenge(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    job, _ = await submit(client, VIDEOS, VIDEO, payer)
    resp = await poll(client, job["poll_url"], None)
    assert resp.status == 402
    requirement = requirement_of(resp.headers["PAYMENT-REQUIRED"])
    assert requirement["amount"] == str(gw.price_for(VIDEO, "/v1/videos/generations"))
    # A fresh signature from the same wallet is as good as the first: the job is
    # bound to the wallet, not to the signature.
    fresh = payer.pay(requirement)
    for _ in range(3):
        resp = await poll(client, job["poll_url"], fresh)
    assert resp.status == 200 and len(gw.settled) == 1


async def test_another_wallet_cannot_poll_or_settle_the_job(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    job, _ = await submit(client, VIDEOS, VIDEO, payer)
    stranger = Payer()
    resp = await poll(client, job["poll_url"], await pay(client, VIDEOS, VIDEO, stranger))
    assert resp.status == 402
    assert (await resp.json())["code"] == "PAYMENT_INVALID"
    assert gw.settled == []


async def test_one_authorization_submits_one_job(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    _, header = await submit(client, VIDEOS, VIDEO, payer)
    again = await client.post(VIDEOS, json=VIDEO, headers={"PAYMENT-SIGNATURE": header})
    assert again.status == 409 and (await again.json())["code"] == "PAYMENT_REPLAY"
    assert len(gw.jobs) == 1


async def test_a_failed_job_is_not_charged(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    gw.misbehave.job_fails = 1
    job, header = await submit(client, VIDEOS, VIDEO, payer)
    for _ in range(3):
        resp = await poll(client, job["poll_url"], header)
    answer = await resp.json()
    assert resp.status == 200 and answer["status"] == "failed"
    assert answer["payment_status"] == "not_charged" and gw.settled == []
    assert gw.misbehave.job_fails == 0


async def test_fail_after_settle_hits_the_settling_poll(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    job, header = await submit(client, VIDEOS, VIDEO, payer)
    gw.misbehave.fail_after_settle = 1
    for _ in range(3):
        resp = await poll(client, job["poll_url"], header)
    assert resp.status == 500 and len(gw.settled) == 1
    again = await poll(client, job["poll_url"], header)
    assert (await again.json())["payment"]["status"] == "already_settled"
    assert len(gw.settled) == 1


async def test_music_is_a_job_too(gw: FakeGateway, client: TestClient, payer: Payer) -> None:
    sent = {"prompt": "synthwave", "instrumental": True}
    job, header = await submit(client, MUSIC, sent, payer)
    assert job["object"] == "audio.generation.job" and job["model"] == "minimax/music-2.5+"
    assert job["poll_url"].startswith(MUSIC + "/music_fake")
    for _ in range(3):
        resp = await poll(client, job["poll_url"], header)
    track = (await resp.json())["data"][0]
    assert track["duration_seconds"] > 0 and track["url"].endswith(".mp3")
    assert [s.amount for s in gw.settled] == [157_500]
    lyrics = await client.post(MUSIC, json={**sent, "lyrics": "la la"})
    assert lyrics.status == 400


async def test_a_slow_image_model_answers_with_a_job(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    sent = {"model": "openai/gpt-image-2", "prompt": "a cat"}
    job, header = await submit(client, IMAGES, sent, payer)
    assert job["object"] == "image.generation.job" and job["poll_url"].startswith(IMAGES + "/img_")
    for _ in range(3):
        resp = await poll(client, job["poll_url"], header)
    answer = await resp.json()
    assert answer["data"][0]["url"].startswith("data:image/png;base64,")
    assert len(gw.settled) == 1


async def test_a_job_polled_on_the_wrong_route_is_not_found(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    job, header = await submit(client, VIDEOS, VIDEO, payer)
    elsewhere = job["poll_url"].replace("/videos/", "/images/")
    assert (await poll(client, elsewhere, header)).status == 404
    assert (await poll(client, VIDEOS + "/nothing", header)).status == 404


async def test_a_free_job_polls_without_payment(aiohttp_client: AiohttpClient) -> None:
    free = MediaSpec("test/free-video", "video", 0, free=True, asynchronous=True)
    gw = FakeGateway(media=[*DEFAULT_MEDIA, free], job_polls=1)
    client = await aiohttp_client(gw.app)
    resp = await client.post(VIDEOS, json={"model": "test/free-video", "prompt": "x"})
    assert resp.status == 202
    job = await resp.json()
    assert job["payment_status"] == "not_required" and "price" not in job
    assert (await poll(client, job["poll_url"], None)).status == 202
    done = await poll(client, job["poll_url"], None)
    assert done.status == 200 and "payment" not in await done.json()
