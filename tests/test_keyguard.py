"""The key lives in the proxy's memory only (issue 9, finding 8): not in /proc/<pid>/environ
once read, not in a core dump, not in a --workers child's environment."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from solders.keypair import Keypair
from support.calls import FRACTIONAL_MODEL, JSON, TEST_NETWORK
from support.process import ProxyProcess
from support.servers import WORKTREE, free_port, proxy_environ

from blockrun_proxy import keyguard
from blockrun_proxy.config import SECRET_ENVS
from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.x402.svm._base58 import b58encode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")

CHAT = orjson.dumps(
    {"model": FRACTIONAL_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway(network=TEST_NETWORK)
    await gw.start()
    yield gw
    await gw.close()


def secret_env(tmp_path: Path, key: str, token: str) -> dict[str, str]:
    # Every secret variable, the ones not used included: all of them must go.
    return proxy_environ(
        tmp_path,
        BLOCKRUN_WALLET_KEY=key,
        BASE_CHAIN_WALLET_KEY="0x" + secrets.token_hex(32),
        BLOCKRUN_SOLANA_KEY=b58encode(bytes(Keypair())),
        BLOCKRUN_API_KEY="brk_" + secrets.token_hex(16),
        BLOCKRUN_PROXY_TOKEN=token,
    )


def secret_values(env: dict[str, str]) -> list[str]:
    return [value for name, value in env.items() if name in SECRET_ENVS]


def assert_no_secrets(pid: int, *values: str) -> None:
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    for value in values:
        assert value.encode() not in environ
        assert value.removeprefix("0x").encode() not in environ
    for entry in environ.split(b"\0"):
        assert not entry.startswith(tuple(f"{name}=".encode() for name in SECRET_ENVS)), entry


def assert_not_on_the_command_line(pid: int, *values: str) -> None:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    for value in values:
        assert value.removeprefix("0x").encode() not in cmdline


def pipes_beyond_stdio(pid: int) -> list[int]:
    targets = {int(fd.name): os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    return [fd for fd, target in targets.items() if fd > 2 and target.startswith("pipe:")]


def core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]  # the soft limit
    raise AssertionError("no core limit line")


async def paid_call(base_url: str, token: str) -> None:
    headers = {**JSON, "Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + "/chat/completions", data=CHAT, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.read()


async def test_a_served_proxy_keeps_its_secrets_in_memory_only(tmp_path, gateway, wallet_key):
    token = secrets.token_hex(16)
    env = secret_env(tmp_path, wallet_key, token)
    # Every secret is set; --rail wallet pays with the wallet although an API key is set.
    proxy = await ProxyProcess.start(
        "--port", "0", "--api-url", gateway.base_url, "--networks", TEST_NETWORK,
        "--rail", "wallet", env=env,
    )  # fmt: skip
    try:
        await paid_call(proxy.base_url, token)  # the key is loaded: it signs
        pid = proxy.proc.pid
        assert_no_secrets(pid, *secret_values(env))
        assert core_limit(pid) == "0"
        (protection,) = [line for line in proxy.lines if "dumpable" in line]
        assert protection["dumpable"] is False  # prctl(PR_GET_DUMPABLE) said 0
    finally:
        proxy.signal()
        await proxy.wait(timeout=20)
    assert len(gateway.settled) == 1
    assert not any(wallet_key.removeprefix("0x").encode() in raw for raw in proxy.raw)


async def test_workers_get_the_secrets_through_a_pipe_not_their_environment(
    tmp_path, gateway, wallet_key
):
    token = secrets.token_hex(16)
    port = free_port()
    env = secret_env(tmp_path, wallet_key, token)
    proxy = await ProxyProcess.start(
        "--workers", "2", "--port", str(port), "--api-url", gateway.base_url,
        "--networks", TEST_NETWORK, "--rail", "wallet", env=env, listeners=2,
    )  # fmt: skip
    try:
        children = {line["pid"] for line in proxy.lines if "url" in line}
        assert len(children) == 2
        for pid in (proxy.proc.pid, *children):
            assert_no_secrets(pid, *secret_values(env))
            assert core_limit(pid) == "0"
            assert_not_on_the_command_line(pid, *secret_values(env))
        for pid in children:
            assert pipes_beyond_stdio(pid) == []  # the secrets pipe was read once and closed
        protections = [line for line in proxy.lines if "dumpable" in line]
        assert [line["dumpable"] for line in protections] == [False, False]
        for _ in range(4):
            await paid_call(f"http://127.0.0.1:{port}/v1", token)  # each child can sign
    finally:
        proxy.signal()
        await proxy.wait(timeout=30)
    assert len(gateway.settled) == 4


async def test_abort_with_unlimited_core_size_writes_no_core_file(tmp_path, wallet_key):
    """SIGABRT with `ulimit -c unlimited` wrote a 47 MB core with the key in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    port = free_port()
    env = proxy_environ(tmp_path, BLOCKRUN_WALLET_KEY=wallet_key)
    command = f"ulimit -c unlimited && exec {sys.executable} -m blockrun_proxy serve --port {port}"
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", command, cwd=cwd, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            for attempt in range(400):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert attempt < 399 and proc.returncode is None, "the proxy never started"
                await asyncio.sleep(0.05)
        assert core_limit(proc.pid) == "0"
        proc.send_signal(signal.SIGABRT)
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGABRT
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert [p.name for p in cwd.iterdir()] == []


def test_scrub_removes_values_from_proc_environ_and_from_children(tmp_path):
    value = secrets.token_hex(24)
    code = (
        "import os, subprocess, sys\n"
        "from blockrun_proxy.keyguard import scrub_environ\n"
        "os.environ['SET_LATER'] = 'later'\n"  # a setenv() string: not in the exec block
        "scrub_environ(('X_SECRET', 'SET_LATER', 'NOT_THERE'))\n"
        "proc = open('/proc/self/environ', 'rb').read()\n"
        "child = subprocess.run(['cat', '/proc/self/environ'], capture_output=True).stdout\n"
        "print(repr((proc, child, 'X_SECRET' in os.environ, os.environ.get('KEEP'))))\n"
    )
    env = {"PYTHONPATH": str(WORKTREE), "X_SECRET": value, "KEEP": "kept", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True
    ).stdout
    proc_environ, child_environ, still_there, kept = eval(out)  # our own repr()
    assert value.encode() not in proc_environ and b"X_SECRET" not in proc_environ
    assert value.encode() not in child_environ and b"SET_LATER" not in child_environ
    assert not still_there
    assert kept == "kept"


def test_forbid_core_dumps_makes_the_process_non_dumpable():
    code = (
        "import ctypes, resource\n"
        "from blockrun_proxy.keyguard import forbid_core_dumps\n"
        "print(forbid_core_dumps(), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),"
        " resource.getrlimit(resource.RLIMIT_CORE)[0])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert out.stdout.split() == [b"True", b"0", b"0"]


def test_secrets_travel_whole_through_the_pipe():
    sent = keyguard.Secrets("$BLOCKRUN_WALLET_KEY", "0x" + "ab" * 32, "t" * 40, "sol", "brk_x")
    fd = keyguard.send_secrets(sent)
    with os.fdopen(fd, "rb") as pipe:
        got = keyguard.Secrets.from_pipe(pipe.read())
    assert (got.wallet_key, got.token, got.solana_key, got.api_key) == (
        sent.wallet_key,
        sent.token,
        sent.solana_key,
        sent.api_key,
    )
    assert "ab" * 32 not in repr(got)
    with pytest.raises(ValueError, match="unreadable"):
        keyguard.Secrets.from_pipe(b"not json")
