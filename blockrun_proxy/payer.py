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

Upto (PROTOCOL.md section 4; ``--scheme upto|auto``): the call signs a Permit2 ceiling
instead, under ONE Permit2 nonce per call (Permit2 spends a nonce once per owner: the
same invariant), and a call never mixes schemes (an EIP-3009 nonce and a Permit2 nonce
are two things that could each settle). Before signing, the budget reserves the
ceiling and the wallet's Permit2 allowance is reserved for it (allowance.py: one
``Permit2Allowance`` per network for this wallet, read through ``--rpc-url``); when the
allowance cannot cover it, ``auto`` signs the same 402's exact requirement instead and
``upto`` refuses (``permit2_allowance_required``, ``permit2_allowance_busy``, 503
``permit2_allowance_unknown``). Once settled, the cost is the settled amount (at most
the ceiling; the ceiling when the gateway does not say), which the budget commits,
releasing the rest, and the allowance books.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blockrun_proxy.budget import BudgetStore, Reservation
from blockrun_proxy.config import WALLET_ENV, WALLET_FILE, Settings
from blockrun_proxy.errors import (
    ALLOWANCE_BUSY,
    ALLOWANCE_REQUIRED,
    AllowanceUnknown,
    BudgetStoreUnavailable,
    PaymentRefused,
    ProxyError,
    WalletNotConfigured,
)
from blockrun_proxy.x402 import (
    SETTLEMENT_ANOMALIES,
    UPTO_SCHEME,
    Network,
    PayerPolicy,
    PaymentRequired,
    PaymentResponse,
    Refusal,
    Requirement,
    SignedEvmPayment,
    SignedPayment,
    SignedUptoPayment,
    Signer,
    gas_sponsoring_declared,
    new_permit2_nonce,
    settled_cost,
    sign_payment,
    sign_upto_payment,
    usd,
)

if TYPE_CHECKING:
    # allowance.py and evm_rpc.py are imported where an upto payment first needs them:
    # only a proxy with --scheme upto|auto and --rpc-url signs upto, and startup is measured.
    from blockrun_proxy.allowance import AllowanceHold, Permit2Allowance
    from blockrun_proxy.evm_rpc import EvmRpc

log = logging.getLogger(__name__)

NO_WALLET_MESSAGE = (
    f"This model is paid and the proxy has no wallet. Set {WALLET_ENV}=0x<private key> "
    "(a Base wallet holding USDC) or create one with "
    '`python -c "from blockrun_llm import setup_agent_wallet; setup_agent_wallet()"` '
    f"(stored in {WALLET_FILE}), then restart blockrun-proxy. Free models work without a wallet."
)

# Told the amount (atomic USDC) a call's payment may have cost, as soon as it may have.
OnSent = Callable[[int], None]
# Why an upto requirement could not be signed now, when an ``auto`` payer pays exact
# instead: the allowance is short or busy (allowance.py), or could not be read.
UPTO_UNAVAILABLE = frozenset({ALLOWANCE_REQUIRED, ALLOWANCE_BUSY, AllowanceUnknown.code})
# A refusal for want of allowance reads the chain again at most this often (allowance.py):
# an auto payer falling back on every call must not add an RPC round trip to each.
ALLOWANCE_REREAD_GAP_SECONDS = 5.0
# What a cost figure rests on (x-blockrun-cost-source): the amount signed (exact), the
# amount the gateway reports it settled (upto), or the ceiling standing in for it.
COST_SIGNED = "signed"
COST_SETTLED = "settled"
COST_CEILING = "ceiling"


