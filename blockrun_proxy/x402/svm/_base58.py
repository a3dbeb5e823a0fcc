"""Base58 (Bitcoin alphabet), the text form of Solana keys, addresses and blockhashes.

Decoding here rather than through solders lets the policy check a 402's addresses
without loading solders, and lets key parsing say what is wrong with a key's shape
(length, alphabet) without a library message that might quote it.
"""

from __future__ import annotations

import functools
import re

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {ch: i for i, ch in enumerate(ALPHABET)}
# A 32-byte value is 32 to 44 characters; a 64-byte one at most 88. Anything longer is
# refused before the quadratic big-integer arithmetic below runs on it.
MAX_ENCODED = 90
_PUBKEY_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,44}\Z")


def b58decode(text: str) -> bytes:
    """The bytes ``text`` encodes; ValueError (naming no input) for anything else."""
    if not isinstance(text, str) or not text or len(text) > MAX_ENCODED:
        raise ValueError("not base58: empty or too long")
    number = 0
    for ch in text:
        digit = _INDEX.get(ch)
        if digit is None:
            raise ValueError("not base58: a character outside the base58 alphabet")
        number = number * 58 + digit
    # Each leading '1' stands for one leading zero byte.
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * zeros + body


def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(ALPHABET[digit])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(digits))


def is_pubkey(value: object) -> bool:
    """True for a base58 string that decodes to exactly 32 bytes (any Solana address).

    Base58 has one spelling per byte string (leading '1's are the zero bytes, then no
    leading zero digit), so two different strings never name the same key.
    """
    return isinstance(value, str) and _is_pubkey_text(value)


@functools.lru_cache(maxsize=1024)
def _is_pubkey_text(text: str) -> bool:
    # Cached: the same payTo, fee payer and mint come with every 402, and the decode is
    # big-integer arithmetic in Python. Bounded, as the values come from the gateway.
    return _PUBKEY_RE.match(text) is not None and len(b58decode(text)) == 32
