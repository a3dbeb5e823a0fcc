"""The fake gateway's API-key mode: bearer keys, prepaid credit, no x402."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.calls import FREE_MODEL
from support.gateway_client import chat_body

from blockrun_proxy.testing import ApiKeyFakeGateway, Charge

CHAT = "/v1/chat/completions"


@pytest.fixture
def agw() -> ApiKeyFakeGateway:
    return ApiKeyFakeGateway(stream_events=3)


@pytest.fixture
async def aclient(agw: ApiKeyFakeGateway, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(agw.app)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_paid_call_draws_its_price_from_the_credit(
    agw: ApiKeyFakeGateway, aclient: TestClient
) -> None:
    key = agw.new_key(credit=10_000_000)
    price = agw.price_for(chat_body())
    resp = await aclient.post(CHAT, json=chat_body(), headers=bearer(key))
    assert resp.status == 200
    assert "PAYMENT-RESPONSE" not in resp.headers
    assert not any("cost" in name.lower() for name in resp.headers)  # nothing reported
    assert agw.charges == [Charge(key, "openai/gpt-4o-mini", price)]
    assert agw.credit[key] == 10_000_000 - price


async def test_no_credit_is_a_402_with_nothing_to_sign(
    agw: ApiKeyFakeGateway, aclient: TestClient
) -> None:
    key = agw.new_key(credit=1)
    resp = await aclient.post(CHAT, json=chat_body(), headers=bearer(key))
    assert resp.status == 402
    assert "PAYMENT-REQUIRED" not in resp.headers
    assert (await resp.json())["error"]["code"] == "insufficient_credit"
    assert agw.charges == [] and agw.credit[key] == 1
    free = await aclient.post(CHAT, json=chat_body(model=FREE_MODEL), headers=bearer(key))
    assert free.status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer sk-not-blockrun"}, 401),
        ({"Authorization": "Bearer brk_unknown"}, 401),
    ],
)
async def test_bad_keys_are_refused(
    aclient: TestClient, headers: dict[str, str], status: int
) -> None:
    resp = await aclient.post(CHAT, json=chat_body(), headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"]["type"] == "authentication_error"


async def test_a_revoked_key_is_forbidden(agw: ApiKeyFakeGateway, aclient: TestClient) -> None:
    key = agw.new_key()
    agw.revoked.add(key)
    resp = await aclient.post(CHAT, json=chat_body(), headers=bearer(key))
    assert resp.status == 403


async def test_the_x402_path_is_the_wrong_host(agw: ApiKeyFakeGateway, aclient: TestClient) -> None:
    resp = await aclient.post(
        "/api/v1/chat/completions", json=chat_body(), headers=bearer(agw.new_key())
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "wrong_host"
    assert (await aclient.get("/v1/models")).status == 200


async def test_a_failure_after_billing_is_still_charged(
    agw: ApiKeyFakeGateway, aclient: TestClient
) -> None:
    key = agw.new_key()
    agw.misbehave.fail_after_settle = 1
    resp = await aclient.post(CHAT, json=chat_body(), headers=bearer(key))
    assert resp.status == 500
    assert len(agw.charges) == 1
    agw.misbehave.fail_paid = 1
    resp = await aclient.post(CHAT, json=chat_body(), headers=bearer(key))
    assert resp.status == 503
    assert len(agw.charges) == 1


async def test_x402_headers_sent_here_are_recorded_and_ignored(
    agw: ApiKeyFakeGateway, aclient: TestClient
) -> None:
    key = agw.new_key()
    resp = await aclient.post(
        CHAT, json=chat_body(), headers={**bearer(key), "PAYMENT-SIGNATURE": "eyJ4IjoxfQ=="}
    )
    assert resp.status == 200
    assert agw.requests[-1].headers["PAYMENT-SIGNATURE"] == "eyJ4IjoxfQ=="
