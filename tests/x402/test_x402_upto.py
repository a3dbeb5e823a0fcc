"""The upto signer against the official x402 package and eth_account.

Three oracles: the package's constants (our copy must equal them), eth_account's
``encode_typed_data`` over the package's own typed-data builder (digests and signatures
byte-identical over many random inputs), and the package's upto CLIENT (the whole payload,
EIP-2612 extension included, equal field for field when time and nonce are pinned).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils.address import to_checksum_address
from x402.extensions import eip2612_gas_sponsoring as official_eip2612
from x402.mechanisms.evm import constants as official
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.upto import client as official_client
from x402.schemas import PaymentRequirements

from blockrun_proxy.x402 import NETWORKS, Network, Refusal, Requirement, Signer, decode_header
from blockrun_proxy.x402._abi import keccak256
from blockrun_proxy.x402.permit2 import (
    EIP2612_PERMIT_TYPE,
    EIP2612_PERMIT_TYPEHASH,
    PERMIT2_ADDRESS,
    PERMIT2_DOMAIN_TYPE,
    PERMIT2_DOMAIN_TYPEHASH,
    TOKEN_PERMISSIONS_TYPE,
    TOKEN_PERMISSIONS_TYPEHASH,
    UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPE,
    UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH,
    UPTO_WITNESS_TYPE,
    UPTO_WITNESS_TYPEHASH,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
    Eip2612Permit,
    UptoAuthorization,
    permit_digest,
    upto_digest,
)
from blockrun_proxy.x402.upto import (
    EIP2612_GAS_SPONSORING_KEY,
    EIP2612_GAS_SPONSORING_VERSION,
    new_permit2_nonce,
    sign_upto_payment,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT256_MAX = 2**256 - 1
BASE = NETWORKS["eip155:8453"]
SEPOLIA = NETWORKS["eip155:84532"]
PAY_TO = "0x1111111111111111111111111111111111111111"
FACILITATOR = "0x2222222222222222222222222222222222222222"


def encode_type(types: dict[str, list[dict[str, str]]], primary: str) -> str:
    """EIP-712 encodeType from a types table: primary first, then the others by name."""

    def one(name: str) -> str:
        return f"{name}({','.join(f['type'] + ' ' + f['name'] for f in types[name])})"

    return one(primary) + "".join(one(n) for n in sorted(types) if n != primary)


def test_constants_equal_the_official_package() -> None:
    assert PERMIT2_ADDRESS == official.PERMIT2_ADDRESS
    assert X402_UPTO_PERMIT2_PROXY_ADDRESS == official.X402_UPTO_PERMIT2_PROXY_ADDRESS
    assert EIP2612_GAS_SPONSORING_KEY == official_eip2612.EIP2612_GAS_SPONSORING_KEY
    upto_types = official.UPTO_PERMIT2_WITNESS_TYPES
    assert encode_type(upto_types, "PermitWitnessTransferFrom") == (
        UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPE
    )
    assert encode_type({"Witness": upto_types["Witness"]}, "Witness") == UPTO_WITNESS_TYPE
    assert (
        encode_type({"TokenPermissions": upto_types["TokenPermissions"]}, "TokenPermissions")
        == TOKEN_PERMISSIONS_TYPE
    )
    assert encode_type(official.EIP2612_PERMIT_TYPES, "Permit") == EIP2612_PERMIT_TYPE


@pytest.mark.parametrize(
    ("typehash", "type_string"),
    [
        (PERMIT2_DOMAIN_TYPEHASH, PERMIT2_DOMAIN_TYPE),
        (TOKEN_PERMISSIONS_TYPEHASH, TOKEN_PERMISSIONS_TYPE),
        (UPTO_WITNESS_TYPEHASH, UPTO_WITNESS_TYPE),
        (UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH, UPTO_PERMIT_WITNESS_TRANSFER_FROM_TYPE),
        (EIP2612_PERMIT_TYPEHASH, EIP2612_PERMIT_TYPE),
    ],
)
def test_precomputed_typehashes(typehash: bytes, type_string: str) -> None:
    assert typehash == keccak256(type_string.encode())


# --- random inputs: digests and signatures equal eth_account's --------------------------------


def random_uint(rng: random.Random) -> int:
    return rng.choice(
        [0, 1, UINT256_MAX, rng.randrange(10**9), rng.getrandbits(rng.choice([64, 128, 256]))]
    )


def random_address(rng: random.Random) -> str:
    return to_checksum_address("0x" + rng.randbytes(20).hex())


def random_upto(rng: random.Random, signer: Signer, network: Network) -> UptoAuthorization:
    return UptoAuthorization(
        from_=signer.address,
        token=network.usdc,
        amount=random_uint(rng),
        spender=rng.choice([X402_UPTO_PERMIT2_PROXY_ADDRESS, random_address(rng)]),
        nonce=random_uint(rng),
        deadline=random_uint(rng),
        to=random_address(rng),
        facilitator=random_address(rng),
        valid_after=random_uint(rng),
    )


def official_upto_typed_data(auth: UptoAuthorization, chain_id: int) -> dict[str, Any]:
    """The package's own builder (the one its client signs with), as eth_account's input."""
    as_official = official_client.UptoPermit2Authorization(
        from_address=auth.from_,
        permitted=official_client.ExactPermit2TokenPermissions(
            token=auth.token, amount=str(auth.amount)
        ),
        spender=auth.spender,
        nonce=str(auth.nonce),
        deadline=str(auth.deadline),
        witness=official_client.UptoPermit2Witness(
            to=auth.to, facilitator=auth.facilitator, valid_after=str(auth.valid_after)
        ),
    )
    domain, fields, primary, message = official_client._build_upto_permit2_typed_data(
        as_official, chain_id
    )
    types = {
        name: [{"name": f.name, "type": f.type} for f in items] for name, items in fields.items()
    }
    return {"domain": domain, "types": types, "primary": primary, "message": message}


def eth_account_sign(key: bytes, typed: dict[str, Any]) -> tuple[bytes, str]:
    signable = encode_typed_data(typed["domain"], typed["types"], typed["message"])
    signed = Account.sign_message(signable, private_key=key)
    return _hash_eip191_message(signable), "0x" + bytes(signed.signature).hex()


@pytest.mark.parametrize("seed", range(6))
def test_upto_signatures_identical_to_eth_account(seed: int) -> None:
    """24 random keys and messages per seed, both networks."""
    rng = random.Random(seed)
    for i in range(24):
        key = rng.randrange(1, SECP256K1_N).to_bytes(32, "big")
        signer = Signer(key)
        network = (BASE, SEPOLIA)[i % 2]
        auth = random_upto(rng, signer, network)
        digest, expected = eth_account_sign(key, official_upto_typed_data(auth, network.chain_id))
        assert upto_digest(network.chain_id, auth) == digest
        assert signer.sign_digest(upto_digest(network.chain_id, auth)) == expected


@pytest.mark.parametrize("seed", range(4))
def test_permit_signatures_identical_to_eth_account(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for i in range(24):
        key = rng.randrange(1, SECP256K1_N).to_bytes(32, "big")
        signer = Signer(key)
        network = (BASE, SEPOLIA)[i % 2]
        permit = Eip2612Permit(
            owner=signer.address,
            spender=rng.choice([PERMIT2_ADDRESS, random_address(rng)]),
            value=random_uint(rng),
            nonce=random_uint(rng),
            deadline=random_uint(rng),
        )
        typed = {
            "domain": {
                "name": network.domain_name,
                "version": network.domain_version,
                "chainId": network.chain_id,
                "verifyingContract": network.usdc,
            },
            "types": official.EIP2612_PERMIT_TYPES,
            "message": {
                "owner": permit.owner,
                "spender": permit.spender,
                "value": permit.value,
                "nonce": permit.nonce,
                "deadline": permit.deadline,
            },
        }
        digest, expected = eth_account_sign(key, typed)
        assert permit_digest(network, permit) == digest
        assert signer.sign_digest(permit_digest(network, permit)) == expected


# --- the whole payload, against the official client ------------------------------------------


def upto_raw(network: Network = SEPOLIA, amount: int = 25_000, **extra: Any) -> dict[str, Any]:
    return {
        "scheme": "upto",
        "network": network.caip2,
        "amount": str(amount),
        "asset": network.usdc,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {
            "name": network.domain_name,
            "version": network.domain_version,
            "assetTransferMethod": "permit2",
            "facilitatorAddress": FACILITATOR,
            **extra,
        },
    }


def requirement(raw: dict[str, Any]) -> Requirement:
    return Requirement(
        scheme=raw["scheme"],
        network=raw["network"],
        amount=int(raw["amount"]),
        asset=raw["asset"],
        pay_to=raw["payTo"],
        max_timeout_seconds=raw["maxTimeoutSeconds"],
        extra=raw["extra"],
        raw=raw,
    )


class ReadingSigner(EthAccountSigner):
    """The official client's signer, answering its allowance and nonces reads."""

    def __init__(self, account: Any, allowance: int, permit_nonce: int) -> None:
        super().__init__(account)
        self.allowance = allowance
        self.permit_nonce = permit_nonce

    def read_contract(self, address: str, abi: Any, function_name: str, *args: Any) -> int:
        return {"allowance": self.allowance, "nonces": self.permit_nonce}[function_name]


