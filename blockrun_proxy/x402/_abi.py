"""The few pieces of Ethereum ABI/EIP-712 encoding the signer needs, done by hand.

eth_abi/eth_account take about a second to import and a few hundred microseconds per
typed-data signature; every value we encode is a fixed-size word, so plain bytes
arithmetic is enough and keeps the hot path (and startup) cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

UINT256_MAX = (1 << 256) - 1

# "0x" + 40 hex digits, any case. The checksum (EIP-55) is not required on input:
# gateways and configs send lowercase addresses too.
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")


_keccak_new: Callable[..., Any] | None = None


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 (the pre-standard padding, not SHA3-256)."""
    global _keccak_new
    if _keccak_new is None:
        # Imported on first use, not at startup: pycryptodome loads its C code through
        # cffi, whose C-declaration parser costs 40-60 ms before the port could listen.
        # server.py warms it up in a thread once the port is open.
        from Crypto.Hash import keccak

        _keccak_new = keccak.new
    return bytes(_keccak_new(digest_bits=256, data=data).digest())


def is_address(value: object) -> bool:
    """True for a string shaped like an EVM address (0x + 40 hex digits)."""
    return isinstance(value, str) and _ADDRESS_RE.match(value) is not None


def address_bytes(addr: str) -> bytes:
    """The 20 bytes of a 0x-hex address; ValueError for anything else."""
    if not is_address(addr):
        raise ValueError(f"not an EVM address: {addr!r}")
    return bytes.fromhex(addr[2:])


def address_word(addr: str) -> bytes:
    """An address as an ABI word: left-padded to 32 bytes."""
    return b"\x00" * 12 + address_bytes(addr)


def uint_word(value: int) -> bytes:
    """A uint256 as an ABI word (big-endian, 32 bytes); ValueError if out of range."""
    if isinstance(value, bool) or not 0 <= value <= UINT256_MAX:
        raise ValueError(f"uint256 out of range: {value!r}")
    return value.to_bytes(32, "big")


def checksum_address(addr: str) -> str:
    """EIP-55 mixed-case form of an address (input in any case)."""
    lower = address_bytes(addr).hex()
    hashed = keccak256(lower.encode("ascii")).hex()
    # A letter is upper-cased where the matching nibble of the hash is >= 8.
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(h, 16) >= 8 else ch
        for ch, h in zip(lower, hashed[:40], strict=True)
    )
