"""The fast signer against eth_account: byte-identical signatures, same addresses.

This is the test that lets the proxy sign without eth_account on the hot path.
"""

from __future__ import annotations

import copy
import pickle
import random
import secrets

import coincurve
import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils.address import to_checksum_address
from support.eip712 import typed_data

from blockrun_proxy.x402 import (
    NETWORKS,
    Authorization,
    Network,
    Signer,
    checksum_address,
    recover_transfer_signer,
    transfer_digest,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT256_MAX = 2**256 - 1


def random_uint(rng: random.Random) -> int:
    # Mix small, realistic and extreme values: bugs hide at word boundaries.
    return rng.choice(
        [
            0,
            1,
            UINT256_MAX,
            rng.randrange(10**9),
            rng.getrandbits(rng.choice([32, 64, 128, 255, 256])),
        ]
    )


def random_key(rng: random.Random) -> bytes:
    return rng.randrange(1, SECP256K1_N).to_bytes(32, "big")


def random_auth(rng: random.Random, signer: Signer) -> Authorization:
    return Authorization(
        from_=signer.address,
        to=to_checksum_address("0x" + rng.randbytes(20).hex()),
        value=random_uint(rng),
        valid_after=random_uint(rng),
        valid_before=random_uint(rng),
        nonce=rng.randbytes(32),
    )


def eth_account_signature(key: bytes, network: Network, auth: Authorization) -> str:
    signed = Account.sign_message(
        encode_typed_data(full_message=typed_data(network, auth)), private_key=key
    )
    return "0x" + bytes(signed.signature).hex()


@pytest.mark.parametrize("seed", range(8))
def test_signatures_identical_to_eth_account(seed: int) -> None:
    """32 random keys/messages per seed, both networks: 256 comparisons in all."""
    rng = random.Random(seed)
    for i in range(32):
        key = random_key(rng)
        signer = Signer(key)
        network = list(NETWORKS.values())[i % len(NETWORKS)]
        auth = random_auth(rng, signer)
        signable = encode_typed_data(full_message=typed_data(network, auth))

        assert transfer_digest(network, auth) == _hash_eip191_message(signable)
        ours = signer.sign_transfer(network, auth)
        assert ours == eth_account_signature(key, network, auth)
        assert len(ours) == 132 and ours[-2:] in ("1b", "1c")
        assert Account.recover_message(signable, signature=ours) == signer.address
        assert recover_transfer_signer(network, auth, ours) == signer.address


def test_signatures_identical_with_os_random_keys() -> None:
    """The same check with CSPRNG keys, as production keys are made."""
    rng = random.Random(99)
    for _ in range(16):
        key = secrets.token_bytes(32)
        signer = Signer(key)
        for network in NETWORKS.values():
            auth = random_auth(rng, signer)
            assert signer.sign_transfer(network, auth) == eth_account_signature(key, network, auth)


def test_address_matches_eth_account() -> None:
    for _ in range(50):
        key = coincurve.PrivateKey().secret
        assert Signer(key).address == Account.from_key(key).address
        assert Signer("0x" + key.hex()).address == Account.from_key(key).address


def test_key_forms_accepted() -> None:
    key = secrets.token_bytes(32)
    expected = Account.from_key(key).address
    for form in (key, key.hex(), "0x" + key.hex(), "0X" + key.hex().upper()):
        assert Signer(form).address == expected
    assert Signer(bytearray(key)).address == expected  # type: ignore[arg-type]
    assert Signer(" 0x" + key.hex() + "\n").address == expected  # from an env file


def test_generate_gives_distinct_working_signers() -> None:
    a, b = Signer.generate(), Signer.generate()
    assert a.address != b.address
    network = NETWORKS["eip155:8453"]
    auth = random_auth(random.Random(1), a)
    assert recover_transfer_signer(network, auth, a.sign_transfer(network, auth)) == a.address


def test_checksum_address_matches_eth_utils() -> None:
    rng = random.Random(7)
    for _ in range(200):
        addr = "0x" + rng.randbytes(20).hex()
        expected = to_checksum_address(addr)
        assert checksum_address(addr) == expected
        assert checksum_address(addr.upper().replace("0X", "0x")) == expected
    with pytest.raises(ValueError):
        checksum_address("0x1234")


def test_sign_digest_rejects_wrong_length() -> None:
    signer = Signer.generate()
    with pytest.raises(ValueError):
        signer.sign_digest(b"\x00" * 31)


def test_transfer_digest_rejects_bad_fields() -> None:
    signer = Signer.generate()
    network = NETWORKS["eip155:8453"]
    good = random_auth(random.Random(3), signer)
    bad = [
        Authorization(good.from_, good.to, -1, 0, 1, good.nonce),
        Authorization(good.from_, good.to, UINT256_MAX + 1, 0, 1, good.nonce),
        Authorization(good.from_, "0xnothex", 1, 0, 1, good.nonce),
        Authorization(good.from_, good.to, 1, 0, 1, b"\x00" * 31),
    ]
    for auth in bad:
        with pytest.raises(ValueError):
            transfer_digest(network, auth)


def test_recover_rejects_garbage_and_tampering() -> None:
    signer = Signer.generate()
    network = NETWORKS["eip155:84532"]
    auth = random_auth(random.Random(5), signer)
    sig = signer.sign_transfer(network, auth)

    # A different message or domain recovers some other address, never the signer.
    tampered = Authorization(
        auth.from_, auth.to, auth.value ^ 1, auth.valid_after, auth.valid_before, auth.nonce
    )
    assert recover_transfer_signer(network, tampered, sig) != signer.address
    assert recover_transfer_signer(NETWORKS["eip155:8453"], auth, sig) != signer.address

    for garbage in ("", "0x", "0x" + "zz" * 65, sig[:-2], sig + "00", "0x" + "00" * 65):
        assert recover_transfer_signer(network, auth, garbage) is None
    # v must be 27/28 (or 0/1).
    assert recover_transfer_signer(network, auth, sig[:-2] + "1d") is None
    assert recover_transfer_signer(network, auth, sig[:-2] + f"{int(sig[-2:], 16) - 27:02x}") == (
        signer.address
    )


def test_recover_rejects_high_s() -> None:
    """The malleable twin (n - s, flipped v) is valid ECDSA but EIP-2 forbids it."""
    signer = Signer.generate()
    network = NETWORKS["eip155:8453"]
    auth = random_auth(random.Random(11), signer)
    raw = bytes.fromhex(signer.sign_transfer(network, auth)[2:])
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - raw[64],))
    assert recover_transfer_signer(network, auth, "0x" + twin.hex()) is None


