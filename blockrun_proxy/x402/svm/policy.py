"""What the proxy is willing to sign on Solana: as strict as the EVM policy, plus the
fee payer.

PROTOCOL.md sections 5 and 7. A requirement passes only if its network is allowed
and in our table, its asset is that network's USDC mint (from our table, never the
402's word), the amount is positive and within the per-call cap, ``payTo`` is a
Solana address (and pinned, if ``--pay-to`` pins any), ``extra.feePayer`` is a
Solana address that is not ours (else we would pay the fee and make our own account
writable), the validity is capped and the resource is on the gateway's host. The
budget is the caller's (it needs state), as on EVM. No solders import: this runs
before anything is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..policy import (
    _check_resource_host,
    _check_timeout,
    _host,
    _refuse,
    _shown,
    usd,
)
from ..refusal import Refusal
from ..wire import PaymentRequired, Requirement
from ._base58 import is_pubkey
from .networks import (
    COMPUTE_BUDGET_PROGRAM,
    MEMO_PROGRAM,
    SolanaNetwork,
    canonical_solana_network,
    is_solana_network,
    solana_network_for,
)
from .transaction import MAX_MEMO_BYTES, U64_MAX


@dataclass(frozen=True, slots=True)
class SvmPolicy:
    """Limits on what may be signed on Solana. Build once from Settings; immutable.

    ``pay_to`` is the whole ``--pay-to`` list, compared exactly (base58 is
    case-sensitive): when it pins only EVM addresses, no Solana payTo matches and
    nothing is paid on Solana, rather than the pin silently meaning "any".
    """

    networks: frozenset[str]
    max_amount: int  # atomic units per call
    gateway_host: str
    max_timeout_seconds: int = 600
    pay_to: frozenset[str] = frozenset()  # empty = any

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "networks", frozenset(map(canonical_solana_network, self.networks))
        )
        object.__setattr__(self, "gateway_host", _host(self.gateway_host) or "")

    def check(
        self, requirement: Requirement, resource: Mapping[str, Any] | None, payer: str
    ) -> SolanaNetwork:
        """The network to sign on for ``payer`` (our address), or Refusal naming the rule."""
        req = requirement
        if req.scheme != "exact":
            _refuse(
                "scheme_not_supported",
                f"x402 scheme {_shown(req.scheme)} is not supported on Solana (only 'exact')",
            )
        if canonical_solana_network(req.network) not in self.networks:
            _refuse(
                "network_not_allowed",
                f"network {_shown(req.network)} is not allowed "
                f"(allowed: {', '.join(sorted(self.networks)) or 'none'})",
            )
        network = solana_network_for(req.network)
        if network is None:
            _refuse("unknown_network", f"network {_shown(req.network)} is allowed but unknown here")
        if req.asset != network.usdc_mint:
            _refuse(
                "asset_mismatch",
                f"asset {_shown(req.asset)} is not USDC on {network.name} ({network.usdc_mint})",
            )
        if req.amount <= 0:
            _refuse("amount_invalid", f"amount {req.amount} is not a positive number of units")
        if req.amount > self.max_amount or req.amount > U64_MAX:
            _refuse(
                "amount_over_cap",
                f"the gateway asks ${usd(req.amount)}, over the per-call cap of "
                f"${usd(self.max_amount)}",
            )
        if not is_pubkey(req.pay_to):
            _refuse("pay_to_not_allowed", f"payTo {_shown(req.pay_to)} is not a Solana address")
        if req.pay_to == payer:
            _refuse("pay_to_not_allowed", "payTo is the proxy's own wallet")
        if self.pay_to and req.pay_to not in self.pay_to:
            _refuse("pay_to_not_allowed", f"payTo {req.pay_to} is not in the allowed list")
        _check_fee_payer(req.extra.get("feePayer"), network, payer)
        _check_memo(req.extra.get("memo"))
        _check_timeout(req, self.max_timeout_seconds)
        _check_resource_host(req, resource, self.gateway_host)
        return network

    def select(self, offer: PaymentRequired, payer: str) -> tuple[Requirement, SolanaNetwork]:
        """The first Solana exact requirement the policy accepts, with its network.

        Requirements for other chains are skipped (another rail pays those). If no
        Solana one passes, raise the refusal of the first exact Solana one.
        """
        first_refusal: Refusal | None = None
        solana = [r for r in offer.accepts if is_solana_network(r.network)]
        for req in solana:
            if req.scheme != "exact":
                continue
            try:
                return req, self.check(req, offer.resource, payer)
            except Refusal as refusal:
                first_refusal = first_refusal or refusal
        if first_refusal is not None:
            raise first_refusal
        if not solana:
            _refuse("network_not_allowed", "the gateway offers no Solana payment option")
        schemes = ", ".join(sorted({_shown(r.scheme) for r in solana}))
        _refuse(
            "scheme_not_supported",
            f"the gateway offers only x402 scheme(s) {schemes} on Solana; "
            "this proxy pays 'exact' only",
        )


def _check_fee_payer(value: object, network: SolanaNetwork, payer: str) -> None:
    if not isinstance(value, str) or not value:
        _refuse("fee_payer_invalid", "the Solana requirement names no extra.feePayer")
    if not is_pubkey(value):
        _refuse("fee_payer_invalid", f"extra.feePayer {_shown(value)} is not a Solana address")
    if value == payer:
        # We would sign as fee payer: pay the fee and make our own account writable.
        _refuse("fee_payer_invalid", "extra.feePayer is the proxy's own wallet")
    if value in (network.usdc_mint, network.token_program, COMPUTE_BUDGET_PROGRAM, MEMO_PROGRAM):
        _refuse("fee_payer_invalid", f"extra.feePayer {value} is a mint or a program")


def _check_memo(value: object) -> None:
    # As the official client: a non-empty string is the seller's memo, anything else is
    # ignored (a random nonce memo is used). Only its size can make us refuse.
    if not isinstance(value, str) or not value:
        return
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: the memo program takes UTF-8 only
        _refuse("memo_invalid", "extra.memo is not valid UTF-8 text")
    if size > MAX_MEMO_BYTES:
        _refuse("memo_invalid", f"extra.memo is over {MAX_MEMO_BYTES} bytes")
