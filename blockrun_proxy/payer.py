"""The payer: the only object that holds the wallet and decides to sign.

Every signature the proxy makes goes through ``Payer.sign``, after the payer
policy (network, asset, payTo, cap, timeout, resource host) has accepted the
requirement, and ``sign`` itself checks and records the spend budget right
before the key is touched. A refused check raises ``PaymentRefused`` and nothing
is signed. A signature made up front from a learned quote (quotes.py) takes
exactly the same path as one answering a 402.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from blockrun_proxy.budget import SpendBudget
from blockrun_proxy.config import WALLET_ENV, WALLET_FILE, Settings
from blockrun_proxy.errors import PaymentRefused, WalletNotConfigured
from blockrun_proxy.x402 import (
    Network,
    PayerPolicy,
    PaymentRequired,
    Refusal,
    Requirement,
    SignedPayment,
    Signer,
    sign_payment,
)

NO_WALLET_MESSAGE = (
    f"This model is paid and the proxy has no wallet. Set {WALLET_ENV}=0x<private key> "
    "(a Base wallet holding USDC) or create one with "
    '`python -c "from blockrun_llm import setup_agent_wallet; setup_agent_wallet()"` '
    f"(stored in {WALLET_FILE}), then restart blockrun-proxy. Free models work without a wallet."
)


class Payer:
    def __init__(
        self,
        signer: Signer | None,
        policy: PayerPolicy,
        *,
        budget: SpendBudget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self.policy = policy
        self.budget = budget
        self._clock = clock
        self.signatures = 0
        self.signed_atomic = 0
        # Told of every signature, right after it is made (the app notes it on the request
        # it belongs to, for the spend ledger). Must not raise or block.
        self.on_signed: Callable[[SignedPayment], None] | None = None

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

    def sign(
        self,
        requirement: Requirement,
        network: Network,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedPayment:
        """Sign a requirement that already passed ``choose`` (or ``policy.check``).

        The budget is checked and the amount recorded in this same synchronous
        call, so no other request can spend the same remainder in between.
        """
        if self._signer is None:
            raise WalletNotConfigured(NO_WALLET_MESSAGE)
        if self.budget is not None:
            self.budget.reserve(requirement.amount)
        try:
            with refusals_as_402():
                payment = sign_payment(
                    self._signer,
                    requirement,
                    network,
                    resource,
                    now=int(self._clock()),
                    extensions=extensions,
                )
        except BaseException:
            if self.budget is not None:
                self.budget.refund(requirement.amount)  # nothing was signed after all
            raise
        self.signatures += 1
        self.signed_atomic += payment.amount
        if self.on_signed is not None:
            self.on_signed(payment)
        return payment

    def pay(self, offer: PaymentRequired) -> SignedPayment:
        """Check the offer against the policy and sign the chosen requirement."""
        requirement, network = self.choose(offer)
        return self.sign(requirement, network, offer.resource, offer.extensions)

    def pay_requirement(
        self,
        requirement: Requirement,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedPayment:
        """Check one requirement (e.g. built from a learned quote) and sign it."""
        with refusals_as_402():
            network = self.policy.check(requirement, resource)
        return self.sign(requirement, network, resource, extensions)


@contextlib.contextmanager
def refusals_as_402() -> Iterator[None]:
    """The one boundary where the protocol's ``Refusal`` becomes the proxy's 402 answer."""
    try:
        yield
    except Refusal as refusal:
        raise PaymentRefused(refusal.message, code=refusal.code) from None


def payer_for(settings: Settings) -> Payer:
    """The payer ``settings`` describe: its wallet (if any) under its policy.

    One constructor for the proxy and the in-process LiteLLM provider, so both sign
    under exactly the same rules. Raises ValueError (never echoing the key) for a
    wallet key that is not a valid secp256k1 secret.
    """
    signer = Signer(settings.wallet_key) if settings.wallet_key else None
    policy = PayerPolicy(
        networks=frozenset(settings.networks),
        max_timeout_seconds=settings.max_auth_seconds,
        max_amount=settings.max_amount,
        gateway_host=settings.gateway_host,
        pay_to=frozenset(p.lower() for p in settings.pay_to),
    )
    # With --redis-url the fleet's shared store is the budget (reserved by the gateway
    # flow); a second, per-process count beside it would only disagree with it.
    budget = (
        SpendBudget(settings.budget_atomic, settings.budget_window_seconds)
        if settings.budget_atomic is not None and settings.redis_url is None
        else None
    )
    return Payer(signer, policy, budget=budget)
