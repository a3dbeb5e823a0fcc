"""The wallet rails behind one payer: USDC on Base (EVM) and USDC on Solana.

A gateway's 402 may offer several requirements, on several chains. ``Rails`` is what
``upstream.Gateway`` pays through: it splits each offer by rail (``is_solana_network``)
so the EVM policy only ever sees EVM requirements and the Solana policy only Solana
ones (a refusal names the rail's own reason, not "unknown network" for the other
rail's option), tries the rails in order (the one ``--chain`` names first, a rail
without a wallet last) and signs on the first that accepts. Both rails reserve in the
same budget (core.budget_store) and count in the same metrics.

One call pays on one rail. ``RailsCall`` (one client call's payments) hands the call to
the rail of its first signature and refuses a signature on another: an EVM payment and
a Solana one share no nonce, so both could settle. Within a rail the rail's own rule
holds: on EVM every authorization of a call carries one nonce (payer.CallPayment),
on Solana a call signs one transaction, ever (solana_payer.SolanaCallPayment).

The third rail, the BlockRun API key, signs nothing and has no payer: it is a gateway
of its own (apikey_gateway.py).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from blockrun_proxy.budget import BudgetStore
from blockrun_proxy.errors import PaymentRefused
from blockrun_proxy.payer import COST_SIGNED, CallPayment, OnSent, Payer
from blockrun_proxy.x402 import (
    Network,
    PaymentRequired,
    PaymentResponse,
    Requirement,
    SignedEvmPayment,
)
from blockrun_proxy.x402.svm.networks import SolanaNetwork, is_solana_network

if TYPE_CHECKING:
    from blockrun_proxy.quotes import Presign
    from blockrun_proxy.solana_payer import SolanaCallPayment, SolanaPayer
    from blockrun_proxy.x402.svm.payment import SignedSvmPayment

BASE = "base"
SOLANA = "solana"
# A requirement the policy of its rail accepted, with the network to sign it on.
Choice = tuple[Requirement, Network | SolanaNetwork]


class Payment(Protocol):
    """A signed payment of any rail, as the gateway sends it and the answer reports it."""

    @property
    def header(self) -> str: ...  # the PAYMENT-SIGNATURE value

    @property
    def amount(self) -> int: ...  # atomic USDC units it authorizes

    @property
    def requirement(self) -> Requirement: ...  # what it answers


def settles_optimistically(payment: Payment) -> bool:
    """Whether ``payment`` may be charged even when the gateway refuses it: a Solana
    transaction stays valid until its blockhash expires, and Solana gateways settle in
    parallel with the work (PROTOCOL.md section 3). Such a payment is never followed by
    another signature, and every failure after it is sent is a ``424``."""
    return _is_solana_payment(payment)


def _is_solana_payment(payment: Payment) -> TypeGuard[SignedSvmPayment]:
    # A Solana payment can only exist once its module was loaded: a proxy paying only on
    # Base never loads it (x402/svm/__init__.py), and never will for this check.
    module = sys.modules.get("blockrun_proxy.x402.svm.payment")
    return module is not None and isinstance(payment, module.SignedSvmPayment)


class Rails:
    """The payer of a gateway: the EVM payer, and the Solana one when Solana networks
    are allowed. ``prefer`` is the rail ``--chain`` names."""

    def __init__(self, evm: Payer, solana: SolanaPayer | None = None, *, prefer: str = BASE):
        self.evm = evm
        self.solana = solana
        self.prefer = prefer

    @property
    def budget(self) -> BudgetStore | None:
        return self.evm.budget  # the one budget every rail reserves in

    @property
    def can_sign(self) -> bool:
        return self.evm.can_sign or (self.solana is not None and self.solana.can_sign)

    @property
    def address(self) -> str | None:
        """The address the preferred rail pays from (the other's when it has no wallet)."""
        addresses = [rail.address for rail in self._ordered()]
        return next((a for a in addresses if a), None)

    @property
    def addresses(self) -> dict[str, str]:
        """Every wallet loaded, by rail."""
        found = {BASE: self.evm.address}
        if self.solana is not None:
            found[SOLANA] = self.solana.address
        return {rail: address for rail, address in found.items() if address}

    # What the metrics follow (metrics.watch_payer): summed over the rails.
    @property
    def payments_sent(self) -> int:
        return self.evm.payments_sent + (self.solana.payments_sent if self.solana else 0)

    @property
    def sent_atomic(self) -> int:
        return self.evm.sent_atomic + (self.solana.sent_atomic if self.solana else 0)

    @property
    def anomalies(self) -> dict[str, int]:
        return self.evm.anomalies  # shared with the Solana payer (core.payer)

    @property
    def upto_fallbacks(self) -> int:
        return self.evm.upto_fallbacks  # an EVM matter (--scheme auto)

    @property
    def after_settlement(self) -> Callable[[], None] | None:
        """Told after a payment settled (the balance watcher, which reads the EVM wallet)."""
        return self.evm.after_settlement

    @after_settlement.setter
    def after_settlement(self, callback: Callable[[], None] | None) -> None:
        self.evm.after_settlement = callback

    def choose(self, offer: PaymentRequired) -> Choice:
        """The requirement we would pay, and on which network, after every policy check."""
        return self.choices(offer)[0]

    def choices(self, offer: PaymentRequired) -> list[Choice]:
        """What one rail would pay of ``offer``, most preferred first (on EVM, one
        requirement per scheme: ``Payer.choices``), after every policy check.

        Each rail judges only its own requirements. When none passes, the refusal is the
        first rail's that had something to judge, so the client reads why the rail it
        pays on refused; an offer with nothing for any rail is ``network_not_allowed``.
        """
        refusals: list[PaymentRefused] = []
        for rail in self._ordered():
            accepts = tuple(r for r in offer.accepts if _rail_of(r.network) == _kind(rail))
            if not accepts:
                continue
            try:
                if isinstance(rail, Payer):
                    return list(rail.choices(_with_accepts(offer, accepts)))
                return [rail.choose(_with_accepts(offer, accepts))]
            except PaymentRefused as refusal:
                refusals.append(refusal)
        if refusals:
            raise refusals[0]
        networks = ", ".join(sorted({r.network for r in offer.accepts})) or "none"
        raise PaymentRefused(
            f"the gateway offers payment only on networks this proxy does not pay on "
            f"({networks}); see --networks and --chain",
            code="network_not_allowed",
        )

    def check(
        self, requirement: Requirement, resource: Mapping[str, Any]
    ) -> Network | SolanaNetwork:
        """The network to sign ``requirement`` on, by its rail's policy."""
        if is_solana_network(requirement.network):
            return self._solana_rail().check(requirement, resource)
        return self.evm.check(requirement, resource)

    def may_presign(self, quote: Presign) -> bool:
        """Whether a learned quote may be signed up front. On Solana only an exact one:
        a quote the gateway refuses cannot be re-signed there (``settles_optimistically``),
        so it fails the call instead of costing a round trip, and a least-squares estimate
        (``--presign-tolerance-usd``) falls short too often for that."""
        return quote.source != "estimate" or not is_solana_network(quote.requirement.network)

    def begin_call(self, request_id: str = "", *, on_sent: OnSent | None = None) -> RailsCall:
        """The payments of one client call. ``finish()`` it when the call is done paying."""
        return RailsCall(self, request_id, on_sent)

    def warm_up(self) -> None:
        """Load what signing needs on every rail (blocking: run it off the event loop)."""
        self.evm.address  # noqa: B018 (derives and caches it)
        if self.solana is not None:
            self.solana.warm_up()

    def _ordered(self) -> list[Payer | SolanaPayer]:
        rails: list[Payer | SolanaPayer] = [self.evm]
        if self.solana is not None:
            rails.insert(0 if self.prefer == SOLANA else 1, self.solana)
        # A rail that cannot sign would refuse with "no wallet": try the others first.
        return sorted(rails, key=lambda rail: not rail.can_sign)

    def _solana_rail(self) -> SolanaPayer:
        if self.solana is None:
            raise PaymentRefused(
                "the gateway asks for a Solana payment and no Solana network is allowed "
                "(--networks, --chain solana)",
                code="network_not_allowed",
            )
        return self.solana


class RailsCall:
    """One client call's payments, on the one rail its first signature chose."""

    __slots__ = ("_evm", "_on_sent", "_rails", "_solana", "request_id")

    def __init__(self, rails: Rails, request_id: str, on_sent: OnSent | None) -> None:
        self._rails = rails
        self.request_id = request_id
        self._on_sent = on_sent
        self._evm: CallPayment | None = None
        self._solana: SolanaCallPayment | None = None

    @property
    def sent_atomic(self) -> int | None:
        """The most this call may have cost so far; None while nothing may have been sent."""
        for call in (self._evm, self._solana):
            if call is not None and call.sent_atomic is not None:
                return call.sent_atomic
        return None

    @property
    def cost_source(self) -> str | None:
        """What the cost of the accepted payment rests on (payer.COST_*): on Solana, always
        the amount signed (an exact transfer)."""
        if self._solana is not None and self._solana.payment is not None:
            return COST_SIGNED
        return self._evm.cost_source if self._evm is not None else None

    async def pay_requirement(
        self,
        requirement: Requirement,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
        alternatives: Sequence[Requirement] = (),
    ) -> Payment:
        """Check one requirement (e.g. built from a learned quote) and sign it (on EVM, or
        one of ``alternatives``: ``CallPayment.pay_requirement``)."""
        if is_solana_network(requirement.network):
            return await self._solana_call().pay_requirement(requirement, resource, extensions)
        return await self._evm_call().pay_requirement(
            requirement, resource, extensions, alternatives
        )

    async def sign_first(
        self,
        choices: Sequence[Choice],
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> Payment:
        """Sign the first of ``choices`` (``Rails.choices``: all on one rail) that can be
        signed now, by that rail's rules."""
        requirement, network = choices[0]
        if isinstance(network, SolanaNetwork):
            return await self._solana_call().sign(requirement, network, resource, extensions)
        evm = [(r, n) for r, n in choices if not isinstance(n, SolanaNetwork)]
        return await self._evm_call().sign_first(evm, resource, extensions)

    async def sign(
        self,
        requirement: Requirement,
        network: Network | SolanaNetwork,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> Payment:
        """Sign a requirement that already passed ``Rails.choose`` on its rail."""
        return await self.sign_first([(requirement, network)], resource, extensions)

    def sent(self, payment: Payment) -> None:
        if _is_solana_payment(payment):
            self._solana_call().sent(payment)
        else:
            self._evm_call().sent(_evm_payment(payment))

    def not_used(self, payment: Payment) -> None:
        """The gateway said ``payment`` was not used. On EVM that frees what it held (the
        upto allowance); a Solana transaction may land all the same, so nothing changes."""
        if not _is_solana_payment(payment):
            self._evm_call().not_used(_evm_payment(payment))

    def settled(self, payment: Payment, settlement: PaymentResponse | None) -> int:
        if _is_solana_payment(payment):
            return self._solana_call().settled(payment, settlement)
        return self._evm_call().settled(_evm_payment(payment), settlement)

    async def finish(self) -> None:
        """Settle the call's account with the budget (idempotent)."""
        for call in (self._evm, self._solana):
            if call is not None:
                await call.finish()

    def _evm_call(self) -> CallPayment:
        if self._evm is None:
            if self._solana is not None and self._solana.payment is not None:
                raise _rail_changed(SOLANA, BASE)
            self._evm = self._rails.evm.begin_call(self.request_id, on_sent=self._on_sent)
        return self._evm

    def _solana_call(self) -> SolanaCallPayment:
        if self._solana is None:
            if self._evm is not None and self._evm.signed:
                raise _rail_changed(BASE, SOLANA)
            rail = self._rails._solana_rail()
            self._solana = rail.begin_call(self.request_id, on_sent=self._on_sent)
        return self._solana


def _rail_changed(signed: str, asked: str) -> PaymentRefused:
    return PaymentRefused(
        f"the gateway asks this call to pay on {asked} after it signed on {signed}; two "
        "payments on two chains could both settle, so nothing more was signed",
        code="rail_changed",
    )


def _evm_payment(payment: Payment) -> SignedEvmPayment:
    assert isinstance(payment, SignedEvmPayment)
    return payment


def _kind(rail: object) -> str:
    return BASE if isinstance(rail, Payer) else SOLANA


def _rail_of(network: str) -> str:
    return SOLANA if is_solana_network(network) else BASE


def _with_accepts(offer: PaymentRequired, accepts: tuple[Requirement, ...]) -> PaymentRequired:
    return dataclasses.replace(offer, accepts=accepts)
