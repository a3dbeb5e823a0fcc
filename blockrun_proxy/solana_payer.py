"""The Solana payer: the only object that holds the Solana key and decides to sign.

The Solana twin of ``payer.Payer``, with the same shape so the payment core can hold
one payer per rail behind one interface (rails.py): ``choose`` and ``check`` (policy
only), ``begin_call`` (one client call's payment: budget, then the key). Two
differences, both from the chain:

- signing is a coroutine: a Solana transaction needs a recent blockhash. Once the
  ``BlockhashCache`` is warm it is read without waiting; cold, or after an RPC
  outage, the call waits for one fetch, and an unreachable RPC is a 503
  (``solana_rpc_unreachable``) before anything is reserved or signed.
- one signed transaction per call, never two. EVM's "one nonce per call" lets a call
  sign again after a refusal (the same nonce can settle once); a Solana transaction
  has no such shared nonce: each new one (new memo, maybe a new blockhash) could land
  as well. So ``SolanaCallPayment`` signs at most once, every replay of the call
  resends the same ``SignedSvmPayment.header``, and a second signature is refused.

The call's budget accounting is ``CallPayment``'s: the amount is reserved before the
key is used, committed once a send may have reached the gateway (answered, timed out,
dropped), released when no send ever did. A payment the gateway refused after it was
sent stays committed: the transaction it holds is valid until its blockhash expires
(``last_valid_block_height``, about a minute) and the gateway may still submit it.
The budget is an upper bound of what may have gone, so it counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from blockrun_proxy.blockhash import BlockhashCache
from blockrun_proxy.budget import BudgetStore, Reservation
from blockrun_proxy.config import SOLANA_KEY_ENV, SOLANA_WALLET_FILE, Settings
from blockrun_proxy.errors import BudgetStoreUnavailable, PaidCallFailed, WalletNotConfigured
from blockrun_proxy.payer import OnSent, refusals_as_402
from blockrun_proxy.x402 import (
    SETTLEMENT_ANOMALIES,
    PaymentRequired,
    PaymentResponse,
    Requirement,
    usd,
)
from blockrun_proxy.x402.payment import SETTLED_ABOVE_SIGNED, SETTLED_BELOW_SIGNED
from blockrun_proxy.x402.svm import (
    SOLANA_NETWORKS,
    SignedSvmPayment,
    SolanaNetwork,
    SolanaSigner,
    SvmPolicy,
    sign_svm_payment,
)

log = logging.getLogger(__name__)

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
        anomalies: dict[str, int] | None = None,
    ) -> None:
        self._signer = signer
        self.policy = policy
        self.blockhashes = blockhashes
        self.budget = budget
        # Transactions signed (each call signs at most one), and what reached the gateway
        # for metrics: one per paid call, its amount (as Payer counts them).
        self.signatures = 0
        self.payments_sent = 0
        self.sent_atomic = 0
        # Settlement reports that could not be true, by kind; the core shares one dict
        # between the rails (metrics read it once).
        self.anomalies = (
            anomalies if anomalies is not None else dict.fromkeys(SETTLEMENT_ANOMALIES, 0)
        )

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

    def check(self, requirement: Requirement, resource: Mapping[str, Any]) -> SolanaNetwork:
        """The network to sign ``requirement`` on, after every policy check."""
        with refusals_as_402():
            return self.policy.check(requirement, resource, self._payer_address())

    def begin_call(
        self, request_id: str = "", *, on_sent: OnSent | None = None
    ) -> SolanaCallPayment:
        """The payment of one client call: at most one signed transaction."""
        return SolanaCallPayment(self, request_id, on_sent)

    def warm_up(self) -> None:
        """Load what signing needs (solders' message and transaction types, our own token
        account on each network), so the first paid call does not pay for it. Blocking:
        run it off the event loop."""
        if self._signer is None:
            return
        import solders.hash
        import solders.instruction
        import solders.message
        import solders.signature
        import solders.transaction  # noqa: F401

        from blockrun_proxy.x402.svm.transaction import associated_token_account

        for name in self.policy.networks:
            network = SOLANA_NETWORKS.get(name)
            if network is not None:
                associated_token_account(
                    self._signer.address, network.usdc_mint, network.token_program
                )

    def _sign(
        self,
        requirement: Requirement,
        network: SolanaNetwork,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None,
        blockhash: str,
        last_valid_block_height: int,
    ) -> SignedSvmPayment:
        # Synchronous and fast (build, audit, one ed25519 signature: about 0.1 ms).
        if self._signer is None:
            raise WalletNotConfigured(NO_SOLANA_WALLET_MESSAGE)
        with refusals_as_402():
            payment = sign_svm_payment(
                self._signer,
                requirement,
                network,
                resource,
                blockhash=blockhash,
                last_valid_block_height=last_valid_block_height,
                extensions=extensions,
            )
        self.signatures += 1
        return payment

    def _payer_address(self) -> str:
        if self._signer is None:
            raise WalletNotConfigured(NO_SOLANA_WALLET_MESSAGE)
        return self._signer.address


class SolanaCallPayment:
    """One client call's Solana payment: its one transaction, what it holds of the
    budget, and whether it may have reached the gateway."""

    __slots__ = (
        "_cost",
        "_finished",
        "_on_sent",
        "_payer",
        "_reservation",
        "_sent",
        "payment",
        "request_id",
    )

    def __init__(self, payer: SolanaPayer, request_id: str, on_sent: OnSent | None) -> None:
        self._payer = payer
        self.request_id = request_id
        self._on_sent = on_sent
        self.payment: SignedSvmPayment | None = None  # the one transaction, once signed
        self._reservation: Reservation | None = None
        self._sent = False
        self._cost: int | None = None
        self._finished = False

    @property
    def sent_atomic(self) -> int | None:
        """The most this call may have cost so far; None while nothing may have been sent."""
        return self.payment.amount if self._sent and self.payment is not None else None

    async def pay(self, offer: PaymentRequired) -> SignedSvmPayment:
        """Check the offer against the policy and sign the chosen requirement."""
        requirement, network = self._payer.choose(offer)
        return await self.sign(requirement, network, offer.resource, offer.extensions)

    async def pay_requirement(
        self,
        requirement: Requirement,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedSvmPayment:
        """Check one requirement (e.g. built from a learned quote) and sign it."""
        network = self._payer.check(requirement, resource)
        return await self.sign(requirement, network, resource, extensions)

    async def sign(
        self,
        requirement: Requirement,
        network: SolanaNetwork,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedSvmPayment:
        """Sign a requirement that already passed ``choose`` (or ``check``): the call's one
        transaction. A second request to sign for the same call is refused: the first
        transaction may land whatever the gateway said of it."""
        if self._finished:
            raise RuntimeError("this call has finished paying")
        if self.payment is not None:
            raise PaidCallFailed(
                "this call already signed a Solana transaction, and a second one could land "
                "as well; nothing more was signed. It may have been charged. Not retried.",
                code="one_transaction_per_call",
                upstream_status="refused",
            )
        payer = self._payer
        if not payer.can_sign:
            raise WalletNotConfigured(NO_SOLANA_WALLET_MESSAGE)
        # The blockhash first (it may wait for the RPC); from the reservation to the
        # signature nothing awaits, so no other call can spend the same remainder between.
        blockhash = await payer.blockhashes.get()
        budget = payer.budget
        reservation = await budget.reserve(requirement.amount) if budget is not None else None
        try:
            payment = payer._sign(
                requirement,
                network,
                resource,
                extensions,
                blockhash.value,
                blockhash.last_valid_block_height,
            )
        except BaseException:
            if reservation is not None and budget is not None:
                await budget.release(reservation)  # nothing was signed after all
            raise
        self._reservation = reservation
        self.payment = payment
        return payment

    def sent(self, payment: SignedSvmPayment) -> None:
        """A send of ``payment`` may have reached the gateway: it may cost its amount."""
        if not self._sent:
            self._sent = True
            if self._on_sent is not None:
                self._on_sent(payment.amount)

    def settled(self, payment: SignedSvmPayment, settlement: PaymentResponse | None) -> int:
        """What the accepted ``payment`` cost: exactly the amount transferred. A report of
        another amount is the gateway's word against the transaction's: logged, counted,
        never taken (as ``x402.settled_cost`` rules for an EVM exact payment)."""
        cost = payment.amount
        claimed = settlement.amount if settlement is not None else None
        if claimed is not None and claimed != cost:
            anomaly = SETTLED_ABOVE_SIGNED if claimed > cost else SETTLED_BELOW_SIGNED
            self._payer.anomalies[anomaly] += 1
            log.warning(
                "gateway anomaly (%s): the settlement report claims $%s for a Solana "
                "transfer of $%s; the cost is $%s (request %s)",
                anomaly,
                usd(claimed),
                usd(cost),
                usd(cost),
                self.request_id,
            )
        self._cost = cost
        return cost

    async def finish(self) -> None:
        """The call will sign and send nothing more: commit what may have been sent,
        release what never left the proxy. Counted in the payer's totals once. Idempotent."""
        if self._finished:
            return
        self._finished = True
        payment = self.payment
        if self._sent and payment is not None:
            self._payer.payments_sent += 1
            self._payer.sent_atomic += payment.amount
        reservation, self._reservation = self._reservation, None
        budget = self._payer.budget
        if budget is None or reservation is None:
            return
        try:
            if self._sent:
                await budget.commit(reservation)
            else:
                await budget.release(reservation)
        except BudgetStoreUnavailable as exc:
            log.warning(
                "could not settle the budget for request %s: %s", self.request_id, exc.message
            )


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
    settings: Settings,
    blockhashes: BlockhashCache,
    budget: BudgetStore | None = None,
    *,
    anomalies: dict[str, int] | None = None,
) -> SolanaPayer:
    """The Solana payer ``settings`` describe. ``budget`` is shared with the other rails
    (one spend limit whatever the chain). ValueError, never echoing the key, for a key
    that does not parse."""
    signer = SolanaSigner(settings.solana_key) if settings.solana_key else None
    return SolanaPayer(
        signer, solana_policy_for(settings), blockhashes, budget=budget, anomalies=anomalies
    )
