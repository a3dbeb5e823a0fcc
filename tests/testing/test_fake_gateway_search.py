"""Search and Exa on the fake: priced without a model, paid like every route."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from support.gateway_client import Payer, b64json, paid_post

from blockrun_proxy.testing import FakeGateway

SEARCH = "/api/v1/search"


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway(verify="fast")


async def test_search_is_priced_per_source_and_says_so(
    gw: FakeGateway, client: TestClient, payer: Payer
) -> None:
    sent = {"query": "x402 adoption", "sources": ["web", "news"], "max_results": 4}
    resp = await client.post(SEARCH, json=sent)
    assert resp.status == 402
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    assert required["accepts"][0]["amount"] == str(4 * 26_250)
    price = (await resp.json())["price"]
    assert price == {
        "amount": "0.105000",
        "currency": "USD",
        "perSourceCost": 0.02625,
        "maxResults": 4,
    }
    assert gw.price_for({"query": "q"}, "/v1/search") == 10 * 26_250  # the default 10

    answer = await (await paid_post(client, SEARCH, sent, payer)).json()
    assert answer["query"] == "x402 adoption" and answer["summary"]
    assert answer["sources_used"] == 4
    assert {c["source"] for c in answer["citations"]} == {"web", "news"}
    assert [s.amount for s in gw.settled] == [4 * 26_250]


@pytest.mark.parametrize(
    "sent", [{}, {"query": ""}, {"query": "q", "max_results": 0}, {"query": "q", "max_results": 51}]
)
async def test_bad_search_bodies(client: TestClient, sent: dict[str, object]) -> None:
    resp = await client.post(SEARCH, json=sent)
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("op", "sent", "price", "key"),
    [
        ("search", {"query": "x402", "numResults": 3}, 11_000, "results"),
        ("find-similar", {"url": "https://blockrun.ai"}, 11_000, "results"),
        ("answer", {"query": "what is x402?"}, 11_000, "answer"),
        ("contents", {"urls": ["https://a.example", "https://b.example"]}, 5_000, "results"),
    ],
)
async def test_exa_routes(
    gw: FakeGateway,
    client: TestClient,
    payer: Payer,
    op: str,
    sent: dict[str, object],
    price: int,
    key: str,
) -> None:
    assert gw.price_for(sent, f"/v1/exa/{op}") == price
    resp = await paid_post(client, f"/api/v1/exa/{op}", sent, payer)
    assert resp.status == 200
    assert key in (await resp.json())["data"]
    assert [s.amount for s in gw.settled] == [price]


async def test_unknown_exa_endpoint_is_404(client: TestClient) -> None:
    resp = await client.post("/api/v1/exa/teleport", json={"query": "q"})
    assert resp.status == 404
