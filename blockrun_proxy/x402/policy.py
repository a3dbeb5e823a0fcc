"""The payer policy: what the proxy is willing to sign, checked before every signature.

PROTOCOL.md section 5 rule 4: network and asset known, payTo allowed, amount within
the per-call cap, timeout within a cap, resource on the gateway's own host. The
cumulative budget is not here (it needs state); the caller checks it around
``select``. Every refusal is a ``Refusal`` whose ``code`` names the rule.

An upto requirement passes the same rules (its ``amount`` is the ceiling, held to the
same cap) plus its own (upto.py ``upto_terms``: Permit2 transfer method, a real
facilitator address, no foreign spender). Which schemes are paid, and in which order of
preference, is ``schemes``: ``("exact",)`` unless the operator opts into upto.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ._abi import is_address
from .networks import Network, canonical_network, network_for
from .refusal import Refusal
from .upto import upto_terms
from .wire import PaymentRequired, Requirement

# The x402 schemes this payer can sign; PayerPolicy.schemes picks from these.
KNOWN_SCHEMES = ("exact", "upto")

USDC_DECIMALS = 6
_USDC_UNIT = 10**USDC_DECIMALS


def usd(amount: int) -> str:
    """Atomic USDC units as dollars with all 6 decimals, e.g. 1234 -> "0.001234"."""
    whole, frac = divmod(abs(amount), _USDC_UNIT)
    sign = "-" if amount < 0 else ""
    return f"{sign}{whole}.{frac:0{USDC_DECIMALS}d}"


@dataclass(frozen=True, slots=True)
class PayerPolicy:
    """Limits on what may be signed. Build once from Settings; immutable."""

    networks: frozenset[str]
    max_amount: int  # atomic units per call
    gateway_host: str
    max_timeout_seconds: int = 600
    pay_to: frozenset[str] = frozenset()  # lowercased; empty = any
    # Schemes paid, most preferred first: ("exact",), ("upto",) or ("upto", "exact").
    schemes: tuple[str, ...] = ("exact",)

    def __post_init__(self) -> None:
        if not self.schemes or len(set(self.schemes)) != len(self.schemes):
            raise ValueError(f"schemes must name each scheme once: {self.schemes!r}")
        unknown = [s for s in self.schemes if s not in KNOWN_SCHEMES]
        if unknown:
            raise ValueError(f"unknown x402 scheme(s) {unknown}; known: {KNOWN_SCHEMES}")
        # Normalize once so checks are plain comparisons; callers may pass any case.
        object.__setattr__(self, "networks", frozenset(map(canonical_network, self.networks)))
        object.__setattr__(self, "pay_to", frozenset(a.lower() for a in self.pay_to))
        object.__setattr__(self, "gateway_host", _host(self.gateway_host) or "")

    def check(self, requirement: Requirement, resource: Mapping[str, Any] | None) -> Network:
        """The network to sign under, or Refusal naming the first rule broken."""
        req = requirement
        if req.scheme not in self.schemes:
            _refuse(
                "scheme_not_supported",
                f"x402 scheme {_shown(req.scheme)} is not supported (only {self._shown_schemes})",
            )
        if canonical_network(req.network) not in self.networks:
            _refuse(
                "network_not_allowed",
                f"network {_shown(req.network)} is not allowed "
                f"(allowed: {', '.join(sorted(self.networks)) or 'none'})",
            )
        network = network_for(req.network)
        if network is None:
            _refuse("unknown_network", f"network {_shown(req.network)} is allowed but unknown here")
        if req.asset.lower() != network.usdc.lower():
            _refuse(
                "asset_mismatch",
                f"asset {_shown(req.asset)} is not USDC on {network.name} ({network.usdc})",
            )
        if req.amount <= 0:
            _refuse("amount_invalid", f"amount {req.amount} is not a positive number of units")
        if req.amount > self.max_amount:
            _refuse(
                "amount_over_cap",
                f"the gateway asks ${usd(req.amount)}, over the per-call cap of "
                f"${usd(self.max_amount)}",
            )
        if not is_address(req.pay_to):
            _refuse("pay_to_not_allowed", f"payTo {_shown(req.pay_to)} is not an EVM address")
        if int(req.pay_to, 16) == 0:
            # Nobody holds the zero address's key: a transfer there is money destroyed.
            _refuse("pay_to_not_allowed", "payTo is the zero address (a transfer there is burnt)")
        if self.pay_to and req.pay_to.lower() not in self.pay_to:
            _refuse("pay_to_not_allowed", f"payTo {req.pay_to} is not in the allowed list")
        _check_timeout(req, self.max_timeout_seconds)
        _check_resource_host(req, resource, self.gateway_host)
        if req.scheme == "upto":
            upto_terms(req)  # facilitator, transfer method, spender
        return network

    def select(self, offer: PaymentRequired) -> tuple[Requirement, Network]:
        """The requirement the policy accepts, with its network, by scheme preference.

        ``schemes`` are tried most preferred first; within a scheme, the gateway's order.
        If none passes, raise the refusal of the first requirement of the most preferred
        scheme offered (the option we wanted most, so the message is about it).
        """
        return self.choices(offer)[0]

    def choices(self, offer: PaymentRequired) -> list[tuple[Requirement, Network]]:
        """Per scheme paid, most preferred first, the first requirement the policy accepts.

        ``select`` is its head. The rest are what the payer may sign instead when the
        preferred one cannot be signed now (``auto``: upto needs a Permit2 allowance the
        wallet may not have; the same 402's exact requirement is then paid). Raises as
        ``select`` does when nothing passes.
        """
        chosen: list[tuple[Requirement, Network]] = []
        first_refusal: Refusal | None = None
        for scheme in self.schemes:
            for req in offer.accepts:
                if req.scheme != scheme:
                    continue
                try:
                    chosen.append((req, self.check(req, offer.resource)))
                    break
                except Refusal as refusal:
                    first_refusal = first_refusal or refusal
        if chosen:
            return chosen
        if first_refusal is not None:
            raise first_refusal
        schemes = ", ".join(sorted({_shown(r.scheme) for r in offer.accepts}))
        _refuse(
            "scheme_not_supported",
            f"the gateway offers only x402 scheme(s) {schemes}; this proxy pays "
            f"{self._shown_schemes} only",
        )

    @property
    def _shown_schemes(self) -> str:
        return ", ".join(repr(s) for s in self.schemes)


def _shown(value: str, limit: int = 80) -> str:
    """Gateway-supplied text for a message: quoted, clipped, so logs stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse(code: str, message: str) -> NoReturn:
    raise Refusal(message, code=code)


# The two rules below are the EVM and the Solana policies' alike (svm/policy.py imports
# them): one wording, one reading of the resource, whichever chain is paid.


def _check_timeout(req: Requirement, max_timeout_seconds: int) -> None:
    """Refuse an authorization valid for no time, or for longer than the cap."""
    if not 0 < req.max_timeout_seconds <= max_timeout_seconds:
        _refuse(
            "timeout_too_long",
            f"maxTimeoutSeconds {req.max_timeout_seconds} is outside 1..{max_timeout_seconds}",
        )


def _check_resource_host(
    req: Requirement, resource: Mapping[str, Any] | None, gateway_host: str
) -> None:
    """Refuse a payment for a resource that is not on the gateway's own host."""
    # v2 names the resource at the top of the 402; v1 inside each requirement.
    for url in (_url(resource), _url(_requirement_resource(req))):
        if url is not None and _host(url, is_url=True) != gateway_host:
            _refuse(
                "resource_host_mismatch",
                f"resource {_shown(url)} is not on the gateway host {gateway_host}",
            )


def _url(resource: Mapping[str, Any] | None) -> str | None:
    """The resource URL if one is given; a missing URL is allowed by the policy."""
    if not resource:
        return None
    url = resource.get("url")
    if url is None or url == "":
        return None
    # A non-string url is present but unusable: compare it as text so it mismatches.
    return url if isinstance(url, str) else repr(url)


def _requirement_resource(req: Requirement) -> Mapping[str, Any] | None:
    """A v1 requirement's own ``resource`` (a URL string), as a resource mapping."""
    value = req.raw.get("resource")
    if isinstance(value, str):
        return {"url": value}
    return value if isinstance(value, Mapping) else None


def _host(value: str, *, is_url: bool = False) -> str | None:
    """Lowercased hostname (no port, no trailing dot) of a URL or a host[:port]."""
    try:
        host = urlsplit(value if is_url else "//" + value).hostname
    except ValueError:  # e.g. an invalid IPv6 literal
        return None
    return host.rstrip(".") if host else None
