"""``wallet create``: a new key in blockrun-llm's wallet file, readable by its owner only.

The same file and format as ``blockrun_llm.wallet.save_wallet`` (``~/.blockrun/.session``,
``0x`` + 64 hex digits, mode 0600), so the proxy, the blockrun-llm SDK and BlockRun's
other tools share one wallet. Unlike ``save_wallet`` it never overwrites: the file is
opened with O_EXCL and mode 0600 in one call, so there is no moment where a key sits in
a file with the umask's permissions, and an existing (possibly funded) wallet is never
replaced. The key is generated with the OS CSPRNG and never printed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from blockrun_proxy.x402 import Signer

# secp256k1 group order: a private key is an integer in [1, n).
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class WalletExists(Exception):
    """A wallet file is already there; nothing was written."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"a wallet already exists at {path}; refusing to overwrite it")
        self.path = path


def new_secret() -> bytes:
    """32 random bytes that are a valid secp256k1 private key."""
    while True:
        secret = secrets.token_bytes(32)
        if 0 < int.from_bytes(secret, "big") < _SECP256K1_N:
            return secret


def create_wallet_file(path: Path, *, guard: tuple[Path, ...] = ()) -> str:
    """Write a new key to ``path`` (mode 0600) and return its address.

    ``guard``: other wallet files whose presence also refuses (blockrun-llm's legacy
    ``wallet.key``: a new ``.session`` would silently take precedence over it).
    Raises WalletExists, or OSError when the file cannot be written.
    """
    for existing in (path, *guard):
        if existing.exists():
            raise WalletExists(existing)
    secret = new_secret()
    address = Signer(secret).address
    # Only a directory we create gets 0700; an existing ~/.blockrun keeps its mode.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created between the check and here
        raise WalletExists(path) from None
    with os.fdopen(fd, "w") as handle:
        handle.write("0x" + secret.hex())
    return address
