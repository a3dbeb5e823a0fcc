"""The upto scheme through the proxy: a signed ceiling, the actual cost settled and reported.

Against the fake gateway's upto mode (the official x402 facilitator code settles on an
in-memory chain that the fake JSON-RPC node serves as ``--rpc-url``). The gateway fixture
checks at the end of every test that no client call carried two nonces.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from support.calls import PRICED_MODEL, TEST_NETWORK, chat, post
from support.payments import CHAT_PATH, priced, warm_body, warm_up
from support.upto import (
    UptoChain,
    permit2_nonces,
    receipt,
    schemes_sent,
    sent_payments,
    upto_chain,
    upto_gateway,
    upto_settings,
)

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.testing import DEFAULT_FACILITATOR, FakeGateway
from blockrun_proxy.testing._replies import ECHO_PREFIX, count_tokens
from blockrun_proxy.x402 import NETWORKS, PERMIT2_ADDRESS, Signer, checksum_address, usd

BODY = chat(PRICED_MODEL, "how much does this cost?")
APPROVE_COMMAND = "blockrun-proxy wallet approve-permit2 --amount-usd"


@pytest.fixture
async def chain() -> AsyncIterator[UptoChain]:
    async with upto_chain() as c:
        yield c


@pytest.fixture
async def gateway(chain: UptoChain) -> AsyncIterator[FakeGateway]:
    # Overrides conftest's: start_proxy puts the proxy in front of this one.
    async with upto_gateway(chain) as gw:
        yield gw


def actual_cost(gateway: FakeGateway, body: dict[str, Any]) -> int:
    """What the fake settles for ``body``: its price had max_tokens been the answer's size."""
    text = body["messages"][-1]["content"]
    return priced(gateway, {**body, "max_tokens": count_tokens(ECHO_PREFIX + text)})


async def start(start_proxy: Any, chain: UptoChain, wallet_key: str, scheme: str = "upto", **kw):
    chain.fund(wallet_key, **kw.pop("funds", {}))
    return await start_proxy(**upto_settings(chain, scheme, **kw))


# --- paid calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_settles_its_actual_cost_and_says_so(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str, stream: bool
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    body = {**BODY, "stream": stream}
    reply = await post(proxy, body)
    assert reply.status == 200, reply.body
    ceiling, actual = priced(gateway, body), actual_cost(gateway, body)
    assert 0 < actual < ceiling // 10  # a short answer, not the 1,024 tokens reserved
    assert [s.amount for s in gateway.settled] == [actual]
    assert reply.headers["x-blockrun-cost-usd"] == usd(actual)
    assert reply.headers["x-litellm-response-cost"] == usd(actual)
    assert reply.headers["x-blockrun-cost-source"] == "settled"
    assert reply.headers["x-blockrun-ceiling-usd"] == usd(ceiling)
    assert int(receipt(reply.headers)["amount"]) == actual
    assert schemes_sent(gateway) == ["upto"] and len(permit2_nonces(gateway)) == 1
    address = Signer(wallet_key).address
    assert chain.ledger.balance_of(address) == 10_000_000 - actual
    assert chain.allowance(wallet_key) == 10_000_000 - actual


