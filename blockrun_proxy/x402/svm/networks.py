"""The Solana networks the proxy pays on, with their USDC mint.

Like the EVM table, this one is ours: a 402 names a network (CAIP-2) and the entry
here says which mint, token program and decimals a payment on it uses. The 402's
``asset`` must equal our mint; its decimals and token program are never asked for
(the official client reads them from the chain; we know them for USDC).

No solders import here: the table is read at startup and by the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# Programs the exact scheme's transaction uses (x402 mechanisms/svm/constants.py).
TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
ASSOCIATED_TOKEN_PROGRAM = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"
COMPUTE_BUDGET_PROGRAM = "ComputeBudget111111111111111111111111111111"
MEMO_PROGRAM = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"

MAINNET_RPC_URL = "https://api.mainnet-beta.solana.com"
DEVNET_RPC_URL = "https://api.devnet.solana.com"


@dataclass(frozen=True, slots=True)
class SolanaNetwork:
    """One Solana cluster and its USDC mint (the only asset we pay with)."""

    caip2: str
    name: str
    usdc_mint: str
    default_rpc_url: str
    token_program: str = TOKEN_PROGRAM
    decimals: int = 6


SOLANA_MAINNET = SolanaNetwork(
    caip2="solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
    name="Solana",
    usdc_mint="EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
    default_rpc_url=MAINNET_RPC_URL,
)

SOLANA_DEVNET = SolanaNetwork(
    caip2="solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1",
    name="Solana Devnet",
    usdc_mint="4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU",
    default_rpc_url=DEVNET_RPC_URL,
)

SOLANA_NETWORKS: Mapping[str, SolanaNetwork] = MappingProxyType(
    {n.caip2: n for n in (SOLANA_MAINNET, SOLANA_DEVNET)}
)

# x402 v1 named Solana networks by slug; map them to the same entries.
_V1_ALIASES: Mapping[str, str] = MappingProxyType(
    {"solana": SOLANA_MAINNET.caip2, "solana-devnet": SOLANA_DEVNET.caip2}
)


def canonical_solana_network(network: str) -> str:
    """The CAIP-2 id for a Solana network name (v1 slugs mapped; anything else unchanged)."""
    return _V1_ALIASES.get(network, network)


def solana_network_for(network: str) -> SolanaNetwork | None:
    """Our table entry for a 402's ``network`` (CAIP-2, or a v1 slug), or None."""
    return SOLANA_NETWORKS.get(canonical_solana_network(network))


def is_solana_network(network: str) -> bool:
    """True for any CAIP-2 ``solana:`` name or v1 Solana slug, known to us or not.

    This is how a caller tells which rail a requirement is for; whether we pay on
    that network is the policy's question.
    """
    return network.startswith("solana:") or network in _V1_ALIASES or network == "solana-testnet"


def default_rpc_url(networks: tuple[str, ...] | frozenset[str]) -> str:
    """The public RPC for the Solana networks allowed: devnet's when every one is devnet."""
    solana = {canonical_solana_network(n) for n in networks if is_solana_network(n)}
    if solana and solana <= {SOLANA_DEVNET.caip2}:
        return DEVNET_RPC_URL
    return MAINNET_RPC_URL
