"""The EIP-3009 signer: TransferWithAuthorization digests signed with coincurve.

eth_account gives the same signatures (RFC 6979 is deterministic, libsecp256k1
returns low-s) but costs ~1 s to import and hundreds of microseconds per call,
blocking the event loop. Here the domain separator is precomputed per network
and the struct is a fixed run of 32-byte words, so a signature is two Keccak
hashes and one ECDSA sign. tests/x402/test_x402_signer.py keeps the two
byte-identical.

The wallet key lives only in ``Signer._key``: it is never formatted into a
message, repr, or exception, and the Signer refuses to be pickled (so it cannot
reach a child process or a cache by accident).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn, SupportsIndex

import coincurve

from ._abi import address_word, checksum_address, keccak256, uint_word
from .networks import Network

__all__ = [
    "TRANSFER_WITH_AUTHORIZATION_TYPEHASH",
    "Authorization",
    "Signer",
    "checksum_address",
    "recover_transfer_signer",
    "transfer_digest",
]

# keccak256(b"TransferWithAuthorization(address from,address to,uint256 value,"
#           b"uint256 validAfter,uint256 validBefore,bytes32 nonce)"), written out so
# importing this module hashes nothing (tests/x402 recompute it).
TRANSFER_WITH_AUTHORIZATION_TYPEHASH = bytes.fromhex(
    "7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267"
)

# secp256k1 group order; s above n/2 is the malleable twin EIP-2 forbids.
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HEX_KEY_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]{64})\Z")
_SIGNATURE_RE = re.compile(r"(?:0x)?([0-9a-fA-F]{130})\Z")


@dataclass(frozen=True, slots=True)
class Authorization:
    """The EIP-3009 TransferWithAuthorization message."""

    from_: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes  # 32 bytes

    def to_json(self) -> dict[str, str]:
        """The ``payload.authorization`` object: decimal strings, 0x-hex nonce."""
        return {
            "from": self.from_,
            "to": self.to,
            "value": str(self.value),
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "nonce": "0x" + self.nonce.hex(),
        }


def transfer_digest(network: Network, auth: Authorization) -> bytes:
    """The EIP-712 digest of ``auth`` under ``network``'s USDC domain."""
    if len(auth.nonce) != 32:
        raise ValueError("nonce must be 32 bytes")
    struct_hash = keccak256(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH
        + address_word(auth.from_)
        + address_word(auth.to)
        + uint_word(auth.value)
        + uint_word(auth.valid_after)
        + uint_word(auth.valid_before)
        + auth.nonce
    )
    return keccak256(b"\x19\x01" + network.domain_separator + struct_hash)


def _address_of(public_key: coincurve.PublicKey) -> str:
    # The address is the last 20 bytes of keccak(X || Y) of the uncompressed point.
    point = public_key.format(compressed=False)[1:]
    return checksum_address("0x" + keccak256(point)[-20:].hex())


def _secret_from(private_key: bytes | str) -> bytes:
    """The 32 key bytes; errors say what is wrong with the shape, never echo the value."""
    if isinstance(private_key, bytes | bytearray | memoryview):
        secret = bytes(private_key)
        if len(secret) != 32:
            raise ValueError("invalid private key: expected 32 raw bytes")
        return secret
    if isinstance(private_key, str):
        match = _HEX_KEY_RE.match(private_key.strip())
        if match is None:
            raise ValueError("invalid private key: expected 64 hex digits, with or without 0x")
        return bytes.fromhex(match.group(1))
    raise TypeError("private key must be bytes or a hex string")


class Signer:
    """A wallet that signs EIP-712 digests; shows only its address."""

    __slots__ = ("_address", "_key")

    def __init__(self, private_key: bytes | str) -> None:
        secret = _secret_from(private_key)
        try:
            key = coincurve.PrivateKey(secret)
        except (ValueError, TypeError):
            # `from None`: the library's exception (and its traceback frames) stay out.
            raise ValueError("invalid private key: not a valid secp256k1 secret") from None
        self._key = key
        self._address: str | None = None  # derived on first use: it needs Keccak

    @classmethod
    def generate(cls) -> Signer:
        """A fresh random wallet (coincurve draws from the OS CSPRNG)."""
        return cls(coincurve.PrivateKey().secret)

    @property
    def address(self) -> str:
        """The EIP-55 checksummed address."""
        if self._address is None:
            self._address = _address_of(self._key.public_key)
        return self._address

    def sign_digest(self, digest: bytes) -> str:
        """``0x`` + r || s || v (v = 27/28) over a 32-byte digest, as eth_account gives."""
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        sig = self._key.sign_recoverable(digest, hasher=None)  # r || s || recovery id
        return "0x" + sig[:64].hex() + format(sig[64] + 27, "02x")

    def sign_transfer(self, network: Network, auth: Authorization) -> str:
        """Sign a TransferWithAuthorization under ``network``'s USDC domain."""
        return self.sign_digest(transfer_digest(network, auth))

    def __repr__(self) -> str:
        return f"Signer(address={self.address})"

    __str__ = __repr__

    # --- never serialized -----------------------------------------------------------------
    # Pickling would copy the key into bytes that can land in a cache, a queue or a
    # child process. Copies within the process are harmless: the object is immutable.

    def __reduce__(self) -> NoReturn:
        raise TypeError("Signer holds a wallet key and cannot be pickled")

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("Signer holds a wallet key and cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise TypeError("Signer holds a wallet key and cannot be pickled")

    def __copy__(self) -> Signer:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Signer:
        return self


def recover_transfer_signer(
    network: Network, auth: Authorization, signature_hex: str
) -> str | None:
    """The address that signed ``auth``, or None for a malformed or malleable signature.

    Rejects high-s signatures, as USDC's on-chain ecrecover (EIP-2) does.
    """
    try:
        match = _SIGNATURE_RE.match(signature_hex)
        if match is None:
            return None
        sig = bytes.fromhex(match.group(1))
        v = sig[64]
        recovery_id = v - 27 if v >= 27 else v
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
        if recovery_id not in (0, 1) or not 0 < r < _SECP256K1_N or not 0 < s <= _SECP256K1_N // 2:
            return None
        digest = transfer_digest(network, auth)
        public_key = coincurve.PublicKey.from_signature_and_message(
            sig[:64] + bytes((recovery_id,)), digest, hasher=None
        )
        return _address_of(public_key)
    except (ValueError, TypeError):
        # Bad addresses/values in auth, or a point that does not recover.
        return None
