"""Our network table against the blockrun-llm SDK's and eth_account's domain hashing."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
from eth_account._utils.encode_typed_data.encoding_and_hashing import hash_domain
from eth_utils.address import to_checksum_address

from blockrun_proxy.x402 import NETWORKS, Network, network_for

with warnings.catch_warnings():
    # blockrun_llm's pydantic models warn on import; that noise is not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from blockrun_llm.x402 import EVM_NETWORKS


def test_table_is_exactly_base_and_base_sepolia() -> None:
    assert set(NETWORKS) == {"eip155:8453", "eip155:84532"}
    assert NETWORKS["eip155:8453"].usdc == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    assert NETWORKS["eip155:8453"].domain_name == "USD Coin"
    assert NETWORKS["eip155:84532"].usdc == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    assert NETWORKS["eip155:84532"].domain_name == "USDC"


@pytest.mark.parametrize("caip2", sorted(NETWORKS))
def test_entry_matches_blockrun_sdk(caip2: str) -> None:
    ours, sdk = NETWORKS[caip2], EVM_NETWORKS[caip2]
    assert ours.caip2 == caip2
    assert ours.chain_id == sdk["chain_id"] == sdk["domain"]["chainId"]
    assert ours.usdc == sdk["usdc"] == sdk["domain"]["verifyingContract"]
    assert ours.domain_name == sdk["domain"]["name"]
    assert ours.domain_version == sdk["domain"]["version"]
    assert ours.name == sdk["name"]
    assert ours.usdc == to_checksum_address(ours.usdc)


@pytest.mark.parametrize("caip2", sorted(NETWORKS))
def test_domain_separator_matches_eth_account(caip2: str) -> None:
    net = NETWORKS[caip2]
    expected = hash_domain(
        {
            "name": net.domain_name,
            "version": net.domain_version,
            "chainId": net.chain_id,
            "verifyingContract": net.usdc,
        }
    )
    assert len(net.domain_separator) == 32
    assert net.domain_separator == bytes(expected)


def test_network_is_frozen_and_separator_not_an_argument() -> None:
    net = NETWORKS["eip155:8453"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.chain_id = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        NETWORKS["x"] = net  # type: ignore[index]
    # A copy made from the fields recomputes the same separator.
    twin = Network(
        caip2=net.caip2,
        name=net.name,
        chain_id=net.chain_id,
        usdc=net.usdc,
        domain_name=net.domain_name,
        domain_version=net.domain_version,
    )
    assert twin == net and twin.domain_separator == net.domain_separator
    assert "domain_separator" not in repr(net)


def test_network_for() -> None:
    assert network_for("eip155:8453") is NETWORKS["eip155:8453"]
    assert network_for("eip155:84532") is NETWORKS["eip155:84532"]
    # x402 v1 slugs name the same networks.
    assert network_for("base") is NETWORKS["eip155:8453"]
    assert network_for("base-sepolia") is NETWORKS["eip155:84532"]
    for unknown in ("eip155:1", "eip155:5042", "solana:mainnet", "", "EIP155:8453"):
        assert network_for(unknown) is None


def test_written_out_type_hashes_are_the_keccak_of_their_types() -> None:
    from blockrun_proxy.x402._abi import keccak256
    from blockrun_proxy.x402.networks import EIP712_DOMAIN_TYPEHASH
    from blockrun_proxy.x402.signer import TRANSFER_WITH_AUTHORIZATION_TYPEHASH

    assert (
        keccak256(
            b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
        )
        == EIP712_DOMAIN_TYPEHASH
    )
    assert (
        keccak256(
            b"TransferWithAuthorization(address from,address to,uint256 value,"
            b"uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        )
        == TRANSFER_WITH_AUTHORIZATION_TYPEHASH
    )
