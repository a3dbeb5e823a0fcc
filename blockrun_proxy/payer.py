"""The payer: the only object that holds the wallet and decides to sign.

Every signature is made for one client call, through that call's ``CallPayment``
(``Payer.begin_call``), after the payer policy (network, asset, payTo, cap,
timeout, resource host) has accepted the requirement and the spend budget has
reserved the amount. A refused check raises ``PaymentRefused`` and nothing is
signed. A signature made up front from a learned quote (quotes/) takes exactly
the same path as one answering a 402.

One nonce per call: every authorization a call signs (a payment signed up front,
then the one answering the fresh 402 after the gateway refused the first as
unused) carries the same EIP-3009 nonce. USDC marks a nonce used per authorizer,
so at most one of them can ever settle, whatever the gateway does with the others.
The call therefore holds, and finally counts, the largest amount it signed, never
the sum.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from blockrun_proxy.budget import BudgetStore, Reservation
from blockrun_proxy.config import WALLET_ENV, WALLET_FILE, Settings
from blockrun_proxy.errors import BudgetStoreUnavailable, PaymentRefused, WalletNotConfigured
from blockrun_proxy.x402 import (
    SETTLEMENT_ANOMALIES,
    Network,
    PayerPolicy,
    PaymentRequired,
    PaymentResponse,
    Refusal,
    Requirement,
    SignedPayment,
    Signer,
    settled_cost,
    sign_payment,
    usd,
)

log = logging.getLogger(__name__)

NO_WALLET_MESSAGE = (
    f"This model is paid and the proxy has no wallet. Set {WALLET_ENV}=0x<private key> "
    "(a Base wallet holding USDC) or create one with "
    '`python -c "from blockrun_llm import setup_agent_wallet; setup_agent_wallet()"` '
    f"(stored in {WALLET_FILE}), then restart blockrun-proxy. Free models work without a wallet."
)

# Told the amount (atomic USDC) a call's payment may have cost, as soon as it may have.
OnSent = Callable[[int], None]


class Payer:
    def __init__(
        self,
        signer: Signer | None,
        policy: PayerPolicy,
        *,
        budget: BudgetStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self.policy = policy
        self.budget = budget
        self._clock = clock
        # What reached the gateway, for metrics: one per paid call, its largest amount.
        self.payments_sent = 0
        self.sent_atomic = 0
        # Settlement reports that could not be true, by kind (x402.SETTLEMENT_ANOMALIES).
        self.anomalies: dict[str, int] = dict.fromkeys(SETTLEMENT_ANOMALIES, 0)

    @property
    def address(self) -> str | None:
        return self._signer.address if self._signer else None

    @property
    def can_sign(self) -> bool:
        return self._signer is not None

    def choose(self, offer: PaymentRequired) -> tuple[Requirement, Network]:
        """The requirement we would pay, after every policy check; raises PaymentRefused."""
        with refusals_as_402():
            return self.policy.select(offer)

    def check(self, requirement: Requirement, resource: Mapping[str, Any]) -> Network:
        """The network to sign ``requirement`` under, after every policy check."""
        with refusals_as_402():
            return self.policy.check(requirement, resource)

    def begin_call(self, request_id: str = "", *, on_sent: OnSent | None = None) -> CallPayment:
        """The payments of one client call. ``finish()`` it when the call is done paying."""
        return CallPayment(self, request_id, on_sent)

    def _sign(
        self,
        requirement: Requirement,
        network: Network,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None,
        nonce: bytes,
    ) -> SignedPayment:
        # Synchronous and fast (one coincurve signature, about 70 us): it stays on the loop.
        if self._signer is None:
            raise WalletNotConfigured(NO_WALLET_MESSAGE)
        with refusals_as_402():
            return sign_payment(
                self._signer,
                requirement,
                network,
                resource,
                now=int(self._clock()),
                nonce=nonce,
                extensions=extensions,
            )


class CallPayment:
    """One client call's payments: its one nonce, what it holds of the budget, what it
    signed and what may have reached the gateway.

    The budget sees the call as one growing reservation: signing again at a higher
    amount reserves only the difference (at most one of the call's authorizations can
    settle). ``finish`` then commits what may have been sent, at most the largest
    amount sent, and releases the rest; with nothing sent it releases everything.
    """

    __slots__ = (
        "_cost",
        "_finished",
        "_held",
        "_nonce",
        "_on_sent",
        "_payer",
        "_reservations",
        "_sent",
        "request_id",
        "signed",
    )

    def __init__(self, payer: Payer, request_id: str, on_sent: OnSent | None) -> None:
        self._payer = payer
        self.request_id = request_id
        self._on_sent = on_sent
        self._nonce: bytes | None = None  # drawn at the first signature
        self._reservations: list[Reservation] = []
        self._held = 0  # the largest amount signed: what the budget holds for this call
        self.signed: list[SignedPayment] = []
        self._sent: int | None = None  # the largest amount that may have reached the gateway
        self._cost: int | None = None  # what the accepted payment cost, once answered
        self._finished = False

    @property
    def nonce(self) -> bytes | None:
        return self._nonce

    @property
    def sent_atomic(self) -> int | None:
        """The most this call may have cost so far; None while nothing may have been sent."""
        return self._sent

    async def pay_requirement(
        self,
        requirement: Requirement,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedPayment:
        """Check one requirement (e.g. built from a learned quote) and sign it."""
        network = self._payer.check(requirement, resource)
        return await self.sign(requirement, network, resource, extensions)

    async def pay(self, offer: PaymentRequired) -> SignedPayment:
        """Check the offer against the policy and sign the chosen requirement."""
        requirement, network = self._payer.choose(offer)
        return await self.sign(requirement, network, offer.resource, offer.extensions)

    async def sign(
        self,
        requirement: Requirement,
        network: Network,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedPayment:
        """Sign a requirement that already passed ``choose`` (or ``check``), with this
        call's nonce, after the budget has reserved what it adds to the call's hold."""
        if self._finished:
            raise RuntimeError("this call has finished paying")
        if not self._payer.can_sign:
            raise WalletNotConfigured(NO_WALLET_MESSAGE)
        budget = self._payer.budget
        reservation = None
        more = requirement.amount - self._held
        if budget is not None and more > 0:
            reservation = await budget.reserve(more)
        if self._nonce is None:
            self._nonce = secrets.token_bytes(32)
        try:
            payment = self._payer._sign(requirement, network, resource, extensions, self._nonce)
        except BaseException:
            if reservation is not None and budget is not None:
                await budget.release(reservation)  # nothing was signed after all
            raise
        if reservation is not None:
            self._reservations.append(reservation)
        self._held = max(self._held, payment.amount)
        self.signed.append(payment)
        return payment

    def sent(self, payment: SignedPayment) -> None:
        """A send of ``payment`` may have reached the gateway (answered, timed out,
        dropped or cancelled mid-way): from now on it may cost its amount."""
        if self._sent is None or payment.amount > self._sent:
            self._sent = payment.amount
            if self._on_sent is not None:
                self._on_sent(payment.amount)

    def settled(self, payment: SignedPayment, settlement: PaymentResponse | None) -> int:
        """What the accepted ``payment`` cost (x402.settled_cost): the gateway's claimed
        amount only where it could be true; an impossible claim is logged and counted."""
        cost, anomaly = settled_cost(payment, settlement)
        if anomaly is not None:
            self._payer.anomalies[anomaly] += 1
            claimed = settlement.amount if settlement is not None else None
            log.warning(
                "gateway anomaly (%s): the settlement report claims $%s for a payment signed "
                "for $%s; the cost is $%s (request %s)",
                anomaly,
                "?" if claimed is None else usd(claimed),
                usd(payment.amount),
                usd(cost),
                self.request_id,
            )
        self._cost = cost
        return cost

    async def finish(self) -> None:
        """The call will sign and send nothing more: settle its account with the budget.

        What may have been sent is committed (the largest amount sent, or less when an
        accepted payment cost less), the rest released. Counted in the payer's sent
        totals once. Idempotent.
        """
        if self._finished:
            return
        self._finished = True
        sent = self._sent
        if sent is not None:
            self._payer.payments_sent += 1
            self._payer.sent_atomic += sent
        reservations, self._reservations = self._reservations, []
        budget = self._payer.budget
        if budget is None or not reservations:
            return
        try:
            if sent is None:  # nothing ever reached the gateway
                for reservation in reservations:
                    await budget.release(reservation)
                return
            spend = sent if self._cost is None else min(self._cost, sent)
            floor = 0  # the reservations are increments: each holds [floor, floor + amount)
            for reservation in reservations:
                if floor >= sent:
                    await budget.release(reservation)  # only a payment never sent got here
                else:
                    part = max(0, min(spend - floor, reservation.amount))
                    await budget.commit(reservation, None if part == reservation.amount else part)
                floor += reservation.amount
        except BudgetStoreUnavailable as exc:
            # The call is answered already; what the store holds runs out with its window.
            log.warning(
                "could not settle the budget for request %s: %s", self.request_id, exc.message
            )


@contextlib.contextmanager
def refusals_as_402() -> Iterator[None]:
    """The one boundary where the protocol's ``Refusal`` becomes the proxy's 402 answer."""
    try:
        yield
    except Refusal as refusal:
        raise PaymentRefused(refusal.message, code=refusal.code) from None


def payer_for(settings: Settings, *, budget: BudgetStore | None = None) -> Payer:
    """The payer ``settings`` describe: its wallet (if any) under its policy, reserving
    in ``budget`` (core.budget_store builds the one every rail shares).

    Called by the core (core.py) for the proxy and the in-process LiteLLM provider alike,
    so both sign under exactly the same rules. Raises ValueError (never echoing the key)
    for a wallet key that is not a valid secp256k1 secret.
    """
    signer = Signer(settings.wallet_key) if settings.wallet_key else None
    policy = PayerPolicy(
        networks=frozenset(settings.networks),
        max_timeout_seconds=settings.max_auth_seconds,
        max_amount=settings.max_amount,
        gateway_host=settings.gateway_host,
        pay_to=frozenset(p.lower() for p in settings.pay_to),
    )
    return Payer(signer, policy, budget=budget)