async def test_each_call_has_its_own_permit2_nonce(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    for index in range(3):
        assert (await post(proxy, chat(PRICED_MODEL, f"call {index}"))).status == 200
    assert len(permit2_nonces(gateway)) == 3 and len(gateway.settled) == 3
    assert all(not n.startswith("eip3009") for n in permit2_nonces(gateway))


async def test_the_signature_binds_the_declared_facilitator_and_our_spender(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    assert (await post(proxy, BODY)).status == 200
    (payment,) = sent_payments(gateway)
    authorization = payment["payload"]["permit2Authorization"]
    assert authorization["witness"]["facilitator"] == checksum_address(DEFAULT_FACILITATOR)
    assert authorization["spender"] == "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002"
    assert authorization["permitted"]["amount"] == str(priced(gateway, BODY))


async def test_the_spend_ledger_shows_the_ceiling_signed_and_the_actual_settled(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    assert (await post(proxy, BODY)).status == 200
    await proxy.app[CORE_KEY].recorder.flush(5)
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/v1/spend") as resp:
        doc = orjson.loads(await resp.read())
    (call,) = doc["last_calls"]
    assert call["outcome"] == "ok"
    assert (call["signed"], call["settled"]) == (priced(gateway, BODY), actual_cost(gateway, BODY))


# --- the budget --------------------------------------------------------------------------------


async def test_the_budget_reserves_the_ceiling_and_keeps_only_the_actual_cost(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    ceiling, actual = priced(gateway, BODY), actual_cost(gateway, BODY)
    # Room for one ceiling and a bit: under exact, the second call would not fit.
    limit = ceiling + ceiling // 2
    proxy = await start(start_proxy, chain, wallet_key, budget_usd=Decimal(limit) / 10**6)
    budget = proxy.app[CORE_KEY].budget
    for _ in range(2):
        assert (await post(proxy, BODY)).status == 200
    assert (await budget.usage()).spent == 2 * actual


async def test_a_ceiling_over_what_the_budget_has_left_is_not_signed(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    # The actual cost would fit; the ceiling does not, and the ceiling is what may settle.
    limit = priced(gateway, BODY) - 1
    proxy = await start(start_proxy, chain, wallet_key, budget_usd=Decimal(limit) / 10**6)
    reply = await post(proxy, BODY)
    assert reply.status == 402 and reply.code == "budget_exceeded"
    assert sent_payments(gateway) == []


# --- what the settlement says ------------------------------------------------------------------


async def test_a_settlement_without_an_amount_costs_the_ceiling_and_says_so(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    gateway.settle_amount_in_response = False
    ceiling = priced(gateway, BODY)
    proxy = await start(start_proxy, chain, wallet_key, budget_usd=Decimal(1))
    reply = await post(proxy, BODY)
    assert reply.status == 200
    assert reply.headers["x-blockrun-cost-usd"] == usd(ceiling)
    assert reply.headers["x-blockrun-cost-source"] == "ceiling"
    core = proxy.app[CORE_KEY]
    assert (await core.budget.usage()).spent == ceiling
    # The allowance booked the ceiling, and is read from the chain again before the next.
    assert core.payer.evm.allowance(NETWORKS[TEST_NETWORK]).stale()


async def test_a_settlement_claiming_more_than_the_ceiling_costs_the_ceiling(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    chain.mode.reported_amount = 10**9
    proxy = await start(start_proxy, chain, wallet_key)
    reply = await post(proxy, BODY)
    assert reply.headers["x-blockrun-cost-usd"] == usd(priced(gateway, BODY))
    assert reply.headers["x-blockrun-cost-source"] == "ceiling"
    assert proxy.app[CORE_KEY].payer.anomalies["settled_above_signed"] == 1


# --- the Permit2 allowance ---------------------------------------------------------------------


async def test_upto_without_allowance_signs_nothing_and_names_the_command(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key, funds={"allowance": None})
    reply = await post(proxy, BODY)
    assert reply.status == 402 and reply.code == "permit2_allowance_required"
    assert APPROVE_COMMAND in reply.error_body["message"]
    assert sent_payments(gateway) == []


async def test_auto_pays_exact_when_the_allowance_is_short_and_no_permit_is_sponsored(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key, "auto", funds={"allowance": 1})
    reply = await post(proxy, BODY)
    assert reply.status == 200
    ceiling = priced(gateway, BODY)
    assert schemes_sent(gateway) == ["exact"] and permit2_nonces(gateway) == []
    assert reply.headers["x-blockrun-cost-usd"] == usd(ceiling)
    assert reply.headers["x-blockrun-cost-source"] == "signed"
    assert "x-blockrun-ceiling-usd" not in reply.headers
    assert proxy.app[CORE_KEY].payer.upto_fallbacks == 1
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/metrics") as resp:
        assert "blockrun_proxy_upto_fallbacks_total 1.0" in await resp.text()


async def test_auto_pays_upto_once_the_allowance_is_approved(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key, "auto", funds={"allowance": None})
    assert (await post(proxy, BODY)).status == 200
    chain.ledger.approve(Signer(wallet_key).address, PERMIT2_ADDRESS, 10_000_000)
    # The tracker reads the chain again before refusing, at most every few seconds.
    core = proxy.app[CORE_KEY]
    core.payer.evm.allowance(NETWORKS[TEST_NETWORK]).reread_gap = 0
    assert (await post(proxy, chat(PRICED_MODEL, "again"))).status == 200
    assert schemes_sent(gateway) == ["exact", "upto"]


async def test_a_sponsored_permit_is_for_exactly_the_ceiling(
    start_proxy: Any,
    chain: UptoChain,
    gateway: FakeGateway,
    wallet_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from blockrun_proxy.testing import _gateway

    declared = _gateway.declared_extensions
    chain.mode.gas_sponsoring = True

    def hostile(mode: Any) -> Any:
        # A 402 that pre-fills the permit it would like: an unlimited one.
        extensions = declared(mode)
        extensions["eip2612GasSponsoring"]["info"]["amount"] = str(2**256 - 1)
        return extensions

    monkeypatch.setattr(_gateway, "declared_extensions", hostile)
    proxy = await start(start_proxy, chain, wallet_key, funds={"allowance": None})
    reply = await post(proxy, BODY)
    assert reply.status == 200, reply.body
    ceiling, actual = priced(gateway, BODY), actual_cost(gateway, BODY)
    (payment,) = sent_payments(gateway)
    info = payment["extensions"]["eip2612GasSponsoring"]["info"]
    assert info["amount"] == str(ceiling) and info["spender"] == PERMIT2_ADDRESS
    assert info["nonce"] == "0"
    # The permit set the allowance to the ceiling, then the call pulled its actual cost.
    assert chain.allowance(wallet_key) == ceiling - actual
    assert chain.ledger.permit_nonce(Signer(wallet_key).address) == 1


@pytest.mark.parametrize(("scheme", "status"), [("upto", 503), ("auto", 200)])
async def test_an_unreachable_rpc(
    start_proxy: Any,
    chain: UptoChain,
    gateway: FakeGateway,
    wallet_key: str,
    scheme: str,
    status: int,
) -> None:
    chain.node.misbehave.error_next = 100
    proxy = await start(start_proxy, chain, wallet_key, scheme)
    reply = await post(proxy, BODY)
    assert reply.status == status
    if scheme == "upto":
        assert reply.code == "permit2_allowance_unknown" and sent_payments(gateway) == []
    else:
        assert schemes_sent(gateway) == ["exact"]


# --- hostile requirements ----------------------------------------------------------------------

FOREIGN = "0x" + "99" * 20


@pytest.mark.parametrize(
    ("shaping", "settings", "code"),
    [
        ({"extra": {"spender": FOREIGN}}, {}, "spender_mismatch"),
        ({"extra": {"facilitatorAddress": "0x" + "00" * 20}}, {}, "facilitator_invalid"),
        ({"extra": {"facilitatorAddress": None}}, {}, "facilitator_invalid"),
        ({"extra": {"facilitatorAddress": "not an address"}}, {}, "facilitator_invalid"),
        ({"extra": {"assetTransferMethod": "eip3009"}}, {}, "asset_transfer_method_unsupported"),
        ({}, {"max_price_usd": Decimal("0.001")}, "amount_over_cap"),
        ({}, {"pay_to": (FOREIGN,)}, "pay_to_not_allowed"),
        ({"network": "eip155:1"}, {}, "network_not_allowed"),
        ({"network": "eip155:1"}, {"networks": (TEST_NETWORK, "eip155:1")}, "unknown_network"),
        ({"asset": FOREIGN}, {}, "asset_mismatch"),
        ({"max_timeout_seconds": 86_400}, {}, "timeout_too_long"),
    ],
)
async def test_a_hostile_upto_requirement_gets_no_signature(
    start_proxy: Any,
    chain: UptoChain,
    gateway: FakeGateway,
    wallet_key: str,
    shaping: dict[str, Any],
    settings: dict[str, Any],
    code: str,
) -> None:
    for key, value in shaping.items():
        if key == "extra":
            chain.mode.extra_overrides = value
        else:
            setattr(gateway.misbehave, key, value)
    proxy = await start(start_proxy, chain, wallet_key, **settings)
    reply = await post(proxy, BODY)
    assert reply.status == 402 and reply.code == code, reply.body
    assert sent_payments(gateway) == []
    assert chain.ledger.transfers == []


async def test_auto_pays_exact_beside_a_hostile_upto_requirement(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    chain.mode.extra_overrides = {"spender": FOREIGN}
    proxy = await start(start_proxy, chain, wallet_key, "auto")
    assert (await post(proxy, BODY)).status == 200
    assert schemes_sent(gateway) == ["exact"]


async def test_an_exact_only_gateway_is_not_paid_under_upto(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    gateway.upto = None  # the gateway offers exact alone
    proxy = await start(start_proxy, chain, wallet_key)
    reply = await post(proxy, BODY)
    assert reply.status == 402 and reply.code == "scheme_not_supported"
    assert sent_payments(gateway) == []


# --- one nonce per call, replays, refusals ---------------------------------------------------


async def test_a_5xx_after_the_paid_send_replays_the_same_signature(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    gateway.misbehave.fail_paid = 1
    reply = await post(proxy, BODY)
    assert reply.status == 200
    headers = [r.headers["PAYMENT-SIGNATURE"] for r in gateway.requests if r.payment]
    assert len(headers) == 2 and headers[0] == headers[1]
    assert len(gateway.settled) == 1


async def test_a_replay_refusal_books_the_ceiling_and_reads_the_chain_again(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    gateway.misbehave.replay_on_paid = True
    reply = await post(proxy, BODY)
    assert reply.status == 424 and reply.headers["x-blockrun-upstream-status"] == "409"
    core = proxy.app[CORE_KEY]
    tracker = core.payer.evm.allowance(NETWORKS[TEST_NETWORK])
    assert tracker.stale() and tracker.available() == 10_000_000 - priced(gateway, BODY)


async def test_presigning_under_upto_takes_one_round_trip(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    await warm_up(proxy)
    before, hits = len(gateway.requests), proxy.app[CORE_KEY].quotes.stats.hits
    body = warm_body()
    reply = await post(proxy, body)
    assert reply.status == 200
    assert proxy.app[CORE_KEY].quotes.stats.hits == hits + 1
    (request,) = [r for r in gateway.requests[before:] if r.path == CHAT_PATH]
    assert request.payment is not None and request.payment["accepted"]["scheme"] == "upto"
    assert reply.headers["x-blockrun-cost-source"] == "settled"


async def test_presigning_under_auto_falls_back_to_the_exact_twin(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key, "auto", funds={"allowance": None})
    await warm_up(proxy)
    core = proxy.app[CORE_KEY]
    before, hits = len(gateway.requests), core.quotes.stats.hits
    assert (await post(proxy, warm_body())).status == 200
    assert core.quotes.stats.hits == hits + 1  # one round trip, exact, from the template's twin
    assert schemes_sent(gateway, before) == ["exact"]


async def test_a_presigned_ceiling_refused_as_unused_is_signed_again_under_the_same_nonce(
    start_proxy: Any, chain: UptoChain, gateway: FakeGateway, wallet_key: str
) -> None:
    proxy = await start(start_proxy, chain, wallet_key)
    await warm_up(proxy)
    # The gateway moves to another facilitator: the payment signed up front for the old
    # one is refused, not used; the fresh 402's is signed under the call's Permit2 nonce.
    moved = "0x000000000000000000000000000000000000FaC2"
    chain.mode.facilitator = moved
    before = len(gateway.requests)
    reply = await post(proxy, warm_body())
    assert reply.status == 200, reply.body
    payments = sent_payments(gateway, before)
    assert len(payments) == 2 and len(permit2_nonces(gateway, before)) == 1
    facilitators = [
        p["payload"]["permit2Authorization"]["witness"]["facilitator"] for p in payments
    ]
    assert facilitators == [checksum_address(DEFAULT_FACILITATOR), checksum_address(moved)]
    core = proxy.app[CORE_KEY]
    assert core.quotes.stats.misses == 1
    # Only the settled payment is booked on the allowance: the refused one's hold was freed.
    tracker = core.payer.evm.allowance(NETWORKS[TEST_NETWORK])
    assert tracker.available() == chain.allowance(wallet_key)


def test_the_nonce_check_counts_permit2_nonces_and_mixed_schemes() -> None:
    from multidict import CIMultiDict
    from support.payments import assert_one_nonce_per_call

    from blockrun_proxy.testing import RecordedRequest

    def sent(call: str, payload: dict[str, Any]) -> RecordedRequest:
        headers = CIMultiDict({"x-request-id": call})
        return RecordedRequest("POST", CHAT_PATH, headers, b"{}", {"payload": payload})

    exact = {"authorization": {"nonce": "0x" + "11" * 32}}
    upto = {"permit2Authorization": {"nonce": "7"}}
    other_upto = {"permit2Authorization": {"nonce": "8"}}
    for requests in (
        [sent("a", upto), sent("a", other_upto)],  # two Permit2 nonces for one call
        [sent("a", exact), sent("a", upto)],  # one of each: both could settle
    ):
        gw = FakeGateway()
        gw.requests.extend(requests)
        with pytest.raises(AssertionError):
            assert_one_nonce_per_call(gw)
    gw = FakeGateway()
    gw.requests.extend([sent("a", upto), sent("a", upto), sent("b", other_upto)])
    assert_one_nonce_per_call(gw)
