"""The networks the proxy pays on, with their USDC contract and EIP-712 domain.

The domain is ours, keyed by the 402's CAIP-2 ``network``: a 402 selects an entry,
it never supplies the domain (its ``extra`` is ignored). The domain separator is
hashed once per network, on first use, so signing only hashes the message struct.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._abi import address_word, keccak256, uint_word

# keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
# written out so importing this module hashes nothing (tests/x402 recompute it).
EIP712_DOMAIN_TYPEHASH = bytes.fromhex(
    "8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f"
)


@dataclass(frozen=True, slots=True)
class Network:
    """One EVM network and its USDC token (the only asset we pay with)."""

    caip2: str
    name: str
    chain_id: int
    usdc: str  # EIP-55 checksummed
    domain_name: str
    domain_version: str

    @property
    def domain_separator(self) -> bytes:
        """The EIP-712 domain separator of this network's USDC, hashed once."""
        return _domain_separator(self)


@functools.cache
def _domain_separator(network: Network) -> bytes:
    return keccak256(
        EIP712_DOMAIN_TYPEHASH
        + keccak256(network.domain_name.encode("utf-8"))
        + keccak256(network.domain_version.encode("utf-8"))
        + uint_word(network.chain_id)
        + address_word(network.usdc)
    )


BASE = Network(
    caip2="eip155:8453",
    name="Base",
    chain_id=8453,
    usdc="0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
    domain_name="USD Coin",
    domain_version="2",
)

BASE_SEPOLIA = Network(
    caip2="eip155:84532",
    name="Base Sepolia",
    chain_id=84532,
    usdc="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    domain_name="USDC",
    domain_version="2",
)

NETWORKS: Mapping[str, Network] = MappingProxyType({n.caip2: n for n in (BASE, BASE_SEPOLIA)})

# x402 v1 named networks by slug; map them to the same entries.
_V1_ALIASES: Mapping[str, str] = MappingProxyType(
    {"base": BASE.caip2, "base-sepolia": BASE_SEPOLIA.caip2}
)


def canonical_network(network: str) -> str:
    """The CAIP-2 id for a network name (v1 slugs mapped; anything else unchanged)."""
    return _V1_ALIASES.get(network, network)


def network_for(caip2: str) -> Network | None:
    """Our table entry for a 402's ``network`` (CAIP-2, or a v1 slug), or None."""
    return NETWORKS.get(canonical_network(caip2))
