"""Which JSON-RPC endpoint the wallet commands use, and reading the wallet's funds.

``--rpc-url`` when given; otherwise the network's public endpoint (run by the chain's
operator, rate-limited, fine for a balance or one approval). The proxy itself reads
the chain only when ``--rpc-url`` is set: a serving process should not lean on a
public endpoint's rate limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from blockrun_proxy.evm_rpc import EvmRpc, RpcError
from blockrun_proxy.x402 import PERMIT2_ADDRESS, Network

PUBLIC_RPC_URLS: Mapping[str, str] = MappingProxyType(
    {
        "eip155:8453": "https://mainnet.base.org",
        "eip155:84532": "https://sepolia.base.org",
    }
)


def rpc_url_for(network: Network, configured: str | None) -> str:
    """``configured`` if set, else ``network``'s public endpoint; ValueError if it has none."""
    if configured:
        return configured
    url = PUBLIC_RPC_URLS.get(network.caip2)
    if url is None:
        raise ValueError(f"no public RPC endpoint known for {network.name}; pass --rpc-url")
    return url


async def check_chain(rpc: EvmRpc, network: Network) -> None:
    """RpcError unless the endpoint serves ``network``'s chain (a Sepolia URL for Base...)."""
    chain_id = await rpc.chain_id()
    if chain_id != network.chain_id:
        raise RpcError(
            f"{rpc.endpoint} serves chain {chain_id}, not {network.name} ({network.chain_id})"
        )


@dataclass(frozen=True, slots=True)
class WalletFunds:
    usdc: int  # atomic units
    permit2_allowance: int  # atomic USDC Permit2 may pull (what upto needs)
    eth_wei: int  # what pays gas for an approval


async def read_funds(rpc: EvmRpc, network: Network, address: str) -> WalletFunds:
    """The wallet's USDC, its Permit2 allowance and its ETH, read concurrently."""
    usdc, allowance, eth = await asyncio.gather(
        rpc.balance_of(network.usdc, address),
        rpc.allowance(network.usdc, address, PERMIT2_ADDRESS),
        rpc.native_balance(address),
    )
    return WalletFunds(usdc=usdc, permit2_allowance=allowance, eth_wei=eth)
