"""Build the ``PAYMENT-SIGNATURE`` for one upto requirement: a signed ceiling, settled at cost.

The payload is the one the official ``x402`` package's EVM upto client builds
(``mechanisms/evm/upto/client.py``): a Permit2 ``PermitWitnessTransferFrom`` for the
requirement's ``amount`` (the ceiling) to the x402 upto proxy, witnessed by
``{to: payTo, facilitator: extra.facilitatorAddress, validAfter: 0}``, with
``deadline = now + maxTimeoutSeconds``. When the caller passes the wallet's USDC
``nonces(owner)``, an EIP-2612 permit for Permit2 of exactly the ceiling rides along in
``extensions.eip2612GasSponsoring.info`` (the official gas-sponsoring extension's shape).

Like payment.py, this module signs only what it is given and re-checks the facts that
decide what the signature means (scheme, network, asset, facilitator, spender); the
policy (policy.py) decides whether to pay at all, and the caller owns the nonce: one
Permit2 nonce per call, reused if that call's payment must be re-signed, so at most one
of its signatures can ever settle.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._abi import UINT256_MAX, checksum_address, is_address
from .networks import Network, canonical_network
from .payment import X402_VERSION, SignedPayment, with_builder_code
from .permit2 import (
    PERMIT2_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
    Eip2612Permit,
    UptoAuthorization,
    permit_digest,
    upto_digest,
)
from .refusal import Refusal
from .signer import Signer
from .wire import Requirement, encode_header

UPTO_SCHEME = "upto"
# Upto moves tokens through Permit2 only; a requirement naming another method is not
# something this signer knows how to authorize.
ASSET_TRANSFER_METHOD = "permit2"
EIP2612_GAS_SPONSORING_KEY = "eip2612GasSponsoring"
EIP2612_GAS_SPONSORING_VERSION = "1"
# The official client signs validAfter 0 (valid at once); only the deadline bounds it.
VALID_AFTER = 0
ZERO_ADDRESS = "0x" + "00" * 20

# The payee and facilitator repeat on every call; their EIP-55 form costs a Keccak each.
_checksummed = functools.lru_cache(maxsize=256)(checksum_address)


@dataclass(frozen=True, slots=True)
class UptoTerms:
    """What an upto requirement adds to an exact one, validated."""

    facilitator: str  # EIP-55; the witness binds settlement to this address


def upto_terms(requirement: Requirement) -> UptoTerms:
    """The upto-specific facts of ``requirement``, or Refusal naming the first bad one.

    ``extra.facilitatorAddress`` must be a real address (the witness binds the settler to
    it); ``extra.assetTransferMethod`` must be Permit2; a ``spender`` the 402 names must be
    the x402 upto proxy (we never take the spender from the 402, but a gateway expecting
    another one is hostile or broken, and nothing it could settle should be signed).
    """
    extra = requirement.extra
    method = extra.get("assetTransferMethod")
    if method != ASSET_TRANSFER_METHOD:
        raise Refusal(
            f"upto assetTransferMethod {_shown(method)} is not supported (only 'permit2')",
            code="asset_transfer_method_unsupported",
        )
    facilitator = extra.get("facilitatorAddress")
    if not is_address(facilitator) or int(str(facilitator), 16) == 0:
        raise Refusal(
            f"upto requirement has no valid extra.facilitatorAddress ({_shown(facilitator)})",
            code="facilitator_invalid",
        )
    spender = extra.get("spender")
    if spender is not None and (
        not is_address(spender) or str(spender).lower() != X402_UPTO_PERMIT2_PROXY_ADDRESS.lower()
    ):
        raise Refusal(
            f"upto spender {_shown(spender)} is not the x402 upto Permit2 proxy "
            f"({X402_UPTO_PERMIT2_PROXY_ADDRESS})",
            code="spender_mismatch",
        )
    return UptoTerms(facilitator=_checksummed(str(facilitator)))


def gas_sponsoring_declared(extensions: Mapping[str, Any] | None) -> bool:
    """Whether a 402's ``extensions`` declares the EIP-2612 gas-sponsoring extension."""
    return bool(extensions) and isinstance(
        (extensions or {}).get(EIP2612_GAS_SPONSORING_KEY), Mapping
    )


def new_permit2_nonce() -> int:
    """A random uint256 Permit2 nonce (Permit2's nonces are unordered: any unused one works)."""
    return int.from_bytes(secrets.token_bytes(32), "big")


@dataclass(frozen=True, slots=True)
class SignedUptoPayment:
    """A signed upto payment ready to send, with what it authorizes."""

    header: str  # PAYMENT-SIGNATURE value: base64 JSON
    authorization: UptoAuthorization
    requirement: Requirement
    amount: int  # the signed ceiling (== requirement.amount); the settlement may be less
    permit: Eip2612Permit | None  # the USDC permit for Permit2 sent along, if any

    @property
    def scheme(self) -> str:
        return UPTO_SCHEME

    @property
    def nonce(self) -> int:
        """The Permit2 nonce: the call's identity on chain (reuse it to re-sign this call)."""
        return self.authorization.nonce


# A signed EVM payment of either scheme: what a call sends and the proxy accounts for.
SignedEvmPayment = SignedPayment | SignedUptoPayment