def official_payload(
    monkeypatch: pytest.MonkeyPatch,
    signer: Any,
    raw: dict[str, Any],
    *,
    now: int,
    nonce: int,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    monkeypatch.setattr(official_client, "create_permit2_nonce", lambda: str(nonce))
    monkeypatch.setattr("time.time", lambda: float(now))
    scheme = official_client.UptoEvmScheme(signer)
    return scheme.create_payment_payload(PaymentRequirements.model_validate(raw), extensions)


def test_payload_equals_the_official_clients(monkeypatch: pytest.MonkeyPatch, wallet_key: str):
    now, nonce = 1_750_000_000, new_permit2_nonce()
    raw = upto_raw()
    ours = sign_upto_payment(
        Signer(wallet_key), requirement(raw), SEPOLIA, {}, now=now, nonce=nonce
    )
    theirs = official_payload(
        monkeypatch, EthAccountSigner(Account.from_key(wallet_key)), raw, now=now, nonce=nonce
    )
    doc = decode_header(ours.header)
    assert doc["payload"] == theirs
    assert doc["accepted"] == raw
    assert doc["x402Version"] == 2
    assert ours.amount == ours.authorization.amount == 25_000
    assert ours.nonce == nonce and ours.permit is None
    assert ours.authorization.deadline == now + 300


def test_permit_extension_equals_the_official_clients(
    monkeypatch: pytest.MonkeyPatch, wallet_key: str
) -> None:
    """Allowance short, the 402 declares gas sponsoring: the same permit, same fields."""
    now, nonce, permit_nonce = 1_750_000_000, new_permit2_nonce(), 7
    raw = upto_raw(amount=40_000)
    declared = official_eip2612.declare_eip2612_gas_sponsoring_extension()
    ours = sign_upto_payment(
        Signer(wallet_key),
        requirement(raw),
        SEPOLIA,
        {},
        now=now,
        nonce=nonce,
        permit_nonce=permit_nonce,
        extensions=declared,
    )
    reading = ReadingSigner(Account.from_key(wallet_key), allowance=39_999, permit_nonce=7)
    theirs = official_payload(monkeypatch, reading, raw, now=now, nonce=nonce, extensions=declared)
    their_extension = theirs.pop("__extensions")[EIP2612_GAS_SPONSORING_KEY]
    doc = decode_header(ours.header)
    assert doc["payload"] == theirs
    ext = doc["extensions"][EIP2612_GAS_SPONSORING_KEY]
    # What the client signs equals the package's; the server's declaration is echoed beside it.
    assert {k: ext["info"][k] for k in their_extension["info"]} == their_extension["info"]
    assert ext["schema"] == declared[EIP2612_GAS_SPONSORING_KEY]["schema"]
    assert ext["info"]["description"] == declared[EIP2612_GAS_SPONSORING_KEY]["info"]["description"]
    assert (
        ext["info"]["amount"]
        == "40000"
        == doc["payload"]["permit2Authorization"]["permitted"]["amount"]
    )
    assert ext["info"]["version"] == EIP2612_GAS_SPONSORING_VERSION
    assert ours.permit is not None and ours.permit.value == ours.amount
    assert doc["extensions"]["builder-code"]["info"]["s"] == ["blockrun"]


def test_signed_permit_fields_win_over_prefilled_ones(wallet_key: str) -> None:
    """A 402 that pre-fills the permit's amount cannot make the payload lie about it."""
    declared = {EIP2612_GAS_SPONSORING_KEY: {"info": {"amount": str(UINT256_MAX), "nonce": "0"}}}
    signed = sign_upto_payment(
        Signer(wallet_key),
        requirement(upto_raw(amount=5000)),
        SEPOLIA,
        {},
        now=1,
        nonce=1,
        permit_nonce=3,
        extensions=declared,
    )
    info = decode_header(signed.header)["extensions"][EIP2612_GAS_SPONSORING_KEY]["info"]
    assert (info["amount"], info["nonce"]) == ("5000", "3")
    # The parsed 402 is never mutated: the next call echoes the declaration as it was.
    assert declared[EIP2612_GAS_SPONSORING_KEY]["info"] == {
        "amount": str(UINT256_MAX),
        "nonce": "0",
    }


def test_permit_without_declared_sponsoring_is_refused(wallet_key: str) -> None:
    with pytest.raises(Refusal) as exc:
        sign_upto_payment(
            Signer(wallet_key),
            requirement(upto_raw()),
            SEPOLIA,
            {},
            now=1,
            nonce=1,
            permit_nonce=0,
            extensions={},
        )
    assert exc.value.code == "permit2_allowance_required"


def test_nonce_is_the_callers_and_must_be_uint256(wallet_key: str) -> None:
    signer, req = Signer(wallet_key), requirement(upto_raw())
    a = sign_upto_payment(signer, req, SEPOLIA, {}, now=5, nonce=UINT256_MAX)
    b = sign_upto_payment(signer, req, SEPOLIA, {}, now=5, nonce=UINT256_MAX)
    assert a.header == b.header  # same call, same nonce: the same signature (RFC 6979)
    for bad in (-1, UINT256_MAX + 1):
        with pytest.raises(ValueError):
            sign_upto_payment(signer, req, SEPOLIA, {}, now=5, nonce=bad)
    assert len({new_permit2_nonce() for _ in range(64)}) == 64
