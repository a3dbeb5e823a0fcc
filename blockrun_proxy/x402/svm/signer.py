"""The Solana wallet: an ed25519 keypair held by solders, shown only as its address.

solders (Rust ed25519-dalek) does the key handling and signing; nothing here touches
curve arithmetic. The keypair lives only in ``SolanaSigner._keypair``: solders prints
the secret as ``str(keypair)``, so it is never formatted, and the signer refuses to be
pickled (as the EVM ``Signer`` does) so it cannot reach a child process or a cache.

Accepted key forms, as Solana tools export them:
- base58 of the 64-byte secret key (``solana-keygen``, Phantom "export private key"),
- a JSON array of 64 byte values (the ``solana-keygen`` keypair file),
- base58 or a JSON array of a 32-byte seed (some wallets export only the seed),
- raw bytes of either length.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, NoReturn, SupportsIndex

from ._base58 import b58decode

if TYPE_CHECKING:
    from solders.keypair import Keypair
    from solders.pubkey import Pubkey
    from solders.signature import Signature

SEED_BYTES = 32
KEYPAIR_BYTES = 64
_HEX_KEY_RE = re.compile(r"(?:0[xX])?(?:[0-9a-fA-F]{64}){1,2}\Z")


def solana_secret(key: bytes | str) -> bytes:
    """The 64-byte secret key (seed || public key) in any accepted form.

    ValueError naming what is wrong with the shape, never echoing the value; a
    64-byte key whose public half does not belong to its seed is refused (it would
    print one address and sign for another).
    """
    raw = _raw_key(key)
    if len(raw) not in (SEED_BYTES, KEYPAIR_BYTES):
        raise ValueError(
            f"invalid Solana key: {len(raw)} bytes, expected a 64-byte secret key "
            "(or its 32-byte seed)"
        )
    from solders.keypair import Keypair

    keypair = Keypair.from_seed(raw[:SEED_BYTES])
    if len(raw) == KEYPAIR_BYTES and bytes(keypair.pubkey()) != raw[SEED_BYTES:]:
        raise ValueError("invalid Solana key: its public half does not match its secret half")
    return bytes(keypair)


def _raw_key(key: bytes | str) -> bytes:
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    if not isinstance(key, str):
        raise TypeError("a Solana key must be bytes or a string")
    text = key.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except ValueError:
            raise ValueError("invalid Solana key: a JSON array that does not parse") from None
        if not isinstance(values, list) or not all(
            type(v) is int and 0 <= v <= 255 for v in values
        ):
            raise ValueError("invalid Solana key: the JSON array must hold byte values 0-255")
        return bytes(values)
    if _HEX_KEY_RE.match(text):
        # The EVM wallet's format: say so rather than "not base58".
        raise ValueError(
            "invalid Solana key: this is hex (the Base/EVM wallet format); a Solana "
            "key is base58 or a solana-keygen JSON array"
        )
    try:
        return b58decode(text)
    except ValueError:
        raise ValueError(
            "invalid Solana key: not base58 and not a JSON byte array (solana-keygen file)"
        ) from None


class SolanaSigner:
    """A Solana wallet that signs transaction messages; shows only its address."""

    __slots__ = ("_address", "_keypair", "_pubkey")

    def __init__(self, key: bytes | str) -> None:
        from solders.keypair import Keypair

        self._keypair: Keypair = Keypair.from_bytes(solana_secret(key))
        self._pubkey: Pubkey = self._keypair.pubkey()
        self._address = str(self._pubkey)

    @classmethod
    def generate(cls) -> SolanaSigner:
        """A fresh random wallet (solders draws from the OS CSPRNG)."""
        from solders.keypair import Keypair

        return cls(bytes(Keypair()))

    @property
    def address(self) -> str:
        """The base58 public key."""
        return self._address

    @property
    def pubkey(self) -> Pubkey:
        return self._pubkey

    def sign_message(self, message: bytes) -> Signature:
        """ed25519 over ``message`` (for a v0 transaction: 0x80 || the message bytes)."""
        return self._keypair.sign_message(message)

    def __repr__(self) -> str:
        return f"SolanaSigner(address={self._address})"

    __str__ = __repr__

    # --- never serialized (see the module docstring) ---------------------------------------

    def __reduce__(self) -> NoReturn:
        raise TypeError("SolanaSigner holds a wallet key and cannot be pickled")

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("SolanaSigner holds a wallet key and cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise TypeError("SolanaSigner holds a wallet key and cannot be pickled")

    def __copy__(self) -> SolanaSigner:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SolanaSigner:
        return self
