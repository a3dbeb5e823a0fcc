"""The networks the proxy pays on, with their USDC contract and EIP-712 domain.

The domain is ours, keyed by the 402's CAIP-2 ``network``: a 402 selects an entry,
it never supplies the domain (its ``extra`` is ignored). The domain separator is
hashed once at construction so signing only hashes the message struct.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._abi import address_word, keccak256, uint_word

EIP712_DOMAIN_TYPEHASH = keccak256(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
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
    # Derived from the fields above in __post_init__; not an init argument.
    domain_separator: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        separator = keccak256(
            EIP712_DOMAIN_TYPEHASH
            + keccak256(self.domain_name.encode("utf-8"))
            + keccak256(self.domain_version.encode("utf-8"))
            + uint_word(self.chain_id)
            + address_word(self.usdc)
        )
        # frozen: the generated __setattr__ refuses, so go around it once.
        object.__setattr__(self, "domain_separator", separator)


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