class Payer:
    def __init__(
        self,
        signer: Signer | None,
        policy: PayerPolicy,
        *,
        budget: BudgetStore | None = None,
        rpc: EvmRpc | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self.policy = policy
        self.budget = budget
        # Where the Permit2 allowance is read from (upto); shared, owned by the core.
        self.rpc = rpc
        self._clock = clock
        # One allowance account per network for this wallet (allowance.py).
        self._allowances: dict[str, Permit2Allowance] = {}
        # Told (synchronously, must not block) after a payment settled: the balance
        # watcher reads the wallet again soon.
        self.after_settlement: Callable[[], None] | None = None
        # What reached the gateway, for metrics: one per paid call, its largest amount.
        self.payments_sent = 0
        self.sent_atomic = 0
        # Settlement reports that could not be true, by kind (x402.SETTLEMENT_ANOMALIES).
        self.anomalies: dict[str, int] = dict.fromkeys(SETTLEMENT_ANOMALIES, 0)
        # Calls an auto payer paid exact because upto could not be signed (the allowance).
        self.upto_fallbacks = 0

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

    def choices(self, offer: PaymentRequired) -> list[tuple[Requirement, Network]]:
        """Per scheme paid, most preferred first, the requirement the policy accepts
        (PayerPolicy.choices); raises PaymentRefused when there is none."""
        with refusals_as_402():
            return self.policy.choices(offer)

    def allowance(self, network: Network) -> Permit2Allowance:
        """This wallet's Permit2 allowance account on ``network``."""
        tracker = self._allowances.get(network.caip2)
        if tracker is None:
            from blockrun_proxy.allowance import Permit2Allowance  # upto only: startup

            tracker = Permit2Allowance(reread_gap=ALLOWANCE_REREAD_GAP_SECONDS, clock=self._clock)
            self._allowances[network.caip2] = tracker
        return tracker

    async def hold_allowance(
        self,
        requirement: Requirement,
        network: Network,
        extensions: Mapping[str, Any] | None,
        deadline: int,
    ) -> tuple[Permit2Allowance, AllowanceHold]:
        """Reserve the allowance an upto ``requirement`` draws on (allowance.acquire);
        PaymentRefused (the allowance is short or busy) or AllowanceUnknown (no reading)."""
        if self._signer is None:
            raise WalletNotConfigured(NO_WALLET_MESSAGE)
        if self.rpc is None:
            raise AllowanceUnknown(
                "an upto payment needs the wallet's Permit2 allowance, read through --rpc-url, "
                "and none is set; nothing was signed"
            )
        # Here, on the upto path only (a sys.modules lookup once loaded): startup.
        from blockrun_proxy.allowance import acquire
        from blockrun_proxy.evm_rpc import RpcError

        tracker = self.allowance(network)
        try:
            with refusals_as_402():
                hold = await acquire(
                    tracker,
                    self.rpc,
                    network,
                    self._signer.address,
                    requirement.amount,
                    deadline=deadline,
                    sponsoring=gas_sponsoring_declared(extensions),
                )
        except RpcError as exc:
            raise AllowanceUnknown(
                f"the wallet's Permit2 allowance could not be read ({exc.message}); "
                "nothing was signed"
            ) from None
        return tracker, hold

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

    def _sign_upto(
        self,
        requirement: Requirement,
        network: Network,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None,
        *,
        now: int,
        nonce: int,
        permit_nonce: int | None,
    ) -> SignedUptoPayment:
        # Synchronous too: two or three Keccak hashes and one signature (two with a permit).
        if self._signer is None:
            raise WalletNotConfigured(NO_WALLET_MESSAGE)
        with refusals_as_402():
            return sign_upto_payment(
                self._signer,
                requirement,
                network,
                resource,
                now=now,
                nonce=nonce,
                permit_nonce=permit_nonce,
                extensions=extensions,
            )


@dataclass(eq=False, slots=True)
class _UptoHold:
    """The allowance one upto signature of a call holds, until settled or released."""

    payment: SignedUptoPayment
    tracker: Permit2Allowance
    hold: AllowanceHold
    sent: bool = False


class CallPayment:
    """One client call's payments: its one nonce, what it holds of the budget (and, for
    upto, of the Permit2 allowance), what it signed and what may have reached the gateway.

    The budget sees the call as one growing reservation: signing again at a higher
    amount reserves only the difference (at most one of the call's authorizations can
    settle). ``finish`` then commits what may have been sent, at most the largest
    amount sent, or what the accepted payment cost when that is less (upto), and
    releases the rest; with nothing sent it releases everything.
    """

    __slots__ = (
        "_cost",
        "_finished",
        "_held",
        "_holds",
        "_nonce",
        "_on_sent",
        "_payer",
        "_permit2_nonce",
        "_reservations",
        "_scheme",
        "_sent",
        "cost_source",
        "request_id",
        "signed",
    )

    def __init__(self, payer: Payer, request_id: str, on_sent: OnSent | None) -> None:
        self._payer = payer
        self.request_id = request_id
        self._on_sent = on_sent
        self._nonce: bytes | None = None  # EIP-3009: drawn at the first exact signature
        self._permit2_nonce: int | None = None  # Permit2: drawn at the first upto signature
        self._scheme: str | None = None  # the scheme of the first signature: the call's
        self._reservations: list[Reservation] = []
        self._held = 0  # the largest amount signed: what the budget holds for this call
        self._holds: list[_UptoHold] = []  # open Permit2 allowance holds (upto)
        self.signed: list[SignedEvmPayment] = []
        self._sent: int | None = None  # the largest amount that may have reached the gateway
        self._cost: int | None = None  # what the accepted payment cost, once answered
        self.cost_source: str | None = None  # what that cost rests on (COST_*)
        self._finished = False

    @property
    def nonce(self) -> bytes | None:
        return self._nonce

    @property
    def permit2_nonce(self) -> int | None:
        return self._permit2_nonce

    @property
    def scheme(self) -> str | None:
        """The scheme this call signs in, once it has signed (it never changes after)."""
        return self._scheme

    @property
    def sent_atomic(self) -> int | None:
        """The most this call may have cost so far; None while nothing may have been sent."""
        return self._sent

    async def pay_requirement(
        self,
        requirement: Requirement,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
        alternatives: Sequence[Requirement] = (),
    ) -> SignedEvmPayment:
        """Check one requirement (e.g. built from a learned quote) and sign it; or, when
        it is an upto one that cannot be signed now, the first of ``alternatives`` (the
        same 402's exact requirement) the policy accepts."""
        choices: list[tuple[Requirement, Network]] = []
        refused: PaymentRefused | None = None
        for candidate in (requirement, *alternatives):
            try:
                choices.append((candidate, self._payer.check(candidate, resource)))
            except PaymentRefused as refusal:
                refused = refused or refusal
        if not choices:
            assert refused is not None
            raise refused
        return await self.sign_first(choices, resource, extensions)

    async def pay(self, offer: PaymentRequired) -> SignedEvmPayment:
        """Check the offer against the policy and sign the chosen requirement."""
        return await self.sign_first(self._payer.choices(offer), offer.resource, offer.extensions)

    async def sign_first(
        self,
        choices: Sequence[tuple[Requirement, Network]],
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedEvmPayment:
        """Sign the first of ``choices`` (policy-accepted, most preferred first) that can be
        signed now. A later one is signed only when an earlier one is upto and the Permit2
        allowance cannot take it (``auto``); any other refusal is final. Once the call has
        signed, only its own scheme is considered: its next signature reuses its nonce."""
        if self._scheme is not None:
            own = [choice for choice in choices if choice[0].scheme == self._scheme]
            if not own:
                raise PaymentRefused(
                    f"this call already signed an {self._scheme} payment and the gateway now "
                    f"asks for another scheme; a second scheme would be a second nonce that "
                    "could settle too, so nothing more was signed",
                    code="scheme_not_supported",
                )
            choices = own
        for index, (requirement, network) in enumerate(choices):
            try:
                return await self.sign(requirement, network, resource, extensions)
            except ProxyError as exc:
                if exc.code not in UPTO_UNAVAILABLE or index == len(choices) - 1:
                    raise
                self._payer.upto_fallbacks += 1
                log.info("paying exact instead of upto: %s (request %s)", exc.code, self.request_id)
        raise AssertionError("unreachable: choices is never empty")

    async def sign(
        self,
        requirement: Requirement,
        network: Network,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None = None,
    ) -> SignedEvmPayment:
        """Sign a requirement that already passed ``choose`` (or ``check``), with this
        call's nonce, after the budget has reserved what it adds to the call's hold (and,
        for upto, the Permit2 allowance has reserved the ceiling)."""
        if self._finished:
            raise RuntimeError("this call has finished paying")
        if not self._payer.can_sign:
            raise WalletNotConfigured(NO_WALLET_MESSAGE)
        if self._scheme is not None and requirement.scheme != self._scheme:
            raise PaymentRefused(
                f"this call already signed an {self._scheme} payment; nothing was signed in "
                f"{requirement.scheme!r} (one nonce per call)",
                code="scheme_not_supported",
            )
        budget = self._payer.budget
        reservation = None
        more = requirement.amount - self._held
        if budget is not None and more > 0:
            reservation = await budget.reserve(more)
        try:
            payment: SignedEvmPayment
            if requirement.scheme == UPTO_SCHEME and UPTO_SCHEME in self._payer.policy.schemes:
                payment = await self._sign_upto(requirement, network, resource, extensions)
            else:
                # Exact, or a scheme this payer does not sign, which the exact signer refuses
                # (an upto ceiling signed as EIP-3009 would pay the whole ceiling).
                if self._nonce is None:
                    self._nonce = secrets.token_bytes(32)
                payment = self._payer._sign(requirement, network, resource, extensions, self._nonce)
        except BaseException:
            if reservation is not None and budget is not None:
                await budget.release(reservation)  # nothing was signed after all
            raise
        if reservation is not None:
            self._reservations.append(reservation)
        self._scheme = requirement.scheme
        self._held = max(self._held, payment.amount)
        self.signed.append(payment)
        return payment

    async def _sign_upto(
        self,
        requirement: Requirement,
        network: Network,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None,
    ) -> SignedUptoPayment:
        now = int(self._payer._clock())
        # The payment cannot settle after its Permit2 deadline: neither can the hold.
        deadline = now + requirement.max_timeout_seconds
        tracker, hold = await self._payer.hold_allowance(requirement, network, extensions, deadline)
        if self._permit2_nonce is None:
            self._permit2_nonce = new_permit2_nonce()
        try:
            payment = self._payer._sign_upto(
                requirement,
                network,
                resource,
                extensions,
                now=now,
                nonce=self._permit2_nonce,
                permit_nonce=hold.permit_nonce,
            )
        except BaseException:
            tracker.release(hold)
            raise
        self._holds.append(_UptoHold(payment, tracker, hold))
        return payment

    def sent(self, payment: SignedEvmPayment) -> None:
        """A send of ``payment`` may have reached the gateway (answered, timed out,
        dropped or cancelled mid-way): from now on it may cost its amount."""
        for upto in self._holds:
            if upto.payment is payment:
                upto.sent = True
        if self._sent is None or payment.amount > self._sent:
            self._sent = payment.amount
            if self._on_sent is not None:
                self._on_sent(payment.amount)

    def not_used(self, payment: SignedEvmPayment) -> None:
        """The gateway refused ``payment`` and said it was not used (PROTOCOL.md section 3):
        the allowance it held is free again. (The budget keeps what was sent: that a
        payment was not used is the gateway's word, and it may still settle, once, under
        the call's nonce.)"""
        for upto in [u for u in self._holds if u.payment is payment]:
            upto.tracker.release(upto.hold)
            self._holds.remove(upto)

    def settled(self, payment: SignedEvmPayment, settlement: PaymentResponse | None) -> int:
        """What the accepted ``payment`` cost (x402.settled_cost): the gateway's claimed
        amount only where it could be true; an impossible claim is logged and counted.

        Exact costs what was signed. Upto costs the settled amount, at most the ceiling;
        when the settlement does not say (or says more), the ceiling stands in
        (``cost_source`` says which) and the allowance is read from the chain again."""
        cost, anomaly = settled_cost(payment, settlement)
        claimed = settlement.amount if settlement is not None else None
        if anomaly is not None:
            self._payer.anomalies[anomaly] += 1
            log.warning(
                "gateway anomaly (%s): the settlement report claims $%s for a payment signed "
                "for $%s; the cost is $%s (request %s)",
                anomaly,
                "?" if claimed is None else usd(claimed),
                usd(payment.amount),
                usd(cost),
                self.request_id,
            )
        if isinstance(payment, SignedUptoPayment):
            known = claimed is not None and anomaly is None
            self.cost_source = COST_SETTLED if known else COST_CEILING
            for upto in [u for u in self._holds if u.payment is payment]:
                upto.tracker.settled(upto.hold, cost if known else None)
                self._holds.remove(upto)
        else:
            self.cost_source = COST_SIGNED
        self._cost = cost
        if self._payer.after_settlement is not None:
            self._payer.after_settlement()
        return cost

    async def finish(self) -> None:
        """The call will sign and send nothing more: settle its account with the budget.

        What may have been sent is committed (the largest amount sent, or less when an
        accepted payment cost less), the rest released. Counted in the payer's sent
        totals once. An allowance hold still open is booked at its ceiling when its
        payment may have reached the gateway (a replay, a timeout: the allowance is read
        from the chain again), else released. Idempotent.
        """
        if self._finished:
            return
        self._finished = True
        holds, self._holds = self._holds, []
        for upto in holds:
            if upto.sent:
                upto.tracker.settled(upto.hold, None)
            else:
                upto.tracker.release(upto.hold)
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


def payer_for(
    settings: Settings, *, budget: BudgetStore | None = None, rpc: EvmRpc | None = None
) -> Payer:
    """The payer ``settings`` describe: its wallet (if any) under its policy (the schemes
    of ``--scheme``), reserving in ``budget`` (core.budget_store builds the one every rail
    shares) and reading the Permit2 allowance through ``rpc`` (core.evm_rpc).

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
        schemes=settings.schemes,
    )
    return Payer(signer, policy, budget=budget, rpc=rpc)
