"""Where the wallet key may live: in this process's memory, and nowhere else.

``serve`` reads the key (and the other secrets: a Solana key, an API key, the proxy
token) once, then:

- removes ``BLOCKRUN_WALLET_KEY``, ``BASE_CHAIN_WALLET_KEY``, the Solana key and API key
  variables and ``BLOCKRUN_PROXY_TOKEN`` from the environment (``config.SECRET_ENVS``).
  ``/proc/<pid>/environ`` shows the block of memory the kernel put the environment in at
  exec, not the live environment, so removing the variables is not enough: their values
  are zeroed in that block first (Linux);
- turns core dumps off: ``RLIMIT_CORE`` 0 and ``prctl(PR_SET_DUMPABLE, 0)`` (Linux), so
  a crash or a ``kill -ABRT`` writes no file with the key in it, and other processes of
  the same user cannot read this one's memory (``ptrace``, ``/proc/<pid>/mem``);
- hands the secrets to ``--workers`` children through a pipe: an inherited descriptor
  named by ``BLOCKRUN_PROXY_SECRETS_FD``, read once and closed, never their environment
  or command line.

Nothing here logs or raises with a secret in the message.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from blockrun_proxy import config

log = logging.getLogger(__name__)

# <linux/prctl.h>
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
# What a secrets pipe may carry: a key, a token and their names, far below a pipe's buffer
# (64 KiB on Linux), so the supervisor writes it whole before the child even starts.
MAX_SECRETS_BYTES = 16 * 1024
_LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True, slots=True)
class Secrets:
    """What ``serve`` must hold and nothing else may see: the wallet keys, the API key and
    the proxy token (each None when not configured)."""

    wallet_source: str
    wallet_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    solana_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)

    def to_pipe(self) -> bytes:
        return orjson.dumps({name: getattr(self, name) for name in _PIPED})

    @classmethod
    def from_pipe(cls, data: bytes) -> Secrets:
        try:
            fields = orjson.loads(data)
            values = {name: fields[name] for name in _PIPED}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise ValueError("the secrets pipe from the supervisor is unreadable") from None
        values["wallet_source"] = f"{values['wallet_source']} (from the supervisor)"
        return cls(**values)


_PIPED = ("wallet_source", "wallet_key", "token", "solana_key", "api_key")


def take_secrets(*, solana_keypair: Path | None = None) -> Secrets:
    """The secrets for ``serve``: from the supervisor's pipe when this is a ``--workers``
    child, else from the environment or the wallet files; then gone from the environment.
    ValueError (with no secret in it) for a pipe or a ``--solana-keypair`` that cannot be
    read."""
    fd = config.read_secrets_fd()
    if fd is not None:
        secrets = Secrets.from_pipe(_read_pipe(fd))
    else:
        key, source = config.read_wallet_key()
        solana_key, _ = config.read_solana_key(keypair=solana_keypair)
        secrets = Secrets(
            wallet_source=source,
            wallet_key=key,
            token=config.read_token(),
            solana_key=solana_key,
            api_key=config.read_api_key(),
        )
    scrub_environ((*config.SECRET_ENVS, config.SECRETS_FD_ENV))
    return secrets


def send_secrets(secrets: Secrets) -> int:
    """A pipe holding ``secrets``, its write end closed; returns the read end for a child
    (pass it in ``pass_fds`` and close it in the parent once the child started)."""
    data = secrets.to_pipe()
    if len(data) > MAX_SECRETS_BYTES:
        raise ValueError("the wallet key and token are too long to hand to the workers")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)  # fits the pipe's buffer: never blocks
    finally:
        os.close(write_end)
    return read_end


def _read_pipe(fd: int) -> bytes:
    try:
        with os.fdopen(fd, "rb") as pipe:
            return pipe.read(MAX_SECRETS_BYTES + 1)
    except OSError:
        raise ValueError("the secrets pipe from the supervisor is unreadable") from None


def scrub_environ(names: tuple[str, ...]) -> None:
    """Remove ``names`` from this process's environment, and their values from the memory
    ``/proc/<pid>/environ`` shows. Children started later inherit none of them."""
    present = [name for name in names if name in os.environ]
    if not present:
        return
    entries = _initial_entries({name.encode() for name in present}) if _LINUX else []
    for address, size, name_size in entries:
        ctypes.memset(address + name_size + 1, 0, size - name_size - 1)  # the value
    for name in present:
        os.environ.pop(name, None)  # unsetenv: the entries leave the live environment
    for address, size, _ in entries:
        ctypes.memset(address, 0, size)  # and now the names: nothing points there any more


def _initial_entries(names: set[bytes]) -> list[tuple[int, int, int]]:
    """(address, length, name length) of each ``NAME=value`` of ``names`` that lies in the
    environment block the kernel set up at exec. Strings a program set later with
    setenv() live elsewhere, and glibc may still hold them: those are left alone."""
    try:
        start, end = _environ_block()
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    except (OSError, ValueError):
        log.warning("could not locate the process environment; secrets may stay in it")
        return []
    found: list[tuple[int, int, int]] = []
    index = 0
    while True:
        address = environ[index]
        if not address:
            return found
        if start <= address < end:
            entry = ctypes.string_at(address)
            name = entry.split(b"=", 1)[0]
            if name in names:
                found.append((address, len(entry), len(name)))
        index += 1


def _environ_block() -> tuple[int, int]:
    """``env_start`` and ``env_end`` from ``/proc/self/stat`` (fields 50 and 51)."""
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return int(fields[50 - 3]), int(fields[51 - 3])


def forbid_core_dumps() -> bool:
    """No core file, and no memory readable by other processes of the same user.

    Only the soft core limit goes to 0 (the kernel honours the soft one): a child can
    still raise its own, which a test or a debugger may want. Returns whether the
    process is now non-dumpable (always False off Linux).
    """
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    if not _LINUX:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())
        return False
    return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
