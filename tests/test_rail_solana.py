"""The Solana rail through the proxy, against the Solana fake (the official x402 SVM
verifier judges every payment): every route paid, streamed where it streams, one signed
transaction per client call (the ``solana_gateway`` fixture checks it for every request
id), hostile requirements refused with zero signatures, a refused payment never followed
by another, and the budget counting what may have landed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from support.calls import FRACTIONAL_MODEL, PRICED_MODEL, Reply, chat, get, post
from support.gateway_client import PAID_ROUTES, b64json
from support.svm import new_address

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.testing import SOLANA_MAINNET, SOLANA_USDC, Misbehavior, SolanaFakeGateway
from blockrun_proxy.x402 import usd
from blockrun_proxy.x402.svm import transaction

# Every gateway call of this rail goes through the chosen upstream client: run on both.
pytestmark = pytest.mark.both_clients

INLINE = [r for r in PAID_ROUTES if r[0] not in ("music", "videos")]
VIDEO = {"model": "xai/grok-imagine-video", "prompt": "an apple spinning", "duration_seconds": 5}
STREAM = chat(PRICED_MODEL, "hi", stream=True, max_tokens=32)


def solana_payer(proxy: Any) -> Any:
    payer = proxy.app[CORE_KEY].payer.solana
    assert payer is not None
    return payer


def transactions(gw: SolanaFakeGateway) -> list[str]:
    """The distinct transactions the gateway was sent, in order."""
    seen: list[str] = []
    for request in gw.requests:
        tx = (request.payment or {}).get("payload", {}).get("transaction")
        if tx is not None and tx not in seen:
            seen.append(tx)
    return seen


def assert_paid(reply: Reply, gw: SolanaFakeGateway) -> None:
    assert reply.status == 200, reply.body
    settled = gw.settled[-1]
    assert reply.headers["x-blockrun-cost-usd"] == usd(settled.amount)
    assert reply.headers["x-litellm-response-cost"] == usd(settled.amount)
    assert reply.headers["x-blockrun-settlement"] == gw.facilitator.sent[-1]
    assert b64json(reply.headers["PAYMENT-RESPONSE"])["network"] == gw.network


async def test_a_paid_call_and_a_paid_stream_each_send_one_verified_transaction(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy()
    payer = solana_payer(proxy)
    plain = await post(proxy, chat(PRICED_MODEL, "hello", max_tokens=40))
    assert_paid(plain, solana_gateway)
    assert plain.body == solana_gateway.sent_bodies[-1]
    streamed = await post(proxy, STREAM)
    assert_paid(streamed, solana_gateway)
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert streamed.body == solana_gateway.sent_bodies[-1]  # the gateway's bytes, unchanged
    assert solana_gateway.svm_verifier == "official"
    assert [p.accepted for p in solana_gateway.payments] == [True, True]
    assert {p.payer for p in solana_gateway.payments} == {payer.address}
    assert len(transactions(solana_gateway)) == len(solana_gateway.settled) == 2
    assert payer.signatures == payer.payments_sent == 2
    assert proxy.app[CORE_KEY].payer.evm.payments_sent == 0


@pytest.mark.parametrize(("name", "path", "body", "dialect"), INLINE, ids=[r[0] for r in INLINE])
async def test_every_route_is_paid_on_solana(
    start_solana_proxy, solana_gateway, name, path, body, dialect
) -> None:
    proxy = await start_solana_proxy()
    reply = await post(proxy, body, path=path)
    assert_paid(reply, solana_gateway)
    (paid,) = [r for r in solana_gateway.requests if r.payment is not None]
    sent = orjson.loads(paid.body)  # chat's got a max_tokens
    assert [s.amount for s in solana_gateway.settled] == [solana_gateway.price_for(sent, path)]
    assert len(transactions(solana_gateway)) == 1


async def test_a_job_is_paid_once_and_its_polls_replay_the_same_transaction(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy()
    submit = await post(proxy, VIDEO, path="/v1/videos/generations")
    assert submit.status == 202, submit.body
    poll_url = submit.json["poll_url"]
    statuses = [(await get(proxy, poll_url)).status for _ in range(4)]
    assert statuses == [202, 202, 200, 200]
    price = solana_gateway.price_for(VIDEO, "/v1/videos/generations")
    assert [s.amount for s in solana_gateway.settled] == [price]
    polls = [r for r in solana_gateway.requests if r.method == "GET" and "/generations/" in r.path]
    assert len(polls) == 4 and len(transactions(solana_gateway)) == 1
    assert solana_payer(proxy).signatures == 1


async def test_a_5xx_after_the_send_replays_the_same_transaction(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy()
    solana_gateway.misbehave.fail_paid = 1
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert_paid(reply, solana_gateway)
    paid = [r for r in solana_gateway.requests if r.payment is not None]
    assert len(paid) == 2 and len(transactions(solana_gateway)) == 1
    assert solana_payer(proxy).signatures == 1


def extra_instruction(monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder that slips one more instruction into the transaction: what the audit of
    every message before it is signed is there to catch."""
    build = transaction._instructions

    def more(plan: Any) -> list[Any]:
        from solders.instruction import Instruction
        from solders.pubkey import Pubkey

        memo = Pubkey.from_string(transaction.MEMO_PROGRAM)
        return [*build(plan), Instruction(memo, b"and one more thing", [])]

    monkeypatch.setattr(transaction, "_instructions", more)


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("foreign mint", {"asset": new_address()}, "asset_mismatch"),
    ("mainnet mint on devnet", {"asset": SOLANA_USDC[SOLANA_MAINNET]}, "asset_mismatch"),
    ("amount over the cap", {"price_multiplier": 1000.0}, "amount_over_cap"),
    (
        "unknown network",
        {"network": "solana:4uhcVJyU9pJkvQyS88uRDiswHXSCkY3z"},
        "network_not_allowed",
    ),
    ("no fee payer", {"extra": {"feePayer": None}}, "fee_payer_invalid"),
    ("memo over 256 bytes", {"extra": {"memo": "m" * 300}}, "memo_invalid"),
    ("upto", {"scheme": "upto"}, "scheme_not_supported"),
]


