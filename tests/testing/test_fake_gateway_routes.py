"""Every paid route shares chat's payment path: each misbehaviour knob works on each route."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from support.gateway_client import (
    ANTHROPIC_BODY,
    GEMINI_BODY,
    JOB_ROUTES,
    PAID_ROUTES,
    ROUTE_IDS,
    Payer,
    b64json,
    pay,
    requirement_of,
)

from blockrun_proxy.testing import FakeGateway

PAID = PAID_ROUTES
JOBS = JOB_ROUTES
IDS = ROUTE_IDS


def code_of(dialect: str, answer: dict[str, Any]) -> str | None:
    """The machine code each dialect's error envelope carries."""
    if dialect in ("openai", "anthropic"):
        return answer["error"].get("code")
    if dialect == "google":
        return answer["error"].get("reason")
    return answer.get("code")


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway(verify="fast", stream_events=4)


def test_the_route_table_is_a_small_fixed_set(gw: FakeGateway) -> None:
    # Metrics label by route name, so the set must stay bounded and known.
    assert set(gw.routes) == {*IDS, "count_tokens"}


@pytest.mark.parametrize(("name", "path", "body", "dialect"), PAID, ids=IDS)
async def test_the_402_and_the_paid_answer(
    gw: FakeGateway,
    client: TestClient,
    payer: Payer,
    name: str,
    path: str,
    body: dict[str, Any],
    dialect: str,
) -> None:
    resp = await client.post("/api" + path, json=body)
    assert resp.status == 402
    requirement = requirement_of(resp.headers["PAYMENT-REQUIRED"])
    assert requirement["amount"] == str(gw.price_for(body, path))
    header = payer.pay(requirement)
    resp = await client.post("/api" + path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == (202 if name in JOBS else 200)
    await resp.read()
    assert len(gw.settled) == (0 if name in JOBS else 1)
    assert [p.accepted for p in gw.payments] == [True]


@pytest.mark.parametrize(("name", "path", "body", "dialect"), PAID, ids=IDS)
async def test_rate_limit_and_injected_failures(
    gw: FakeGateway, client: TestClient, name: str, path: str, body: dict[str, Any], dialect: str
) -> None:
    gw.misbehave.rate_limit = 1
    gw.misbehave.retry_after = "3"
    resp = await client.post("/api" + path, json=body)
    assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    assert code_of(dialect, await resp.json()) == "rate_limit_exceeded"
    gw.misbehave.fail_unpaid = 1
    gw.misbehave.fail_status = 502
    resp = await client.post("/api" + path, json=body)
    assert resp.status == 502
    assert code_of(dialect, await resp.json()) == "fake_gateway_failure"
    assert (await client.post("/api" + path, json=body)).status == 402


@pytest.mark.parametrize(("name", "path", "body", "dialect"), PAID, ids=IDS)
async def test_payment_refusals(
    gw: FakeGateway,
    client: TestClient,
    payer: Payer,
    name: str,
    path: str,
    body: dict[str, Any],
    dialect: str,
) -> None:
    header = await pay(client, "/api" + path, body, payer)
    paid = {"PAYMENT-SIGNATURE": header}

    gw.misbehave.fail_paid = 1
    assert (await client.post("/api" + path, json=body, headers=paid)).status == 503
    gw.misbehave.replay_on_paid = True
    resp = await client.post("/api" + path, json=body, headers=paid)
    assert resp.status == 409 and code_of(dialect, await resp.json()) == "PAYMENT_REPLAY"
    gw.misbehave.replay_on_paid = False

    gw.misbehave.price_multiplier = 2.0  # the signed amount is now too low
    resp = await client.post("/api" + path, json=body, headers=paid)
    assert resp.status == 402 and code_of(dialect, await resp.json()) == "PAYMENT_INVALID"
    gw.misbehave.fresh_challenge_on_invalid = True
    resp = await client.post("/api" + path, json=body, headers=paid)
    assert resp.status == 402
    assert requirement_of(resp.headers["PAYMENT-REQUIRED"])["amount"] == str(
        gw.price_for(body, path)
    )
    assert gw.settled == []


@pytest.mark.parametrize(("name", "path", "body", "dialect"), PAID, ids=IDS)
async def test_quote_shaping_reaches_every_route(
    gw: FakeGateway, client: TestClient, name: str, path: str, body: dict[str, Any], dialect: str
) -> None:
    gw.misbehave.pay_to = "0x" + "cd" * 20
    gw.misbehave.resource_url = "https://evil.example/api" + path
    resp = await client.post("/api" + path, json=body)
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    assert required["accepts"][0]["payTo"] == "0x" + "cd" * 20
    assert required["resource"]["url"] == "https://evil.example/api" + path


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/messages", {**ANTHROPIC_BODY, "stream": True}),
        ("/api/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI_BODY),
    ],
    ids=["messages", "gemini"],
)
async def test_reset_after_events_cuts_every_stream(
    gw: FakeGateway, client: TestClient, payer: Payer, path: str, body: dict[str, Any]
) -> None:
    header = await pay(client, path, body, payer)
    gw.misbehave.reset_after_events = 2
    resp = await client.post(path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert len(gw.settled) == 1  # settled before the stream broke, as on the real gateway


@pytest.mark.parametrize(("name", "path", "body", "dialect"), PAID, ids=IDS)
async def test_lying_and_redirecting_reach_every_route(
    gw: FakeGateway,
    client: TestClient,
    payer: Payer,
    name: str,
    path: str,
    body: dict[str, Any],
    dialect: str,
) -> None:
    header = await pay(client, "/api" + path, body, payer)
    gw.misbehave.refuse_paid = 1
    gw.misbehave.keep_refused = True
    resp = await client.post("/api" + path, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 402 and code_of(dialect, await resp.json()) == "PAYMENT_INVALID"
    assert gw.settled == []
    assert [s.amount for s in gw.settle_kept()] == [gw.price_for(body, path)]

    gw.misbehave.redirect_to = "http://elsewhere.invalid/"
    gw.misbehave.redirect_unpaid = True
    resp = await client.post("/api" + path, json=body, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "http://elsewhere.invalid/"
