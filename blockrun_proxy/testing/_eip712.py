"""EIP-3009 ``TransferWithAuthorization`` typed data, built two independent ways.

``typed_data`` gives the JSON form eth_account hashes itself; ``digest``
hashes by hand with pycryptodome's keccak. Both exist so the fake's
``verify="fast"`` mode can be checked against eth_account in its own tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

UINT256_MAX = 2**256 - 1

TRANSFER_FIELDS = (
    ("from", "address"),
    ("to", "address"),
    ("value", "uint256"),
    ("validAfter", "uint256"),
    ("validBefore", "uint256"),
    ("nonce", "bytes32"),
)
DOMAIN_FIELDS = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
)


def keccak256(data: bytes) -> bytes:
    # Imported here: pycryptodome's cffi loading costs ~40 ms, and ``serve --demo``
    # imports this package on startup whether or not anything is verified fast.
    from Crypto.Hash import keccak

    return keccak.new(data=data, digest_bits=256).digest()


def _type_string(name: str, fields: tuple[tuple[str, str], ...]) -> bytes:
    return f"{name}({','.join(f'{t} {n}' for n, t in fields)})".encode()


@cache
def _domain_typehash() -> bytes:
    return keccak256(_type_string("EIP712Domain", DOMAIN_FIELDS))


@cache
def _transfer_typehash() -> bytes:
    return keccak256(_type_string("TransferWithAuthorization", TRANSFER_FIELDS))


@dataclass(frozen=True)
class Domain:
    name: str
    version: str
    chain_id: int
    verifying_contract: str


@dataclass(frozen=True)
class Authorization:
    """A parsed ``payload.authorization``; addresses as sent, nonce as 32 bytes."""

    from_: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


@lru_cache(maxsize=64)
def domain_separator(domain: Domain) -> bytes:
    # A gateway sees a handful of domains, so the separator is hashed once each.
    return keccak256(
        _domain_typehash()
        + keccak256(domain.name.encode())
        + keccak256(domain.version.encode())
        + _word(domain.chain_id)
        + _address_word(domain.verifying_contract)
    )


def digest(domain: Domain, auth: Authorization) -> bytes:
    """The 32-byte EIP-712 hash that the payer signed."""
    struct_hash = keccak256(
        _transfer_typehash()
        + _address_word(auth.from_)
        + _address_word(auth.to)
        + _word(auth.value)
        + _word(auth.valid_after)
        + _word(auth.valid_before)
        + auth.nonce
    )
    return keccak256(b"\x19\x01" + domain_separator(domain) + struct_hash)


def typed_data(domain: Domain, auth: Authorization) -> dict[str, Any]:
    """The full EIP-712 message, as ``encode_typed_data(full_message=...)`` takes it."""
    return {
        "types": {
            "EIP712Domain": [{"name": n, "type": t} for n, t in DOMAIN_FIELDS],
            "TransferWithAuthorization": [{"name": n, "type": t} for n, t in TRANSFER_FIELDS],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        },
        "message": {
            "from": auth.from_,
            "to": auth.to,
            "value": auth.value,
            "validAfter": auth.valid_after,
            "validBefore": auth.valid_before,
            "nonce": auth.nonce,
        },
    }
