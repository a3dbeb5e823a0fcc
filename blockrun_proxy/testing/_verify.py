"""Recover who signed an EIP-3009 authorization, in one of three modes.

- ``eth_account`` (default): the reference library hashes and recovers, the
  strongest cross-check of the proxy's own signer. Imported lazily because
  ``serve --demo`` imports this package and eth_account is slow to import.
- ``fast``: our own digest plus coincurve recovery, about 20x cheaper, for
  benchmarks where verification must not be the bottleneck.
- ``none``: trust ``authorization.from``; for pure relay benchmarks.
"""

from __future__ import annotations

from typing import Literal, get_args

from blockrun_proxy.testing._eip712 import Authorization, Domain, digest, keccak256, typed_data

VerifyMode = Literal["eth_account", "fast", "none"]
VERIFY_MODES: tuple[str, ...] = get_args(VerifyMode)

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class SignatureError(ValueError):
    """The signature cannot belong to anyone: malformed or non-canonical."""


def parse_signature(signature: object) -> bytes:
    """65 bytes r || s || v, held to what USDC's on-chain ECRecover accepts.

    eth_account alone would accept v in {0, 1} and high-s signatures, which the
    USDC contract rejects at settlement; checking here makes both modes agree and
    keeps the fake as strict as the chain.
    """
    if not isinstance(signature, str) or not signature.startswith("0x"):
        raise SignatureError("signature is not 0x-prefixed hex")
    try:
        raw = bytes.fromhex(signature[2:])
    except ValueError:
        raise SignatureError("signature is not hex") from None
    if len(raw) != 65:
        raise SignatureError(f"signature is {len(raw)} bytes, expected 65")
    r = int.from_bytes(raw[:32], "big")
    s = int.from_bytes(raw[32:64], "big")
    if raw[64] not in (27, 28):
        raise SignatureError("signature v must be 27 or 28")
    if not 0 < r < _SECP256K1_N or not 0 < s <= _SECP256K1_N // 2:
        raise SignatureError("signature r/s out of range (high-s is not accepted)")
    return raw


def recover_signer(mode: VerifyMode, domain: Domain, auth: Authorization, signature: bytes) -> str:
    """The lower-case 0x address that signed, per ``mode``."""
    if mode == "none":
        return auth.from_.lower()
    if mode == "fast":
        return _recover_fast(domain, auth, signature)
    return _recover_eth_account(domain, auth, signature)


def _recover_fast(domain: Domain, auth: Authorization, signature: bytes) -> str:
    from coincurve import PublicKey

    # coincurve wants the recovery id (0/1) where Ethereum writes v = 27/28.
    recoverable = signature[:64] + bytes((signature[64] - 27,))
    try:
        key = PublicKey.from_signature_and_message(recoverable, digest(domain, auth), hasher=None)
    except ValueError as exc:
        raise SignatureError(f"signature does not recover: {exc}") from None
    return "0x" + keccak256(key.format(compressed=False)[1:])[-20:].hex()


def _recover_eth_account(domain: Domain, auth: Authorization, signature: bytes) -> str:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    try:
        signer = Account.recover_message(
            encode_typed_data(full_message=typed_data(domain, auth)), signature=signature
        )
    except Exception as exc:  # eth_account raises several unrelated types for bad input
        raise SignatureError(f"signature does not recover: {exc}") from None
    return str(signer).lower()
