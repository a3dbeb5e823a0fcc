"""The Solana wallet: every form Solana tools export, and the key shown nowhere."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from solders.keypair import Keypair

from blockrun_proxy.x402.svm import SolanaSigner, is_pubkey, solana_secret
from blockrun_proxy.x402.svm._base58 import b58decode, b58encode


def test_every_exported_form_gives_the_same_wallet() -> None:
    keypair = Keypair()
    secret = bytes(keypair)
    address = str(keypair.pubkey())
    forms = [
        b58encode(secret),  # solana-keygen / Phantom "export private key"
        json.dumps(list(secret)),  # the solana-keygen keypair file
        json.dumps(list(secret[:32])),  # a seed as a byte array
        b58encode(secret[:32]),  # a seed in base58
        secret,
        secret[:32],
        "  " + b58encode(secret) + "\n",  # as read from a file
    ]
    for form in forms:
        assert SolanaSigner(form).address == address
        assert solana_secret(form) == secret


def test_a_key_whose_public_half_is_not_its_own_is_refused() -> None:
    mixed = bytes(Keypair())[:32] + bytes(Keypair().pubkey())
    with pytest.raises(ValueError, match="public half"):
        SolanaSigner(b58encode(mixed))


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("0x" + "ab" * 32, "hex"),
        ("ab" * 64, "hex"),
        ("not a key at all", "not base58"),
        ("[1, 2, 3", "does not parse"),
        ("[1, 2, 300]", "byte values"),
        (json.dumps(list(range(40))), "40 bytes"),
        (b58encode(bytes(range(1, 17))), "16 bytes"),
        ("", "not base58"),
    ],
)
def test_malformed_keys_say_what_is_wrong_and_never_echo_the_key(key: str, why: str) -> None:
    with pytest.raises(ValueError) as exc:
        SolanaSigner(key)
    assert why in str(exc.value)
    if len(key) > 8:
        assert key not in str(exc.value) and key[2:12] not in str(exc.value)


def test_the_key_appears_in_no_repr_and_cannot_be_pickled() -> None:
    keypair = Keypair()
    key = b58encode(bytes(keypair))
    signer = SolanaSigner(key)
    for text in (repr(signer), str(signer), f"{signer}"):
        assert key not in text and str(keypair)[:20] not in text
        assert signer.address in text
    with pytest.raises(TypeError):
        pickle.dumps(signer)
    assert copy.copy(signer) is signer and copy.deepcopy(signer) is signer


def test_generate_gives_distinct_wallets() -> None:
    assert SolanaSigner.generate().address != SolanaSigner.generate().address


def test_base58_round_trips_and_pubkeys_are_32_canonical_bytes() -> None:
    for data in (b"", b"\x00", b"\x00\x00\x01", bytes(range(64)), bytes(32)):
        if data:  # the empty string is refused as a key, never decoded
            assert b58decode(b58encode(data)) == data
    address = str(Keypair().pubkey())
    assert is_pubkey(address)
    assert is_pubkey("11111111111111111111111111111111")  # the system program: 32 zero bytes
    assert not is_pubkey(address[:20])
    assert not is_pubkey("0x" + "11" * 20)
    assert not is_pubkey(None)
    assert not is_pubkey(b58encode(bytes(33)[:1] + b"\x01" * 32))  # 33 bytes
    with pytest.raises(ValueError):
        b58decode("1" * 91)  # refused before any arithmetic