@pytest.mark.parametrize(("name", "knobs", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_a_hostile_requirement_gets_no_signature(
    start_solana_proxy, solana_gateway, name, knobs, code
) -> None:
    proxy = await start_solana_proxy()
    for knob, value in knobs.items():
        setattr(solana_gateway.misbehave, knob, value)
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert (reply.status, reply.code) == (402, code), reply.body
    assert solana_payer(proxy).signatures == 0
    assert solana_gateway.payments == [] and transactions(solana_gateway) == []


async def test_our_own_key_as_fee_payer_gets_no_signature(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy()
    solana_gateway.misbehave.extra = {"feePayer": solana_payer(proxy).address}
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert (reply.status, reply.code) == (402, "fee_payer_invalid"), reply.body
    assert solana_payer(proxy).signatures == 0 and transactions(solana_gateway) == []


async def test_a_transaction_with_an_extra_instruction_is_never_signed(
    start_solana_proxy, solana_gateway, monkeypatch
) -> None:
    proxy = await start_solana_proxy()
    extra_instruction(monkeypatch)
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert (reply.status, reply.code) == (402, "transaction_mismatch"), reply.body
    assert solana_payer(proxy).signatures == 0 and transactions(solana_gateway) == []


async def test_a_lying_gateway_that_refuses_then_settles_gets_one_settlement_per_call(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy(budget_usd=Decimal("1"))
    solana_gateway.misbehave.refuse_paid = 1
    solana_gateway.misbehave.keep_refused = True
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    # Refused after the send, but a Solana transaction may still land: 424, never resigned.
    assert reply.status == 424, reply.body
    assert reply.headers["x-should-retry"] == "false"
    assert reply.headers["x-blockrun-upstream-status"] == "402"
    assert "may still be settled" in reply.error_body["message"]
    assert len(transactions(solana_gateway)) == 1 and solana_payer(proxy).signatures == 1
    kept = solana_gateway.settle_kept()  # behind our back
    assert len(kept) == 1 and solana_gateway.settle_kept() == []
    # The budget counted it all along: it may land, and here it did.
    usage = await proxy.app[CORE_KEY].budget.usage()
    assert usage.spent == kept[0].amount


async def until_presigned(proxy: Any, gw: SolanaFakeGateway, body: dict[str, Any]) -> None:
    """Paid calls of ``body`` until the next one is signed up front (one request)."""
    for _ in range(12):
        before = len(gw.chat_requests)
        assert (await post(proxy, body)).status == 200
        if len(gw.chat_requests) - before == 1:
            return
    raise AssertionError("never signed up front")


async def test_up_front_payments_and_a_refused_one_ends_the_call(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy()
    body = chat(FRACTIONAL_MODEL, "the same question", max_tokens=64)
    await until_presigned(proxy, solana_gateway, body)
    quotes = proxy.app[CORE_KEY].quotes
    assert quotes.trusted(FRACTIONAL_MODEL)
    before = len(solana_gateway.chat_requests)
    solana_gateway.misbehave.refuse_paid = 1
    solana_gateway.misbehave.keep_refused = True
    refused = await post(proxy, body)
    # The up-front payment was refused: no probe, no second transaction, a 424.
    assert refused.status == 424, refused.body
    assert len(solana_gateway.chat_requests) - before == 1
    assert not quotes.trusted(FRACTIONAL_MODEL)  # back to probing first
    assert len(solana_gateway.settle_kept()) == 1  # it could still land: once
    probed = await post(proxy, body)
    assert probed.status == 200
    assert len(solana_gateway.chat_requests) - before == 3  # probe, then pay


async def test_an_unreachable_rpc_is_a_503_and_nothing_is_signed(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy(solana_rpc_url="http://127.0.0.1:9/")
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert (reply.status, reply.code) == (503, "solana_rpc_unreachable"), reply.body
    assert "127.0.0.1" in reply.error_body["message"]
    assert solana_payer(proxy).signatures == 0 and solana_gateway.payments == []


async def test_the_budget_refuses_before_the_key_is_used(
    start_solana_proxy, solana_gateway
) -> None:
    body = chat(PRICED_MODEL, "hello")
    price = solana_gateway.price_for({**body, "max_tokens": 1024})
    proxy = await start_solana_proxy(budget_usd=Decimal(price + price // 2) / 1_000_000)
    assert (await post(proxy, body)).status == 200
    refused = await post(proxy, body)
    assert (refused.status, refused.code) == (402, "budget_exceeded")
    assert solana_payer(proxy).signatures == 1


async def test_without_a_solana_wallet_the_error_says_how_to_get_one(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy(solana_key=None)
    assert proxy.app[CORE_KEY].blockhashes is None  # nothing will sign: the RPC is not asked
    reply = await post(proxy, chat(PRICED_MODEL, "hello"))
    assert (reply.status, reply.code) == (402, "wallet_not_configured")
    assert "BLOCKRUN_SOLANA_KEY" in reply.error_body["message"]
    assert solana_gateway.rpc.calls == []


async def test_metrics_count_solana_payments_with_the_others(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy()
    solana_gateway.misbehave.settlement_claim = "999999999"
    assert (await post(proxy, chat(PRICED_MODEL, "hello"))).status == 200
    metrics = (await get(proxy, "/metrics")).body.decode()
    amount = solana_gateway.settled[-1].amount
    assert "blockrun_proxy_payments_sent_total 1.0" in metrics
    assert f"blockrun_proxy_sent_micro_usdc_total {float(amount)}" in metrics
    assert 'blockrun_proxy_gateway_anomalies_total{kind="settled_above_signed"} 1.0' in metrics


async def test_readyz_and_the_spend_page_name_the_solana_wallet(
    start_solana_proxy, solana_gateway
) -> None:
    proxy = await start_solana_proxy()
    ready = await get(proxy, "/readyz")
    assert ready.json["wallet"] == "loaded"
    spend = await get(proxy, "/v1/spend")
    assert spend.json["wallet"]["address"] == solana_payer(proxy).address


def test_the_misbehaviour_knobs_used_here_exist() -> None:
    knobs = {k for _, h, _ in HOSTILE for k in h}
    assert knobs <= set(Misbehavior.__dataclass_fields__)
