"""The Solana and API-key fakes serve every paid route, through the same paid path as Base.

They only override the payment hooks (``quote``, ``verify_payment``, ``settle``,
``describe_payment``; the API-key host its ``_handle`` and job table), so each
route's guard, price and answer are the ones Base serves, paid the rail's way.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.gateway_client import JOB_ROUTES, PAID_ROUTES, ROUTE_IDS, b64json, requirement_of
from support.solana import OfficialSolanaPayer

from blockrun_proxy.testing import ApiKeyFakeGateway, Charge, SolanaFakeGateway

VIDEOS = "/v1/videos/generations"
VIDEO = {"model": "xai/grok-imagine-video", "prompt": "an apple spinning", "duration_seconds": 5}
RPC = "/api/v1/solana/rpc"
BILLED_AS = {
    "chat": "openai/gpt-4o-mini",
    "messages": "anthropic/claude-sonnet-4.6",  # Claude Code's alias, resolved
    "gemini": "google/gemini-2.5-flash",
    "images": "google/nano-banana",
    "image2image": "google/nano-banana",
    "speech": "elevenlabs/flash-v2.5",
    "sound_effects": "elevenlabs/sound-effects",
}


# ------------------------------------------------------------------------ Solana


@pytest.fixture
def sgw() -> SolanaFakeGateway:
    return SolanaFakeGateway(stream_events=3, job_polls=1)


@pytest.fixture
async def sclient(sgw: SolanaFakeGateway, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(sgw.app)


async def solana_header(
    client: TestClient, path: str, body: dict[str, Any], payer: OfficialSolanaPayer
) -> str:
    """Probe ``path`` unpaid and pay what its 402 asks, with the official SVM client."""
    resp = await client.post(path, json=body)
    assert resp.status == 402, await resp.text()
    requirement = requirement_of(resp.headers["PAYMENT-REQUIRED"])
    rpc = await client.post(RPC, json={"jsonrpc": "2.0", "id": 1, "method": "getLatestBlockhash"})
    blockhash = (await rpc.json())["result"]["value"]["blockhash"]
    return payer.header(requirement, blockhash)


@pytest.mark.parametrize(("name", "path", "body", "dialect"), PAID_ROUTES, ids=ROUTE_IDS)
async def test_solana_pays_for_every_route(
    sgw: SolanaFakeGateway,
    sclient: TestClient,
    name: str,
    path: str,
    body: dict[str, Any],
    dialect: str,
) -> None:
    payer = OfficialSolanaPayer()
    header = await solana_header(sclient, "/api" + path, body, payer)
    resp = await sclient.post("/api" + path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == (202 if name in JOB_ROUTES else 200), await resp.text()
    await resp.read()
    assert [p.accepted for p in sgw.payments] == [True]
    assert sgw.payments[0].payer == payer.address
    if name in JOB_ROUTES:
        assert sgw.settled == []  # claimed by the POST, settled by the completing poll
    else:
        assert [s.amount for s in sgw.settled] == [sgw.price_for(body, path)]
        assert b64json(resp.headers["PAYMENT-RESPONSE"])["transaction"] == sgw.facilitator.sent[0]


async def test_a_solana_job_settles_once_and_only_for_its_wallet(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    payer = OfficialSolanaPayer()
    header = await solana_header(sclient, "/api" + VIDEOS, VIDEO, payer)
    submitted = await sclient.post(
        "/api" + VIDEOS, json=VIDEO, headers={"PAYMENT-SIGNATURE": header}
    )
    assert submitted.status == 202
    poll_url = (await submitted.json())["poll_url"]
    # The same transaction cannot submit a second job.
    again = await sclient.post("/api" + VIDEOS, json=VIDEO, headers={"PAYMENT-SIGNATURE": header})
    assert again.status == 409

    stranger = await solana_header(sclient, "/api" + VIDEOS, VIDEO, OfficialSolanaPayer())
    refused = await sclient.get(poll_url, headers={"PAYMENT-SIGNATURE": stranger})
    assert refused.status == 402
    assert "not from the wallet" in (await refused.json())["error"]

    running = await sclient.get(poll_url, headers={"PAYMENT-SIGNATURE": header})
    assert running.status == 202
    done = await sclient.get(poll_url, headers={"PAYMENT-SIGNATURE": header})
    assert done.status == 200
    answer = await done.json()
    assert answer["payment"]["status"] == "settled"
    assert answer["payment"]["tx_hash"] == sgw.facilitator.sent[0]
    assert [s.payer for s in sgw.settled] == [payer.address]

    repoll = await sclient.get(poll_url, headers={"PAYMENT-SIGNATURE": header})
    assert (await repoll.json())["payment"]["status"] == "already_settled"
    assert len(sgw.settled) == 1 and len(sgw.facilitator.sent) == 1


async def test_a_lying_solana_gateway_settles_a_refused_transaction_once(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    path = "/api/v1/chat/completions"
    body = PAID_ROUTES[0][2]
    header = await solana_header(sclient, path, body, OfficialSolanaPayer())
    sgw.misbehave.refuse_paid = 1
    sgw.misbehave.keep_refused = True
    refused = await sclient.post(path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert refused.status == 402 and sgw.settled == []
    # It kept the good transaction it called unused, and settles it behind our back.
    kept = sgw.settle_kept()
    assert [s.transaction for s in kept] == sgw.facilitator.sent
    assert len(kept) == 1
    # The same transaction sent again is a replay: the chain took it once.
    again = await sclient.post(path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert again.status == 409
    assert sgw.settle_kept() == [] and len(sgw.settled) == 1


async def test_the_solana_receipt_can_claim_another_amount(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    path = "/api/v1/search"
    body = {"query": "x402"}
    header = await solana_header(sclient, path, body, OfficialSolanaPayer())
    sgw.misbehave.settlement_claim = "999999999"
    resp = await sclient.post(path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 200
    assert b64json(resp.headers["PAYMENT-RESPONSE"])["amount"] == "999999999"
    assert sgw.settled[0].amount == sgw.price_for(body, "/v1/search")


# ----------------------------------------------------------------------- API key


@pytest.fixture
def agw() -> ApiKeyFakeGateway:
    return ApiKeyFakeGateway(stream_events=3, job_polls=1)


@pytest.fixture
async def aclient(agw: ApiKeyFakeGateway, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(agw.app)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("name", "path", "body", "dialect"), PAID_ROUTES, ids=ROUTE_IDS)
async def test_the_api_key_host_bills_every_route_at_the_root(
    agw: ApiKeyFakeGateway,
    aclient: TestClient,
    name: str,
    path: str,
    body: dict[str, Any],
    dialect: str,
) -> None:
    key = agw.new_key(credit=100_000_000)
    price = agw.price_for(body, path)
    assert (await aclient.post(path, json=body)).status == 401
    resp = await aclient.post(path, json=body, headers=bearer(key))
    assert resp.status == (202 if name in JOB_ROUTES else 200), await resp.text()
    assert "PAYMENT-RESPONSE" not in resp.headers and "X-Payment-Receipt" not in resp.headers
    answer = await resp.read()
    assert b'"payment"' not in answer  # nothing settled on a chain to name
    assert agw.credit[key] == 100_000_000 - price  # drawn, or reserved for a job
    # The model billed, as the catalogue names it (the route, when there is no model).
    model = BILLED_AS.get(name, name)
    assert agw.charges == ([] if name in JOB_ROUTES else [Charge(key, model, price)])
    assert agw.payments == [] and agw.settled == []


async def test_a_key_without_credit_for_a_route_gets_nothing_to_sign(
    agw: ApiKeyFakeGateway, aclient: TestClient
) -> None:
    key = agw.new_key(credit=1)
    resp = await aclient.post(VIDEOS, json=VIDEO, headers=bearer(key))
    assert resp.status == 402
    assert "PAYMENT-REQUIRED" not in resp.headers
    assert (await resp.json())["code"] == "insufficient_credit"
    assert len(agw.jobs) == 0 and agw.credit[key] == 1


async def test_an_api_key_job_is_reserved_then_charged_on_completion(
    agw: ApiKeyFakeGateway, aclient: TestClient
) -> None:
    key = agw.new_key(credit=10_000_000)
    price = agw.price_for(VIDEO, VIDEOS)
    submitted = await aclient.post(VIDEOS, json=VIDEO, headers=bearer(key))
    assert submitted.status == 202
    poll_url = (await submitted.json())["poll_url"]
    # Minted as BlockRun mints it; this host answers /api with wrong_host, so a client
    # drops the prefix (PROTOCOL.md section 8).
    assert poll_url.startswith("/api" + VIDEOS + "/")
    assert (await aclient.get(poll_url, headers=bearer(key))).status == 404
    path = poll_url.removeprefix("/api")
    assert (await aclient.get(path)).status == 401
    assert (await aclient.get(path, headers=bearer(agw.new_key()))).status == 404
    assert agw.credit[key] == 10_000_000 - price and agw.charges == []

    assert (await aclient.get(path, headers=bearer(key))).status == 202
    done = await aclient.get(path, headers=bearer(key))
    assert done.status == 200
    assert (await done.json())["status"] == "completed"
    assert agw.charges == [Charge(key, "xai/grok-imagine-video", price)]
    again = await aclient.get(path, headers=bearer(key))
    assert again.status == 200
    assert len(agw.charges) == 1 and agw.credit[key] == 10_000_000 - price


async def test_a_failed_api_key_job_gives_its_reservation_back(
    agw: ApiKeyFakeGateway, aclient: TestClient
) -> None:
    key = agw.new_key(credit=10_000_000)
    agw.misbehave.job_fails = 1
    submitted = await aclient.post(VIDEOS, json=VIDEO, headers=bearer(key))
    path = (await submitted.json())["poll_url"].removeprefix("/api")
    assert (await aclient.get(path, headers=bearer(key))).status == 202
    for _ in range(2):  # the reservation goes back once, however often it is polled
        failed = await aclient.get(path, headers=bearer(key))
        assert (await failed.json())["status"] == "failed"
    assert agw.charges == [] and agw.credit[key] == 10_000_000


def test_the_standalone_fakes_media_options_apply_to_every_rail() -> None:
    from blockrun_proxy.testing.__main__ import _gateway, _parser

    for rail in ("base", "solana", "apikey"):
        args = ["--rail", rail, "--job-polls", "0", "--speech-format", "audio"]
        gateway = _gateway(_parser().parse_args(args))
        assert (gateway.job_polls, gateway.speech_format) == (0, "audio"), rail
