"""``rails.Rails``: each 402's requirements judged by their own rail's policy, the --chain
rail first, a rail without a wallet last, and one call on one rail."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.svm import CountingSigner, new_blockhash, raw_requirement

from blockrun_proxy.blockhash import Blockhash, BlockhashCache
from blockrun_proxy.budget import MemoryBudgetStore
from blockrun_proxy.errors import PaymentRefused, WalletNotConfigured
from blockrun_proxy.payer import Payer
from blockrun_proxy.quotes import Presign
from blockrun_proxy.rails import BASE, SOLANA, Rails, settles_optimistically
from blockrun_proxy.solana_payer import SolanaPayer
from blockrun_proxy.x402 import (
    PayerPolicy,
    PaymentRequired,
    SignedPayment,
    Signer,
    encode_header,
    parse_payment_required,
)
from blockrun_proxy.x402.svm import SOLANA_MAINNET, SignedSvmPayment, SolanaNetwork, SvmPolicy

BASE_NET = "eip155:8453"
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
HOST = "sol.blockrun.ai"
RESOURCE = {"url": f"https://{HOST}/api/v1/chat/completions"}


def evm_requirement(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "scheme": "exact",
        "network": BASE_NET,
        "amount": "2500",
        "asset": BASE_USDC,
        "payTo": "0x000000000000000000000000000000000000dEaD",
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    raw.update(over)
    return raw


def offer(*accepts: dict[str, Any]) -> PaymentRequired:
    doc = {"x402Version": 2, "resource": RESOURCE, "accepts": list(accepts)}
    parsed = parse_payment_required(encode_header(doc), None)
    assert parsed is not None
    return parsed


class WarmCache(BlockhashCache):
    """A blockhash cache that never asks an RPC."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/")
        self.value = Blockhash(new_blockhash(), 1_000, 0.0)

    async def get(self) -> Blockhash:
        return self.value


@pytest.fixture
async def cache() -> AsyncIterator[WarmCache]:
    warm = WarmCache()
    yield warm
    await warm.close()


def rails(
    cache: BlockhashCache,
    *,
    prefer: str = BASE,
    evm_wallet: bool = True,
    solana_wallet: bool = True,
    budget: MemoryBudgetStore | None = None,
) -> Rails:
    evm_policy = PayerPolicy(networks=frozenset({BASE_NET}), max_amount=50_000, gateway_host=HOST)
    evm = Payer(Signer(secrets.token_bytes(32)) if evm_wallet else None, evm_policy, budget=budget)
    svm_policy = SvmPolicy(frozenset({SOLANA_MAINNET.caip2}), 50_000, HOST)
    signer = CountingSigner() if solana_wallet else None
    solana = SolanaPayer(signer, svm_policy, cache, budget=budget, anomalies=evm.anomalies)
    return Rails(evm, solana, prefer=prefer)


def test_the_chain_named_first_pays(cache: WarmCache) -> None:
    both = offer(evm_requirement(), raw_requirement())
    _, network = rails(cache, prefer=BASE).choose(both)
    assert network.caip2 == BASE_NET
    _, network = rails(cache, prefer=SOLANA).choose(both)
    assert isinstance(network, SolanaNetwork)


def test_each_policy_sees_only_its_own_rails_requirements(cache: WarmCache) -> None:
    # The Solana option is over the cap; the EVM one is fine: Base pays, whatever is preferred.
    mixed = offer(raw_requirement(amount="999999"), evm_requirement())
    requirement, _ = rails(cache, prefer=SOLANA).choose(mixed)
    assert requirement.network == BASE_NET
    # Nothing payable: the refusal is the preferred rail's own, not "unknown network".
    bad = offer(raw_requirement(amount="999999"), evm_requirement(asset="0x" + "ab" * 20))
    with pytest.raises(PaymentRefused) as exc:
        rails(cache, prefer=SOLANA).choose(bad)
    assert exc.value.code == "amount_over_cap"
    with pytest.raises(PaymentRefused) as exc:
        rails(cache, prefer=BASE).choose(bad)
    assert exc.value.code == "asset_mismatch"


