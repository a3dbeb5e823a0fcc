"""The Solana payer: the only object that holds the Solana key and decides to sign.

The Solana twin of ``payer.Payer``, with the same shape so the payment core can hold
one payer per rail behind one interface: ``choose`` (policy only), ``sign`` (budget,
then the key), ``pay`` (both). Two differences, both from the chain:

- ``sign`` is a coroutine: a Solana transaction needs a recent blockhash. Once the
  ``BlockhashCache`` is warm it is read without waiting; cold, or after an RPC
  outage, the call waits for one fetch, and an unreachable RPC is a 503
  (``solana_rpc_unreachable``) before anything is reserved or signed.
- Each ``sign`` builds a NEW transaction (new memo nonce, maybe a new blockhash), and
  two different transactions for one call could both land. So the caller signs at
  most once per call and replays ``SignedSvmPayment.header`` unchanged, never calls
  ``sign`` again for the same call (see the README's Solana section).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blockrun_proxy.blockhash import BlockhashCache
from blockrun_proxy.budget import BudgetStore
from blockrun_proxy.config import SOLANA_KEY_ENV, SOLANA_WALLET_FILE, Settings
from blockrun_proxy.errors import WalletNotConfigured
from blockrun_proxy.payer import refusals_as_402
from blockrun_proxy.x402 import PaymentRequired, Requirement
from blockrun_proxy.x402.svm import (
    SignedSvmPayment,
    SolanaNetwork,
    SolanaSigner,
    SvmPolicy,
    sign_svm_payment,
)

NO_SOLANA_WALLET_MESSAGE = (
    "This model is paid on Solana and the proxy has no Solana wallet. Set "
    f"{SOLANA_KEY_ENV}=<base58 secret key> (a Solana wallet holding USDC), pass "
    "--solana-keypair <solana-keygen JSON file>, or create one with "
    '`python -c "from blockrun_llm import setup_agent_solana_wallet; '
    'setup_agent_solana_wallet()"` '
    f"(stored in {SOLANA_WALLET_FILE}), then restart blockrun-proxy."
)


class SolanaPayer:
    def __init__(
        self,
        signer: SolanaSigner | None,
        policy: SvmPolicy,
        blockhashes: BlockhashCache,
        *,
        budget: BudgetStore | None = None,
    ) -> None:
        self._signer = signer
        self.policy = policy
        self.blockhashes = blockhashes
        self.budget = budget
        self.signatures = 0
        self.signed_atomic = 0

    @property
    def address(self) -> str | None:
        return self._signer.address if self._signer else None

    @property
    def can_sign(self) -> bool:
        return self._signer is not None

    def choose(self, offer: PaymentRequired) -> tuple[Requirement, SolanaNetwork]:
        """The Solana requirement we would pay, after every policy check; PaymentRefused."""
        with refusals_as_402():
            return self.policy.select(offer, self._payer_address())

    async def sign(
        self,
        requirement: Requirement,
        network: SolanaNetwork,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedSvmPayment:
        """Sign a requirement that already passed ``choose`` (or ``policy.check``).

        The blockhash is awaited first; from the budget reservation to the signature
        nothing awaits, so no other call can spend the same remainder in between.
        """
        if self._signer is None:
            raise WalletNotConfigured(NO_SOLANA_WALLET_MESSAGE)
        blockhash = await self.blockhashes.get()
        reservation = None
        if self.budget is not None:
            reservation = await self.budget.reserve(requirement.amount)
        try:
            with refusals_as_402():
                payment = sign_svm_payment(
                    self._signer,
                    requirement,
                    network,
                    resource,
                    blockhash=blockhash.value,
                    last_valid_block_height=blockhash.last_valid_block_height,
                    extensions=extensions,
                )
        except BaseException:
            if self.budget is not None and reservation is not None:
                await self.budget.release(reservation)  # nothing was signed after all
            raise
        if self.budget is not None and reservation is not None:
            # Counted as spent at once until this payer joins the per-call accounting
            # (CallPayment: commit once sent, release when provably unsent).
            await self.budget.commit(reservation)
        self.signatures += 1
        self.signed_atomic += payment.amount
        return payment

    async def pay(self, offer: PaymentRequired) -> SignedSvmPayment:
        """Check the offer against the policy and sign the chosen requirement."""
        requirement, network = self.choose(offer)
        return await self.sign(requirement, network, offer.resource, offer.extensions)

    async def pay_requirement(
        self,
        requirement: Requirement,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedSvmPayment:
        """Check one requirement (e.g. built from a learned quote) and sign it."""
        with refusals_as_402():
            network = self.policy.check(requirement, resource, self._payer_address())
        return await self.sign(requirement, network, resource, extensions)

    def _payer_address(self) -> str:
        if self._signer is None:
            raise WalletNotConfigured(NO_SOLANA_WALLET_MESSAGE)
        return self._signer.address


def solana_policy_for(settings: Settings) -> SvmPolicy:
    """The Solana policy ``settings`` describe (the same caps as the EVM one)."""
    return SvmPolicy(
        networks=frozenset(settings.solana_networks),
        max_amount=settings.max_amount,
        gateway_host=settings.gateway_host,
        max_timeout_seconds=settings.max_auth_seconds,
        pay_to=frozenset(settings.pay_to),
    )


def solana_payer_for(
    settings: Settings, blockhashes: BlockhashCache, budget: BudgetStore | None = None
) -> SolanaPayer:
    """The Solana payer ``settings`` describe. ``budget`` is shared with the other rails
    (one spend limit whatever the chain). ValueError, never echoing the key, for a key
    that does not parse."""
    signer = SolanaSigner(settings.solana_key) if settings.solana_key else None
    return SolanaPayer(signer, solana_policy_for(settings), blockhashes, budget=budget)
