"""The fake gateway's Solana mode: SVM quotes, payments judged by the official verifier."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from solders.hash import Hash
from solders.keypair import Keypair
from support.calls import FREE_MODEL
from support.gateway_client import CHAT, b64json, chat_body, requirement_of
from support.solana import OfficialSolanaPayer

from blockrun_proxy.testing import (
    DEFAULT_SOLANA_PAY_TO,
    SOLANA_DEVNET,
    SOLANA_MAINNET,
    SOLANA_USDC,
    ApiKeyFakeGateway,
    SolanaFakeGateway,
    verify_svm_payment,
)

RPC = "/api/v1/solana/rpc"


@pytest.fixture
def sgw() -> SolanaFakeGateway:
    return SolanaFakeGateway(stream_events=3)


@pytest.fixture
async def sclient(sgw: SolanaFakeGateway, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(sgw.app)


async def quote(client: TestClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await client.post(CHAT, json=body or chat_body())
    assert resp.status == 402
    return requirement_of(resp.headers["PAYMENT-REQUIRED"])


async def latest_blockhash(client: TestClient) -> str:
    resp = await client.post(RPC, json={"jsonrpc": "2.0", "id": 7, "method": "getLatestBlockhash"})
    doc = await resp.json()
    assert doc["id"] == 7
    return str(doc["result"]["value"]["blockhash"])


async def test_the_402_is_an_svm_exact_requirement(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    req = await quote(sclient)
    assert req["scheme"] == "exact"
    assert req["network"] == SOLANA_DEVNET
    assert req["asset"] == SOLANA_USDC[SOLANA_DEVNET]
    assert req["payTo"] == DEFAULT_SOLANA_PAY_TO
    assert req["extra"] == {"feePayer": sgw.facilitator.fee_payer}
    assert int(req["amount"]) > 0


async def test_a_payment_from_the_official_client_is_served_and_settled(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    payer = OfficialSolanaPayer()
    req = await quote(sclient)
    header = payer.header(req, await latest_blockhash(sclient))
    resp = await sclient.post(CHAT, json=chat_body(), headers={"PAYMENT-SIGNATURE": header})
    assert resp.status == 200, await resp.text()
    receipt = b64json(resp.headers["PAYMENT-RESPONSE"])
    assert receipt["success"] is True
    assert receipt["network"] == SOLANA_DEVNET
    assert receipt["payer"] == payer.address
    assert receipt["amount"] == req["amount"]
    assert receipt["transaction"] == sgw.facilitator.sent[0]
    assert [s.amount for s in sgw.settled] == [int(req["amount"])]
    assert sgw.payments[-1].accepted and sgw.payments[-1].payer == payer.address
    assert sgw.svm_verifier == "official"


async def test_resending_a_settled_transaction_is_a_replay(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    req = await quote(sclient)
    header = OfficialSolanaPayer().header(req, await latest_blockhash(sclient))
    first = await sclient.post(CHAT, json=chat_body(), headers={"PAYMENT-SIGNATURE": header})
    assert first.status == 200
    again = await sclient.post(CHAT, json=chat_body(), headers={"PAYMENT-SIGNATURE": header})
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "PAYMENT_REPLAY"
    assert len(sgw.settled) == 1 and len(sgw.facilitator.sent) == 1


@pytest.mark.parametrize("verifier", ["official", "builtin"])
async def test_refusals_say_why(verifier: str, aiohttp_client: AiohttpClient) -> None:
    sgw = SolanaFakeGateway(svm_verifier=verifier)  # type: ignore[arg-type]
    client = await aiohttp_client(sgw.app)
    payer = OfficialSolanaPayer()
    req = await quote(client)
    blockhash = await latest_blockhash(client)

    async def refused(header: str) -> str:
        resp = await client.post(CHAT, json=chat_body(), headers={"PAYMENT-SIGNATURE": header})
        assert resp.status == 402
        error = (await resp.json())["error"]
        assert error["code"] == "PAYMENT_INVALID"
        return str(error["message"])

    cheaper = dict(req, amount=str(int(req["amount"]) - 1))
    assert "amount" in await refused(payer.header(cheaper, blockhash))
    assert "Blockhash not found" in await refused(payer.header(req, str(Hash.new_unique())))
    # A transaction whose fee payer is not the gateway's cannot be completed by it.
    foreign = dict(req, extra={"feePayer": str(Keypair().pubkey())})
    assert "transaction_simulation_failed" in await refused(
        payer.header(foreign, blockhash, accepted=req)
    )
    assert sgw.settled == []


async def test_a_blockhash_expires_after_150_blocks() -> None:
    now = [1000.0]
    sgw = SolanaFakeGateway(clock=lambda: now[0])
    blockhash, last_valid = sgw.rpc.latest_blockhash()
    assert sgw.rpc.is_valid(blockhash)
    now[0] += (last_valid - sgw.rpc.block_height()) * sgw.rpc.slot_seconds + 1
    assert not sgw.rpc.is_valid(blockhash)
    assert sgw.rpc.latest_blockhash()[0] != blockhash


async def test_the_rpc_speaks_json_rpc_and_can_fail(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    async def call(method: str) -> Any:
        resp = await sclient.post(RPC, json={"jsonrpc": "2.0", "id": 1, "method": method})
        return resp.status, await resp.json() if resp.status == 200 else None

    _, doc = await call("getLatestBlockhash")
    value = doc["result"]["value"]
    assert sgw.rpc.issued[value["blockhash"]] == value["lastValidBlockHeight"]
    assert (await call("getBlockHeight"))[1]["result"] >= 0
    assert (await call("nope"))[1]["error"]["code"] == -32601
    sgw.rpc.misbehave.fail = 1
    assert (await call("getLatestBlockhash"))[0] == 503
    sgw.rpc.misbehave.rpc_error = True
    assert "error" in (await call("getLatestBlockhash"))[1]
    assert sgw.rpc.calls.count("getLatestBlockhash") == 3


async def test_misbehave_shapes_the_solana_quote(
    sgw: SolanaFakeGateway, sclient: TestClient
) -> None:
    ours = str(Keypair().pubkey())
    sgw.misbehave.extra = {"feePayer": ours, "memo": "x" * 300}
    sgw.misbehave.asset = SOLANA_USDC[SOLANA_MAINNET]
    req = await quote(sclient)
    assert req["extra"] == {"feePayer": ours, "memo": "x" * 300}
    assert req["asset"] == SOLANA_USDC[SOLANA_MAINNET]


async def test_free_models_need_no_payment(sclient: TestClient) -> None:
    resp = await sclient.post(CHAT, json=chat_body(model=FREE_MODEL))
    assert resp.status == 200


def test_unknown_networks_and_addresses_are_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        SolanaFakeGateway(network="solana:testnet")
    with pytest.raises(ValueError):
        SolanaFakeGateway(pay_to="0x000000000000000000000000000000000000dEaD")


def test_builtin_and_official_verifiers_agree() -> None:
    sgw = SolanaFakeGateway()
    payer = OfficialSolanaPayer()
    req = sgw.quote(2500).to_json()
    blockhash = sgw.rpc.latest_blockhash()[0]
    good = json.loads(base64.b64decode(payer.header(req, blockhash)))
    cases: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "good": (good, req),
        "dearer": (good, dict(req, amount="2501")),
        "elsewhere": (good, dict(req, payTo=str(Keypair().pubkey()))),
        "other mint": (good, dict(req, asset=SOLANA_USDC[SOLANA_MAINNET])),
        "no fee payer": (good, dict(req, extra={})),
        "other network": (good, dict(req, network=SOLANA_MAINNET)),
        "stale": (json.loads(base64.b64decode(payer.header(req, str(Hash.new_unique())))), req),
        "garbage": ({**good, "payload": {"transaction": "AAAA"}}, req),
    }
    for name, (payment, requirement) in cases.items():
        official = verify_svm_payment(payment, requirement, sgw.facilitator, "official")
        builtin = verify_svm_payment(payment, requirement, sgw.facilitator, "builtin")
        assert official[0] == builtin[0], name
        assert (official[1] or "").split(":")[0] == (builtin[1] or "").split(":")[0], name


def test_importing_the_fake_loads_neither_solders_nor_x402() -> None:
    code = (
        "import sys, blockrun_proxy.testing; "
        "bad = {m for m in sys.modules if m.split('.')[0] in ('solders', 'x402', 'solana')}; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_standalone_fake_plays_each_rail() -> None:
    from blockrun_proxy.testing.__main__ import _gateway, _parser

    solana = _gateway(_parser().parse_args(["--rail", "solana"]))
    assert isinstance(solana, SolanaFakeGateway) and solana.network == SOLANA_DEVNET
    mainnet = _gateway(_parser().parse_args(["--rail", "solana", "--network", SOLANA_MAINNET]))
    assert mainnet.network == SOLANA_MAINNET
    assert isinstance(_gateway(_parser().parse_args(["--rail", "apikey"])), ApiKeyFakeGateway)
    with pytest.raises(ValueError):
        _gateway(_parser().parse_args(["--rail", "solana", "--network", "eip155:8453"]))
