"""Permit2 and EIP-2612 typed data for the upto scheme, hashed by hand.

Two messages, both EIP-712:

- the Permit2 ``PermitWitnessTransferFrom`` the upto payer signs: "the x402 upto proxy
  may pull at most ``permitted.amount`` of ``token`` once (``nonce``) before
  ``deadline``, only to ``witness.to``, only when settled by ``witness.facilitator``";
- the USDC ``Permit`` (EIP-2612) that lets Permit2 itself spend the wallet's USDC, for
  the gas-sponsoring extension when the on-chain allowance is short.

As for EIP-3009 (signer.py), the domain separators and type hashes are fixed words, so a
digest is three or four Keccak hashes over 32-byte words and eth_account stays off the hot
path. tests/x402/test_x402_upto.py keeps the digests byte-identical to eth_account's
``encode_typed_data`` and the constants equal to the official ``x402`` package's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ._abi import address_word, keccak256, uint_word
from .networks import Network

# Canonical Uniswap Permit2: the same address on every EVM chain (CREATE2).
PERMIT2_ADDRESS = "0x000000000022D473030F116dDEE9F6B43aC78BA3"
# The x402 upto Permit2 proxy, the only ``spender`` an upto payment may name. It lets only
# the witness's facilitator settle, to the witness's payee, at most the permitted amount.
# Ours, never the 402's: a gateway naming another spender is asking for a blank cheque.
X402_UPTO_PERMIT2_PROXY_ADDRESS = "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002"

# The type strings (EIP-712 encodeType: the primary type, then referenced types sorted by
# name), hashed ahead of time so importing this module hashes nothing; the tests recompute
# every one from its string.
PERMIT2_DOMAIN_TYPE = "EIP712Domain(string name,uint256 chainId,address verifyingContract)"
TOKEN_PERMISSIONS_TYPE = "TokenPermissions(address token,uint256 amount)"
UPTO_WITNESS_TYPE = "Witness(address to,address facilitator,uint256 validAfter)"
UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPE = (
    "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,"
    "uint256 deadline,Witness witness)" + TOKEN_PERMISSIONS_TYPE + UPTO_WITNESS_TYPE
)
EIP2612_PERMIT_TYPE = (
    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
)

PERMIT2_DOMAIN_TYPEHASH = bytes.fromhex(
    "8cad95687ba82c2ce50e74f7b754645e5117c3a5bec8151c0726d5857980a866"
)
TOKEN_PERMISSIONS_TYPEHASH = bytes.fromhex(
    "618358ac3db8dc274f0cd8829da7e234bd48cd73c4a740aede1adec9846d06a1"
)
UPTO_WITNESS_TYPEHASH = bytes.fromhex(
    "d4171c445a74218b01d4fd8af34ff1106580ea1e36ff837e64484bfaa2253b75"
)
UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH = bytes.fromhex(
    "51dff6974ad4388c499e7fcfe838d2bd767162553a144098ce20ea661d70c2ee"
)
EIP2612_PERMIT_TYPEHASH = bytes.fromhex(
    "6e71edae12b1b97f4d1f60370fef10105fa2faae0126114a169c64845d6126c9"
)


@functools.cache
def permit2_domain_separator(chain_id: int) -> bytes:
    """Permit2's EIP-712 domain separator on ``chain_id`` (name "Permit2", no version)."""
    return keccak256(
        PERMIT2_DOMAIN_TYPEHASH
        + keccak256(b"Permit2")
        + uint_word(chain_id)
        + address_word(PERMIT2_ADDRESS)
    )


@dataclass(frozen=True, slots=True)
class UptoAuthorization:
    """The Permit2 ``PermitWitnessTransferFrom`` an upto payment signs."""

    from_: str  # the payer: not part of the signed struct, the signature's owner
    token: str
    amount: int  # the ceiling
    spender: str
    nonce: int  # Permit2's unordered uint256 nonce: one per call
    deadline: int
    to: str  # witness: the payee (the requirement's payTo)
    facilitator: str  # witness: the only address the proxy lets settle
    valid_after: int  # witness

    def to_json(self) -> dict[str, object]:
        """``payload.permit2Authorization`` as the official client writes it (decimal strings)."""
        return {
            "from": self.from_,
            "permitted": {"token": self.token, "amount": str(self.amount)},
            "spender": self.spender,
            "nonce": str(self.nonce),
            "deadline": str(self.deadline),
            "witness": {
                "to": self.to,
                "facilitator": self.facilitator,
                "validAfter": str(self.valid_after),
            },
        }


# The witness (payee, facilitator, validAfter) is the same on every call to one gateway and
# a ceiling often repeats (it is the quote), so their struct hashes are cached: a digest is
# then two Keccak hashes, as for EIP-3009. Bounded; the key is plain data.
@functools.lru_cache(maxsize=1024)
def _token_permissions_hash(token: str, amount: int) -> bytes:
    return keccak256(TOKEN_PERMISSIONS_TYPEHASH + address_word(token) + uint_word(amount))


@functools.lru_cache(maxsize=256)
def _witness_hash(to: str, facilitator: str, valid_after: int) -> bytes:
    return keccak256(
        UPTO_WITNESS_TYPEHASH
        + address_word(to)
        + address_word(facilitator)
        + uint_word(valid_after)
    )


def upto_digest(chain_id: int, auth: UptoAuthorization) -> bytes:
    """The EIP-712 digest of ``auth`` under Permit2's domain on ``chain_id``."""
    struct_hash = keccak256(
        UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH
        + _token_permissions_hash(auth.token, auth.amount)
        + address_word(auth.spender)
        + uint_word(auth.nonce)
        + uint_word(auth.deadline)
        + _witness_hash(auth.to, auth.facilitator, auth.valid_after)
    )
    return keccak256(b"\x19\x01" + permit2_domain_separator(chain_id) + struct_hash)


@dataclass(frozen=True, slots=True)
class Eip2612Permit:
    """A USDC ``permit(owner, spender, value, nonce, deadline)`` (EIP-2612)."""

    owner: str
    spender: str
    value: int
    nonce: int  # the token's ordered nonces(owner): read from the chain
    deadline: int


def permit_digest(network: Network, permit: Eip2612Permit) -> bytes:
    """The EIP-712 digest of ``permit`` under ``network``'s USDC domain (the EIP-3009 one)."""
    struct_hash = keccak256(
        EIP2612_PERMIT_TYPEHASH
        + address_word(permit.owner)
        + address_word(permit.spender)
        + uint_word(permit.value)
        + uint_word(permit.nonce)
        + uint_word(permit.deadline)
    )
    return keccak256(b"\x19\x01" + network.domain_separator + struct_hash)
