"""Our Solana network table: the mints are ours, checked against the official package's."""

from __future__ import annotations

from x402.mechanisms.svm import constants as official

from blockrun_proxy.x402.svm import (
    SOLANA_DEVNET,
    SOLANA_MAINNET,
    default_rpc_url,
    is_solana_network,
)
from blockrun_proxy.x402.svm.networks import (
    ASSOCIATED_TOKEN_PROGRAM,
    COMPUTE_BUDGET_PROGRAM,
    MEMO_PROGRAM,
    TOKEN_PROGRAM,
    solana_network_for,
)
from blockrun_proxy.x402.svm.transaction import (
    COMPUTE_UNIT_LIMIT,
    COMPUTE_UNIT_PRICE_MICROLAMPORTS,
    MAX_COMPUTE_UNIT_PRICE_MICROLAMPORTS,
    MAX_MEMO_BYTES,
)


def test_the_table_agrees_with_the_official_package() -> None:
    assert SOLANA_MAINNET.caip2 == official.SOLANA_MAINNET_CAIP2
    assert SOLANA_DEVNET.caip2 == official.SOLANA_DEVNET_CAIP2
    assert SOLANA_MAINNET.usdc_mint == official.USDC_MAINNET_ADDRESS
    assert SOLANA_DEVNET.usdc_mint == official.USDC_DEVNET_ADDRESS
    assert TOKEN_PROGRAM == official.TOKEN_PROGRAM_ADDRESS
    assert COMPUTE_BUDGET_PROGRAM == official.COMPUTE_BUDGET_PROGRAM_ADDRESS
    assert MEMO_PROGRAM == official.MEMO_PROGRAM_ADDRESS
    assert ASSOCIATED_TOKEN_PROGRAM == "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"
    assert COMPUTE_UNIT_LIMIT == official.DEFAULT_COMPUTE_UNIT_LIMIT
    assert COMPUTE_UNIT_PRICE_MICROLAMPORTS == official.DEFAULT_COMPUTE_UNIT_PRICE_MICROLAMPORTS
    assert MAX_COMPUTE_UNIT_PRICE_MICROLAMPORTS == official.MAX_COMPUTE_UNIT_PRICE_MICROLAMPORTS
    assert MAX_MEMO_BYTES == official.MAX_MEMO_BYTES
    assert SOLANA_MAINNET.default_rpc_url == official.MAINNET_RPC_URL
    assert SOLANA_DEVNET.default_rpc_url == official.DEVNET_RPC_URL
    for network in (SOLANA_MAINNET, SOLANA_DEVNET):
        assert network.decimals == 6


def test_lookups() -> None:
    assert solana_network_for(SOLANA_MAINNET.caip2) is SOLANA_MAINNET
    assert solana_network_for("solana-devnet") is SOLANA_DEVNET
    assert solana_network_for("solana:4uhcVJyU9pJkvQyS88uRDiswHXSCkY3z") is None
    assert solana_network_for("eip155:8453") is None
    assert is_solana_network("solana:anything") and is_solana_network("solana")
    assert not is_solana_network("eip155:8453")


def test_the_default_rpc_follows_the_networks() -> None:
    assert default_rpc_url((SOLANA_MAINNET.caip2,)) == official.MAINNET_RPC_URL
    assert default_rpc_url((SOLANA_DEVNET.caip2, "eip155:84532")) == official.DEVNET_RPC_URL
    assert default_rpc_url((SOLANA_DEVNET.caip2, SOLANA_MAINNET.caip2)) == official.MAINNET_RPC_URL
    assert default_rpc_url(("eip155:8453",)) == official.MAINNET_RPC_URL
