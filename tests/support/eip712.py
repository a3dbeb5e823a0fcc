"""The EIP-712 message for a transfer authorization, written out as eth_account takes it.

Kept apart from the signer's own hand-rolled hashing so tests can check it against an
independent implementation (eth_account hashes this message itself).
"""

from __future__ import annotations

from blockrun_proxy.x402 import Authorization, Network


def typed_data(network: Network, auth: Authorization) -> dict[str, object]:
    """The same message the blockrun-llm SDK hands to eth_account."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": network.domain_name,
            "version": network.domain_version,
            "chainId": network.chain_id,
            "verifyingContract": network.usdc,
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