def sign_upto_payment(
    signer: Signer,
    requirement: Requirement,
    network: Network,
    resource: Mapping[str, Any],
    *,
    now: int,
    nonce: int,
    permit_nonce: int | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> SignedUptoPayment:
    """Sign ``requirement`` as a Permit2 upto ceiling under OUR ``network`` table entry.

    ``nonce``: the call's Permit2 nonce, chosen by the caller (``new_permit2_nonce``).
    ``permit_nonce``: the wallet's USDC ``nonces(owner)``; when given, also sign an
    EIP-2612 permit for Permit2 of exactly the ceiling (the upto proxy reverts on any
    other value), which needs the 402 to declare ``eip2612GasSponsoring``.
    ``extensions``: the 402's, echoed with BlockRun's builder code merged in.
    """
    terms = _check_meaning(requirement, network)
    if isinstance(nonce, bool) or not 0 <= nonce <= UINT256_MAX:
        raise ValueError("Permit2 nonce must be a uint256")
    deadline = now + requirement.max_timeout_seconds
    auth = UptoAuthorization(
        from_=signer.address,
        token=network.usdc,
        amount=requirement.amount,
        spender=X402_UPTO_PERMIT2_PROXY_ADDRESS,
        nonce=nonce,
        deadline=deadline,
        to=_checksummed(requirement.pay_to),
        facilitator=terms.facilitator,
        valid_after=VALID_AFTER,
    )
    merged = with_builder_code(extensions)
    permit: Eip2612Permit | None = None
    if permit_nonce is not None:
        if not gas_sponsoring_declared(extensions):
            # Without the extension nobody submits the permit: signing it would only hand
            # out an approval that anyone holding the payload could use later.
            raise Refusal(
                "the gateway does not sponsor an EIP-2612 permit for Permit2 "
                f"(no {EIP2612_GAS_SPONSORING_KEY} extension)",
                code="permit2_allowance_required",
            )
        permit = Eip2612Permit(
            owner=signer.address,
            spender=PERMIT2_ADDRESS,
            value=requirement.amount,  # exactly the ceiling, never more
            nonce=permit_nonce,
            deadline=deadline,
        )
        merged[EIP2612_GAS_SPONSORING_KEY] = _permit_extension(
            merged.get(EIP2612_GAS_SPONSORING_KEY),
            permit,
            network,
            signer.sign_digest(permit_digest(network, permit)),
        )
    payload: dict[str, Any] = {"x402Version": X402_VERSION}
    if resource:
        payload["resource"] = resource
    payload["accepted"] = requirement.raw
    payload["payload"] = {
        "signature": signer.sign_digest(upto_digest(network.chain_id, auth)),
        "permit2Authorization": auth.to_json(),
    }
    payload["extensions"] = merged
    return SignedUptoPayment(
        header=encode_header(payload),
        authorization=auth,
        requirement=requirement,
        amount=requirement.amount,
        permit=permit,
    )


def _permit_extension(
    declared: object, permit: Eip2612Permit, network: Network, signature: str
) -> dict[str, Any]:
    """The declared extension entry with the signed permit in its ``info``.

    The official client deep-merges with the server's leaves winning; here the signed
    fields win instead, so a 402 that pre-fills ``info.amount`` cannot make the payload
    describe a permit other than the one signed. Everything else the server declared
    (``info.description``, ``schema``) is echoed as is.
    """
    entry = dict(declared) if isinstance(declared, Mapping) else {}
    info = entry.get("info")
    info = dict(info) if isinstance(info, Mapping) else {}
    info.update(
        {
            "from": permit.owner,
            "asset": network.usdc,
            "spender": permit.spender,
            "amount": str(permit.value),
            "nonce": str(permit.nonce),
            "deadline": str(permit.deadline),
            "signature": signature,
            "version": EIP2612_GAS_SPONSORING_VERSION,
        }
    )
    entry["info"] = info
    return entry


def _check_meaning(requirement: Requirement, network: Network) -> UptoTerms:
    """Refuse anything that would not mean "at most amount USDC, here, via the upto proxy"."""
    if requirement.scheme != UPTO_SCHEME:
        raise Refusal(
            f"x402 scheme {_shown(requirement.scheme)} cannot be signed as an upto ceiling",
            code="scheme_not_supported",
        )
    if canonical_network(requirement.network) != network.caip2:
        raise ValueError(
            f"requirement is for {requirement.network}, signing domain is {network.caip2}"
        )
    if requirement.asset.lower() != network.usdc.lower():
        raise Refusal(
            f"asset {_shown(requirement.asset)} is not USDC on {network.name} ({network.usdc})",
            code="asset_mismatch",
        )
    if requirement.amount <= 0:
        raise Refusal(f"amount {requirement.amount} is not positive", code="amount_invalid")
    if not is_address(requirement.pay_to) or requirement.pay_to.lower() == ZERO_ADDRESS:
        raise Refusal(
            f"payTo {_shown(requirement.pay_to)} is not a payable address",
            code="pay_to_not_allowed",
        )
    if requirement.max_timeout_seconds <= 0:
        raise Refusal(
            f"maxTimeoutSeconds {requirement.max_timeout_seconds} is not positive",
            code="timeout_too_long",
        )
    return upto_terms(requirement)


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
