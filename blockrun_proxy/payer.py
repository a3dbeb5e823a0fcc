"""The payer: the only object that holds the wallet and decides to sign.

Every signature the proxy makes goes through ``Payer.pay``, which applies the
payer policy (network, asset, payTo, cap, timeout, resource host) before the key
is touched. A refused check raises ``PaymentRefused`` and nothing is signed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from blockrun_proxy.config import WALLET_ENV, WALLET_FILE, Settings
from blockrun_proxy.errors import WalletNotConfigured
from blockrun_proxy.x402 import (
    Network,
    PayerPolicy,
    PaymentRequired,
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self.policy = policy
        self._clock = clock
        self.signatures = 0
        self.signed_atomic = 0

    @property
    def address(self) -> str | None:
        return self._signer.address if self._signer else None

    def choose(self, offer: PaymentRequired) -> tuple[Requirement, Network]:
        """The requirement we would pay, after every policy check; raises PaymentRefused."""
        return self.policy.select(offer)

    def sign(
        self,
        requirement: Requirement,
        network: Network,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedPayment:
        """Sign a requirement that already passed ``choose`` (or ``policy.check``)."""
        if self._signer is None:
            raise WalletNotConfigured(NO_WALLET_MESSAGE)
        payment = sign_payment(
            self._signer,
            requirement,
            network,
            resource,
            now=int(self._clock()),
            extensions=extensions,
        )
        self.signatures += 1
        self.signed_atomic += payment.amount
        return payment

    def pay(self, offer: PaymentRequired) -> SignedPayment:
        """Check the offer against the policy and sign the chosen requirement."""
        requirement, network = self.choose(offer)
        return self.sign(requirement, network, offer.resource, offer.extensions)


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
    return Payer(signer, policy)