# --- key hygiene -----------------------------------------------------------------------------


def test_repr_str_show_only_the_address() -> None:
    key = secrets.token_bytes(32)
    signer = Signer(key)
    for text in (repr(signer), str(signer), f"{signer}", f"{signer!r}"):
        assert signer.address in text
        assert key.hex() not in text.lower()
    assert not hasattr(signer, "__dict__")  # nothing for vars() to dump


def test_signer_refuses_pickle() -> None:
    key = secrets.token_bytes(32)
    signer = Signer(key)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError) as exc:
            pickle.dumps(signer, protocol=protocol)
        assert key.hex() not in str(exc.value).lower()
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [signer]})
    # In-process copies are harmless (immutable) and must not go through pickling.
    assert copy.copy(signer) is signer
    assert copy.deepcopy({"s": signer})["s"] is signer


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0x",
        "0x" + "ab" * 31,  # too short
        "0x" + "ab" * 33,  # too long
        "0x" + "g" + "a" * 63,  # not hex
        "0x" + "00" * 32,  # zero is not a key
        "0x" + f"{SECP256K1_N:064x}",  # the group order is not a key
        "ff" * 32,  # above the group order
        b"\x01" * 31,
        b"\x00" * 32,
    ],
    ids=lambda bad: f"{type(bad).__name__}{len(bad)}",  # keep even bad keys out of test ids
)
def test_bad_key_error_never_echoes_the_input(bad: str | bytes) -> None:
    with pytest.raises(ValueError) as exc:
        Signer(bad)
    text = str(exc.value) + repr(exc.value)
    probe = bad.hex() if isinstance(bad, bytes) else bad.removeprefix("0x")
    if probe:
        assert probe not in text and probe.lower() not in text.lower()
    # The library's own exception is not chained (it could format its arguments).
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__


def test_non_key_type_is_type_error() -> None:
    with pytest.raises(TypeError):
        Signer(12345)  # type: ignore[arg-type]