def test_a_rail_without_a_wallet_goes_last(cache: WarmCache) -> None:
    both = offer(raw_requirement(), evm_requirement())
    _, network = rails(cache, prefer=SOLANA, solana_wallet=False).choose(both)
    assert network.caip2 == BASE_NET
    only_solana = offer(raw_requirement())
    with pytest.raises(WalletNotConfigured):
        rails(cache, solana_wallet=False).choose(only_solana)


def test_an_offer_for_no_rail_we_pay_on_is_refused(cache: WarmCache) -> None:
    plain = Rails(rails(cache).evm)  # no Solana networks allowed
    with pytest.raises(PaymentRefused) as exc:
        plain.choose(offer(raw_requirement()))
    assert exc.value.code == "network_not_allowed"


async def test_one_call_pays_on_one_rail(cache: WarmCache) -> None:
    budget = MemoryBudgetStore(10_000_000, 3600)
    both = rails(cache, budget=budget)
    call = both.begin_call("r1")
    evm_req, evm_net = both.choose(offer(evm_requirement()))
    payment = await call.sign(evm_req, evm_net, RESOURCE)
    assert isinstance(payment, SignedPayment) and not settles_optimistically(payment)
    svm_req, svm_net = both.choose(offer(raw_requirement()))
    with pytest.raises(PaymentRefused) as exc:
        await call.sign(svm_req, svm_net, RESOURCE)
    assert exc.value.code == "rail_changed"
    call.sent(payment)
    await call.finish()
    assert (await budget.usage()).spent == 2500 and both.payments_sent == 1

    other = both.begin_call("r2")
    svm_payment = await other.sign(svm_req, svm_net, RESOURCE)
    assert isinstance(svm_payment, SignedSvmPayment) and settles_optimistically(svm_payment)
    with pytest.raises(PaymentRefused) as exc:
        await other.sign(evm_req, evm_net, RESOURCE)
    assert exc.value.code == "rail_changed"
    await other.finish()  # never sent: released
    assert (await budget.usage()).spent == 2500 and both.payments_sent == 1


async def test_up_front_solana_payments_come_only_from_exact_quotes(cache: WarmCache) -> None:
    both = rails(cache)
    solana = parse_payment_required(
        encode_header({"x402Version": 2, "accepts": [raw_requirement()]}), None
    )
    base = parse_payment_required(
        encode_header({"x402Version": 2, "accepts": [evm_requirement()]}), None
    )
    assert solana is not None and base is not None

    def quote(requirement: Any, source: str) -> Presign:
        return Presign(("/v1/chat/completions", "m"), requirement, RESOURCE, None, 0, source)

    assert both.may_presign(quote(solana.accepts[0], "formula"))
    assert not both.may_presign(quote(solana.accepts[0], "estimate"))
    assert both.may_presign(quote(base.accepts[0], "estimate"))


def test_addresses_and_counters_span_the_rails(cache: WarmCache) -> None:
    both = rails(cache)
    assert set(both.addresses) == {BASE, SOLANA}
    assert both.address == both.evm.address
    assert rails(cache, prefer=SOLANA).address != both.evm.address
    assert both.anomalies is both.evm.anomalies
    assert both.solana is not None and both.solana.anomalies is both.anomalies


def test_a_proxy_paying_on_base_loads_none_of_solanas_signing_code() -> None:
    """Startup is measured: the Solana policy, transaction and signer modules (and
    solders) load only for a proxy that pays on Solana."""
    import subprocess
    import sys

    code = (
        "import sys, blockrun_proxy.server, blockrun_proxy.core, blockrun_proxy.rails\n"
        "from blockrun_proxy.config import Settings\n"
        "from blockrun_proxy.core import payer\n"
        "payer(Settings(), None).choose\n"
        "print(sorted(m for m in sys.modules if 'svm.' in m or m.startswith('solders')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # (_base58 came with blockhash.py, now imported only for a proxy allowing Solana.)
    assert out.stdout.strip() == "['blockrun_proxy.x402.svm.networks']"
