"""The fast verifier (own keccak digest + coincurve) agrees with eth_account."""

from __future__ import annotations

import random
import secrets

import pytest
from eth_account import Account
from support.gateway_client import sign_authorization

from blockrun_proxy.testing._eip712 import Authorization, Domain, digest
from blockrun_proxy.testing._networks import NETWORKS
from blockrun_proxy.testing._verify import SignatureError, parse_signature, recover_signer


def _case(rng: random.Random) -> tuple[Domain, Authorization, bytes, str]:
    network = rng.choice(list(NETWORKS.values()))
    account = Account.create()
    requirement = {
        "network": network.caip2,
        "asset": network.usdc,
        "extra": {"name": network.domain_name, "version": network.domain_version},
    }
    raw = {
        "from": account.address,
        "to": Account.create().address,
        "value": str(rng.choice([0, 1, rng.getrandbits(64), 2**256 - 1])),
        "validAfter": str(rng.getrandbits(40)),
        "validBefore": str(rng.getrandbits(40)),
        "nonce": "0x" + secrets.token_hex(32),
    }
    signature = sign_authorization(account, requirement, raw)
    domain = Domain(network.domain_name, "2", network.chain_id, network.usdc)
    auth = Authorization(
        raw["from"],
        raw["to"],
        int(raw["value"]),
        int(raw["validAfter"]),
        int(raw["validBefore"]),
        bytes.fromhex(raw["nonce"][2:]),
    )
    return domain, auth, parse_signature(signature), account.address.lower()


def test_fast_and_eth_account_agree_on_many_inputs() -> None:
    rng = random.Random(402)
    for _ in range(60):
        domain, auth, signature, signer = _case(rng)
        assert recover_signer("fast", domain, auth, signature) == signer
        assert recover_signer("eth_account", domain, auth, signature) == signer
        # Tampering with any signed field moves both to the same wrong address.
        tampered = Authorization(
            auth.from_, auth.to, auth.value ^ 1, auth.valid_after, auth.valid_before, auth.nonce
        )
        fast = recover_signer("fast", domain, tampered, signature)
        assert fast != signer
        assert fast == recover_signer("eth_account", domain, tampered, signature)
        other_chain = Domain(
            domain.name, domain.version, domain.chain_id + 1, domain.verifying_contract
        )
        assert recover_signer("fast", other_chain, auth, signature) == recover_signer(
            "eth_account", other_chain, auth, signature
        )


def test_digest_is_what_eth_account_signs() -> None:
    # RFC 6979 signatures are deterministic: signing our digest raw must give the
    # same bytes as eth_account signing the typed data itself.
    from eth_account.messages import encode_typed_data

    from blockrun_proxy.testing._eip712 import typed_data

    domain, auth, _, _ = _case(random.Random(1))
    account = Account.create()
    typed = typed_data(domain, auth)
    expected = account.sign_message(encode_typed_data(full_message=typed)).signature
    assert account.unsafe_sign_hash(digest(domain, auth)).signature == expected


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        ("0x" + "11" * 64, "65"),
        ("0x" + "11" * 64 + "1b" + "00", "65"),
        ("11" * 65, "0x"),
        ("0x" + "zz" * 65, "hex"),
        ("0x" + "11" * 64 + "00", "27 or 28"),
        ("0x" + "00" * 32 + "11" * 32 + "1b", "out of range"),
        ("0x" + "11" * 32 + "ff" * 32 + "1b", "out of range"),
    ],
)
def test_malformed_signatures_are_refused(signature: str, why: str) -> None:
    with pytest.raises(SignatureError, match=why):
        parse_signature(signature)
