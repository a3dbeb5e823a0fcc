"""The Solana payer against the fake Solana gateway: pays what the official verifier
accepts, signs nothing for a hostile gateway, one transaction per call with the budget
accounting of an EVM call, and an unreachable RPC is a 503."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from solders.keypair import Keypair

from blockrun_proxy.blockhash import BlockhashCache
from blockrun_proxy.budget import MemoryBudgetStore
from blockrun_proxy.config import Settings
from blockrun_proxy.errors import (
    PaidCallFailed,
    PaymentRefused,
    SolanaRpcUnreachable,
    WalletNotConfigured,
)
from blockrun_proxy.solana_payer import SolanaPayer, solana_payer_for, solana_policy_for
from blockrun_proxy.testing import (
    SOLANA_DEVNET,
    SOLANA_MAINNET,
    SOLANA_USDC,
    Misbehavior,
    SolanaFakeGateway,
)
from blockrun_proxy.x402 import PaymentRequired, parse_payment_required
from blockrun_proxy.x402.svm import SolanaSigner, SvmPolicy
from blockrun_proxy.x402.svm._base58 import b58encode

BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class CountingSigner(SolanaSigner):
    def __init__(self) -> None:
        super().__init__(b58encode(bytes(Keypair())))
        self.signatures = 0

    def sign_message(self, message: bytes) -> Any:
        self.signatures += 1
        return super().sign_message(message)


@pytest.fixture
async def sgw() -> AsyncIterator[SolanaFakeGateway]:
    gateway = SolanaFakeGateway()
    await gateway.start()
    yield gateway
    await gateway.close()


@pytest.fixture
async def blockhashes(sgw: SolanaFakeGateway) -> AsyncIterator[BlockhashCache]:
    cache = BlockhashCache(str(sgw.rpc_url))
    yield cache
    await cache.close()


def policy(**over: Any) -> SvmPolicy:
    fields: dict[str, Any] = {
        "networks": frozenset({SOLANA_DEVNET}),
        "max_amount": 500_000,
        "gateway_host": "127.0.0.1",
    }
    fields.update(over)
    return SvmPolicy(**fields)


async def challenge(sgw: SolanaFakeGateway) -> PaymentRequired:
    url = f"{sgw.base_url}/v1/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=BODY) as resp:
        assert resp.status == 402
        offer = parse_payment_required(resp.headers["PAYMENT-REQUIRED"], await resp.read())
    assert offer is not None
    return offer


async def send(sgw: SolanaFakeGateway, header: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sgw.base_url}/v1/chat/completions", json=BODY, headers={"PAYMENT-SIGNATURE": header}
        ) as resp,
    ):
        return resp.status, await resp.read()


async def test_a_payment_is_accepted_by_the_gateway_and_replays_cannot_pay_twice(
    sgw: SolanaFakeGateway, blockhashes: BlockhashCache
) -> None:
    signer = CountingSigner()
    budget = MemoryBudgetStore(10_000_000, 3600)
    payer = SolanaPayer(signer, policy(), blockhashes, budget=budget)
    heard: list[int] = []
    call = payer.begin_call("r1", on_sent=heard.append)
    payment = await call.pay(await challenge(sgw))
    assert (await budget.usage()).spent == payment.amount  # held before the key was used
    call.sent(payment)
    assert await send(sgw, payment.header) == (200, sgw.sent_bodies[-1])
    assert sgw.payments[-1].accepted, sgw.payments[-1].reason
    assert sgw.svm_verifier == "official"
    # The same transaction again (a replay after a dropped connection): never a 2nd charge.
    status, _ = await send(sgw, payment.header)
    assert status == 409
    assert [s.amount for s in sgw.settled] == [payment.amount]
    # A second transaction for the same call could land too: it is never signed.
    with pytest.raises(PaidCallFailed) as second:
        await call.pay(await challenge(sgw))
    assert second.value.code == "one_transaction_per_call" and second.value.status == 424
    assert signer.signatures == 1 and payer.signatures == 1
    await call.finish()
    assert heard == [payment.amount] and call.sent_atomic == payment.amount
    assert (await budget.usage()).spent == payment.amount == payer.sent_atomic
    assert payer.payments_sent == 1
    assert payment.blockhash in sgw.rpc.issued
    assert payment.last_valid_block_height == sgw.rpc.issued[payment.blockhash]


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("foreign mint", {"asset": str(Keypair().pubkey())}, "asset_mismatch"),
    ("mainnet mint on devnet", {"asset": SOLANA_USDC[SOLANA_MAINNET]}, "asset_mismatch"),
    (
        "unknown network",
        {"network": "solana:4uhcVJyU9pJkvQyS88uRDiswHXSCkY3z"},
        "network_not_allowed",
    ),
    ("over the cap", {"price_multiplier": 1000.0}, "amount_over_cap"),
    (
        "payTo not an address",
        {"pay_to": "0x000000000000000000000000000000000000dEaD"},
        "pay_to_not_allowed",
    ),
    ("no fee payer", {"extra": {"feePayer": None}}, "fee_payer_invalid"),
    ("memo over 256 bytes", {"extra": {"memo": "m" * 300}}, "memo_invalid"),
    ("an hour to settle", {"max_timeout_seconds": 3600}, "timeout_too_long"),
    (
        "another host",
        {"resource_url": "https://evil.example/v1/chat/completions"},
        "resource_host_mismatch",
    ),
    ("upto", {"scheme": "upto"}, "scheme_not_supported"),
]


async def test_a_hostile_gateway_gets_zero_signatures(
    sgw: SolanaFakeGateway, blockhashes: BlockhashCache
) -> None:
    signer = CountingSigner()
    budget = MemoryBudgetStore(10_000_000, 3600)
    payer = SolanaPayer(signer, policy(), blockhashes, budget=budget)
    cases = [
        *HOSTILE,
        ("fee payer is our key", {"extra": {"feePayer": signer.address}}, "fee_payer_invalid"),
    ]
    for name, knobs, code in cases:
        for knob, value in knobs.items():
            setattr(sgw.misbehave, knob, value)
        call = payer.begin_call()
        with pytest.raises(PaymentRefused) as exc:
            await call.pay(await challenge(sgw))
        await call.finish()
        assert exc.value.code == code, name
        assert exc.value.status == 402
        sgw.misbehave = Misbehavior()
    assert signer.signatures == 0 and payer.signatures == 0
    assert (await budget.usage()).spent == 0


async def test_an_unreachable_rpc_is_a_503_before_anything_is_reserved_or_signed(
    sgw: SolanaFakeGateway,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    cache = BlockhashCache(dead, timeout_seconds=2)
    signer = CountingSigner()
    budget = MemoryBudgetStore(10_000_000, 3600)
    payer = SolanaPayer(signer, policy(), cache, budget=budget)
    try:
        with pytest.raises(SolanaRpcUnreachable) as exc:
            await payer.begin_call().pay(await challenge(sgw))
    finally:
        await cache.close()
    assert exc.value.status == 503 and exc.value.code == "solana_rpc_unreachable"
    assert signer.signatures == 0 and (await budget.usage()).spent == 0


async def test_the_budget_is_checked_before_the_key_is_used(
    sgw: SolanaFakeGateway, blockhashes: BlockhashCache
) -> None:
    signer = CountingSigner()
    payer = SolanaPayer(signer, policy(), blockhashes, budget=MemoryBudgetStore(1, 3600))
    with pytest.raises(PaymentRefused) as exc:
        await payer.begin_call().pay(await challenge(sgw))
    assert exc.value.code == "budget_exceeded"
    assert signer.signatures == 0


async def test_without_a_wallet_the_error_says_how_to_get_one(
    sgw: SolanaFakeGateway, blockhashes: BlockhashCache
) -> None:
    payer = SolanaPayer(None, policy(), blockhashes)
    assert not payer.can_sign and payer.address is None
    with pytest.raises(WalletNotConfigured) as exc:
        await payer.begin_call().pay(await challenge(sgw))
    assert "BLOCKRUN_SOLANA_KEY" in exc.value.message


async def test_presigning_from_a_requirement_takes_the_same_checks(
    sgw: SolanaFakeGateway, blockhashes: BlockhashCache
) -> None:
    signer = CountingSigner()
    payer = SolanaPayer(signer, policy(), blockhashes)
    offer = await challenge(sgw)
    payment = await payer.begin_call().pay_requirement(offer.accepts[0], offer.resource)
    assert (await send(sgw, payment.header))[0] == 200
    with pytest.raises(PaymentRefused):
        await payer.begin_call().pay_requirement(
            offer.accepts[0], {"url": "https://evil.example/x"}
        )
    assert signer.signatures == 1


async def test_a_payment_never_sent_is_released_a_refused_one_stays_counted(
    sgw: SolanaFakeGateway, blockhashes: BlockhashCache
) -> None:
    budget = MemoryBudgetStore(10_000_000, 3600)
    payer = SolanaPayer(CountingSigner(), policy(), blockhashes, budget=budget)
    unsent = payer.begin_call()
    await unsent.pay(await challenge(sgw))
    await unsent.finish()  # signed, but no send ever reached the gateway
    assert (await budget.usage()).spent == 0
    assert payer.payments_sent == 0

    sgw.misbehave.refuse_paid = 1
    refused = payer.begin_call()
    payment = await refused.pay(await challenge(sgw))
    refused.sent(payment)
    assert (await send(sgw, payment.header))[0] == 402  # "not used": it may land all the same
    await refused.finish()
    assert (await budget.usage()).spent == payment.amount


def test_the_payer_is_built_from_settings() -> None:
    key = b58encode(bytes(Keypair()))
    pinned = str(Keypair().pubkey())
    settings = Settings(
        networks=("eip155:8453", SOLANA_MAINNET),
        api_url="https://sol.blockrun.ai/api",
        solana_key=key,
        pay_to=(pinned, "0x000000000000000000000000000000000000dEaD"),
    )
    cache = BlockhashCache("http://127.0.0.1:1/")
    payer = solana_payer_for(settings, cache)
    assert payer.can_sign and payer.address == SolanaSigner(key).address
    assert key not in repr(payer.__dict__)
    assert solana_policy_for(settings) == SvmPolicy(
        networks=frozenset({SOLANA_MAINNET}),
        max_amount=500_000,
        gateway_host="sol.blockrun.ai",
        max_timeout_seconds=900,
        pay_to=frozenset({pinned, "0x000000000000000000000000000000000000dEaD"}),
    )
    assert not solana_payer_for(Settings(), cache).can_sign
