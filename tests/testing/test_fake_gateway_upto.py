"""The fake gateway's upto mode over HTTP: listed after exact, verified by the official
facilitator against the ledger, settled at the cost of the tokens actually produced.

Payments come from the official x402 upto client (an independent payer) and from our
own signer; exact payments keep working beside upto.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from eth_account import Account
from pytest_aiohttp import AiohttpClient
from support.gateway_client import CHAT, Payer, b64json, chat_body
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequirements

from blockrun_proxy.testing import DEFAULT_FACILITATOR, FakeGateway, UptoMode, UsdcLedger
from blockrun_proxy.x402 import (
    NETWORKS,
    PERMIT2_ADDRESS,
    Requirement,
    Signer,
    new_permit2_nonce,
    sign_upto_payment,
)

NETWORK = NETWORKS["eip155:84532"]
FUNDS = 10_000_000  # $10


@pytest.fixture
def ledger() -> UsdcLedger:
    return UsdcLedger(NETWORK.caip2)


@pytest.fixture
def mode(ledger: UsdcLedger) -> UptoMode:
    return UptoMode(ledger)


@pytest.fixture
def gw(mode: UptoMode) -> FakeGateway:
    return FakeGateway(stream_events=5, upto=mode)


@pytest.fixture
async def client(gw: FakeGateway, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(gw.app)


@pytest.fixture
def wallet(wallet_key: str, ledger: UsdcLedger) -> Signer:
    signer = Signer(wallet_key)
    ledger.fund(signer.address, usdc=FUNDS)
    return signer


async def challenge(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(CHAT, json=body)
    assert resp.status == 402
    return b64json(resp.headers["PAYMENT-REQUIRED"])


def upto_of(required: dict[str, Any]) -> dict[str, Any]:
    (upto,) = [r for r in required["accepts"] if r["scheme"] == "upto"]
    return upto


def as_requirement(raw: dict[str, Any]) -> Requirement:
    return Requirement(
        scheme=raw["scheme"],
        network=raw["network"],
        amount=int(raw["amount"]),
        asset=raw["asset"],
        pay_to=raw["payTo"],
        max_timeout_seconds=raw["maxTimeoutSeconds"],
        extra=raw["extra"],
        raw=raw,
    )


def ours(signer: Signer, required: dict[str, Any], **options: Any) -> str:
    raw = upto_of(required)
    return sign_upto_payment(
        signer,
        as_requirement(raw),
        NETWORK,
        required["resource"],
        now=int(time.time()),
        nonce=options.pop("nonce", new_permit2_nonce()),
        extensions=required.get("extensions"),
        **options,
    ).header


def official(key: str, required: dict[str, Any]) -> str:
    """A PAYMENT-SIGNATURE built by the official x402 upto client."""
    raw = upto_of(required)
    scheme = UptoEvmClientScheme(EthAccountSigner(Account.from_key(key)))
    inner = scheme.create_payment_payload(PaymentRequirements.model_validate(raw))
    payment = {
        "x402Version": 2,
        "resource": required["resource"],
        "accepted": raw,
        "payload": inner,
    }
    return base64.b64encode(json.dumps(payment).encode()).decode()


async def test_the_402_lists_exact_then_upto(client: TestClient) -> None:
    required = await challenge(client, chat_body())
    exact, upto = required["accepts"]
    assert exact["scheme"] == "exact" and upto["scheme"] == "upto"
    assert upto["amount"] == exact["amount"]  # the ceiling is the exact price
    assert upto["extra"]["assetTransferMethod"] == "permit2"
    assert upto["extra"]["facilitatorAddress"] == DEFAULT_FACILITATOR
    assert "extensions" not in required


async def test_gas_sponsoring_and_only_upto_shape_the_402(client: TestClient, mode: UptoMode):
    mode.gas_sponsoring, mode.only_upto = True, True
    required = await challenge(client, chat_body())
    assert [r["scheme"] for r in required["accepts"]] == ["upto"]
    assert "eip2612GasSponsoring" in required["extensions"]


@pytest.mark.parametrize("payer", ["official", "ours"])
async def test_upto_settles_the_actual_cost(
    client: TestClient,
    gw: FakeGateway,
    ledger: UsdcLedger,
    wallet: Signer,
    wallet_key: str,
    payer: str,
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = chat_body("hi", max_tokens=1024)
    required = await challenge(client, body)
    ceiling = int(upto_of(required)["amount"])
    header = official(wallet_key, required) if payer == "official" else ours(wallet, required)
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 200, await resp.text()
    receipt = b64json(resp.headers["PAYMENT-RESPONSE"])
    actual = int(receipt["amount"])
    assert 0 < actual < ceiling  # a 2-token answer, not 1,024 reserved tokens
    assert receipt["success"] and receipt["payer"] == wallet.address
    assert ledger.balance_of(wallet.address) == FUNDS - actual
    assert ledger.balance_of(gw.pay_to) == actual
    assert [s.amount for s in gw.settled] == [actual]
    (record,) = gw.payments
    assert record.accepted and record.amount == ceiling and record.payer == wallet.address


async def test_a_stream_reports_the_settled_amount_before_its_body(
    client: TestClient, ledger: UsdcLedger, wallet: Signer
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = chat_body("hi", stream=True)
    required = await challenge(client, body)
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": ours(wallet, required)})
    assert resp.status == 200
    actual = int(b64json(resp.headers["PAYMENT-RESPONSE"])["amount"])
    assert actual < int(upto_of(required)["amount"])
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")


async def test_short_allowance_without_a_permit_is_refused(
    client: TestClient, gw: FakeGateway, ledger: UsdcLedger, wallet: Signer
) -> None:
    body = chat_body()
    required = await challenge(client, body)
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": ours(wallet, required)})
    assert resp.status == 402
    assert "permit2_allowance_required" in (await resp.json())["error"]["message"]
    assert ledger.balance_of(wallet.address) == FUNDS and gw.settled == []


async def test_a_sponsored_permit_covers_the_allowance(
    client: TestClient, mode: UptoMode, ledger: UsdcLedger, wallet: Signer
) -> None:
    mode.gas_sponsoring = True
    body = chat_body()
    required = await challenge(client, body)
    ceiling = int(upto_of(required)["amount"])
    header = ours(wallet, required, permit_nonce=ledger.permit_nonce(wallet.address))
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 200, await resp.text()
    actual = int(b64json(resp.headers["PAYMENT-RESPONSE"])["amount"])
    assert ledger.permit_nonce(wallet.address) == 1
    assert ledger.allowance(wallet.address, PERMIT2_ADDRESS) == ceiling - actual


async def test_the_same_payment_twice_is_a_replay(
    client: TestClient, gw: FakeGateway, ledger: UsdcLedger, wallet: Signer
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = chat_body()
    header = ours(wallet, await challenge(client, body))
    first = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    second = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert first.status == 200
    assert second.status == 409 and (await second.json())["error"]["code"] == "PAYMENT_REPLAY"
    assert len(gw.settled) == 1


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("accepted_facilitator", "accepted.extra.facilitatorAddress"),
        ("accepted_amount", "accepted.amount"),
        ("witness_facilitator", "upto_facilitator_mismatch"),
    ],
)
async def test_a_payment_for_another_requirement_is_refused(
    client: TestClient,
    gw: FakeGateway,
    ledger: UsdcLedger,
    wallet: Signer,
    tamper: str,
    reason: str,
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = chat_body()
    required = await challenge(client, body)
    upto = upto_of(required)
    other = "0x" + "77" * 20
    if tamper == "accepted_amount":
        upto["amount"] = "1"
    elif tamper == "accepted_facilitator":
        upto["extra"] = {**upto["extra"], "facilitatorAddress": other}
    header = ours(wallet, required)
    if tamper == "witness_facilitator":
        doc = b64json(header)
        doc["payload"]["permit2Authorization"]["witness"]["facilitator"] = other
        header = base64.b64encode(json.dumps(doc).encode()).decode()
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 402
    assert reason in (await resp.json())["error"]["message"]
    assert gw.settled == []


async def test_a_foreign_spender_is_refused_by_the_verifier(
    client: TestClient, gw: FakeGateway, ledger: UsdcLedger, wallet: Signer
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = chat_body()
    required = await challenge(client, body)
    doc = b64json(ours(wallet, required))
    doc["payload"]["permit2Authorization"]["spender"] = "0x" + "99" * 20
    header = base64.b64encode(json.dumps(doc).encode()).decode()
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 402 and "invalid_permit2_spender" in await resp.text()


async def test_an_unfunded_wallet_is_refused(
    client: TestClient, gw: FakeGateway, ledger: UsdcLedger, wallet_key: str
) -> None:
    poor = Signer(wallet_key)
    ledger.approve(poor.address, PERMIT2_ADDRESS, FUNDS)
    body = chat_body()
    resp = await client.post(
        CHAT, json=body, headers={"PAYMENT-SIGNATURE": ours(poor, await challenge(client, body))}
    )
    assert resp.status == 402 and "permit2_insufficient_balance" in await resp.text()


async def test_amount_can_be_omitted_or_lied_about(
    client: TestClient, gw: FakeGateway, mode: UptoMode, ledger: UsdcLedger, wallet: Signer
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = chat_body()
    gw.settle_amount_in_response = False
    resp = await client.post(
        CHAT, json=body, headers={"PAYMENT-SIGNATURE": ours(wallet, await challenge(client, body))}
    )
    assert resp.status == 200 and "amount" not in b64json(resp.headers["PAYMENT-RESPONSE"])
    mode.reported_amount = 10**9
    resp = await client.post(
        CHAT, json=body, headers={"PAYMENT-SIGNATURE": ours(wallet, await challenge(client, body))}
    )
    assert b64json(resp.headers["PAYMENT-RESPONSE"])["amount"] == str(10**9)
    assert all(s.amount < 10**9 for s in gw.settled)  # what really moved


async def test_exact_payments_still_work_in_upto_mode(
    client: TestClient, gw: FakeGateway, payer: Payer
) -> None:
    body = chat_body()
    exact = (await challenge(client, body))["accepts"][0]
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": payer.pay(exact)})
    assert resp.status == 200
    assert gw.settled[0].amount == int(exact["amount"])


def test_the_ledger_must_be_on_the_gateways_network() -> None:
    with pytest.raises(ValueError):
        FakeGateway(network="eip155:8453", upto=UptoMode(UsdcLedger("eip155:84532")))


async def test_auto_fund_pays_for_a_new_payer(
    client: TestClient, gw: FakeGateway, mode: UptoMode, ledger: UsdcLedger, wallet_key: str
) -> None:
    mode.auto_fund = 5_000_000
    newcomer = Signer(wallet_key)
    body = chat_body()
    header = ours(newcomer, await challenge(client, body))
    resp = await client.post(CHAT, json=body, headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 200, await resp.text()
    assert ledger.balance_of(newcomer.address) == 5_000_000 - gw.settled[0].amount


def test_main_serves_upto_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from blockrun_proxy.testing import __main__ as cli

    seen: list[FakeGateway] = []

    async def fake_serve(args: Any) -> None:
        seen.append(args)

    monkeypatch.setattr(cli, "_serve", fake_serve)
    assert cli.main(["--upto", "--upto-gas-sponsoring", "--port", "0"]) == 0
    (args,) = seen
    assert args.upto and args.upto_gas_sponsoring and args.upto_auto_fund > 0


# ------------------------------------------------------------ the other routes


async def test_upto_on_anthropic_messages_settles_the_tokens_produced(
    client: TestClient, gw: FakeGateway, ledger: UsdcLedger, wallet: Signer
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
    }
    resp = await client.post("/api/v1/messages", json=body)
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    ceiling = int(upto_of(required)["amount"])
    headers = {"PAYMENT-SIGNATURE": ours(wallet, required)}
    resp = await client.post("/api/v1/messages", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    actual = int(b64json(resp.headers["PAYMENT-RESPONSE"])["amount"])
    assert 0 < actual < ceiling
    assert (await resp.json())["type"] == "message"
    assert [s.amount for s in gw.settled] == [actual]


async def test_upto_on_a_flat_route_settles_the_whole_price(
    client: TestClient, gw: FakeGateway, ledger: UsdcLedger, wallet: Signer
) -> None:
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = {"text": "rain on a tin roof"}
    resp = await client.post("/api/v1/audio/sound-effects", json=body)
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    headers = {"PAYMENT-SIGNATURE": ours(wallet, required)}
    resp = await client.post("/api/v1/audio/sound-effects", json=body, headers=headers)
    assert resp.status == 200
    assert [s.amount for s in gw.settled] == [int(upto_of(required)["amount"])]


async def test_upto_is_not_offered_for_a_job(
    client: TestClient, gw: FakeGateway, ledger: UsdcLedger, wallet: Signer
) -> None:
    # A job settles on a later poll; nothing shows BlockRun taking upto there.
    ledger.approve(wallet.address, PERMIT2_ADDRESS, FUNDS)
    body = {"prompt": "an apple"}
    resp = await client.post("/api/v1/videos/generations", json=body)
    required = b64json(resp.headers["PAYMENT-REQUIRED"])
    assert [r["scheme"] for r in required["accepts"]] == ["exact"]
    chat = await challenge(client, chat_body())
    forged = {
        **required,
        "accepts": [{**upto_of(chat), "amount": required["accepts"][0]["amount"]}],
    }
    headers = {"PAYMENT-SIGNATURE": ours(wallet, forged)}
    resp = await client.post("/api/v1/videos/generations", json=body, headers=headers)
    assert resp.status == 402 and (await resp.json())["code"] == "PAYMENT_INVALID"
    assert gw.settled == [] and len(gw.jobs) == 0
