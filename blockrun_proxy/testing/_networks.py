"""The networks the fake gateway can quote on, with their USDC contract and EIP-712 domain.

Kept apart from ``blockrun_proxy.x402`` on purpose: the fake is an independent
implementation of the gateway side, so a mistake copied into one table is not
silently shared by the signer it is meant to check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Network:
    caip2: str
    chain_id: int
    usdc: str
    domain_name: str
    domain_version: str = "2"


NETWORKS: MappingProxyType[str, Network] = MappingProxyType(
    {
        "eip155:8453": Network(
            "eip155:8453", 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "USD Coin"
        ),
        "eip155:84532": Network(
            "eip155:84532", 84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC"
        ),
        "eip155:5042": Network(
            "eip155:5042", 5042, "0x3600000000000000000000000000000000000000", "USDC"
        ),
    }
)

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_EIP155 = re.compile(r"eip155:([0-9]{1,18})")


def is_address(value: object) -> bool:
    return isinstance(value, str) and _ADDRESS.fullmatch(value) is not None


def chain_id_of(network: str) -> int | None:
    """The chain id of a CAIP-2 ``eip155:<id>`` name, or None for anything else.

    Parsed rather than looked up so a misbehaving quote on a network missing from
    the table can still be verified against the domain it names.
    """
    match = _EIP155.fullmatch(network)
    return int(match.group(1)) if match else None
