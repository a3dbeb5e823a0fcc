"""The command line as a user runs it: the README's demo command, and refusals at startup."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner

from blockrun_proxy.cli import main
from blockrun_proxy.server import DEMO_MODEL, DEMO_PROMPT, demo_prices
from blockrun_proxy.x402 import Signer, usd

README = Path(__file__).resolve().parents[1] / "README.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the proxy exited early"
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the proxy never became healthy")


@pytest.mark.parametrize(
    ("flags", "paid_with"),
    [
        ((), "a throwaway Base Sepolia wallet"),
        (("--chain", "solana"), "a throwaway Solana devnet wallet"),
        (("--rail", "apikey"), "a throwaway API key"),
    ],
    ids=["base", "solana", "apikey"],
)
def test_demo_serves_a_paid_stream_and_exits_cleanly_on_sigterm(
    flags: tuple[str, ...], paid_with: str
) -> None:
    """The README's demo commands, one per rail: offline, a paid streamed completion."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKRUN_")}
    command = ["serve", "--demo", *flags, "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockrun_proxy", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="openai/gpt-5.5",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text.strip()
        if "--rail" in flags:  # prepaid credit: no cost is reported, none is invented
            assert raw.headers["x-blockrun-cost-source"] == "none"
        else:
            assert float(raw.headers["x-blockrun-cost-usd"]) > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output.decode()
    assert b"Traceback" not in output
    assert paid_with.encode() in output
    assert f"blockrun-proxy {' '.join(command[:-2])}" in README.read_text()


def test_demo_with_upto_settles_the_actual_cost_and_shows_the_saving() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKRUN_")}
    args = ["serve", "--demo", "--scheme", "upto", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockrun_proxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=DEMO_MODEL, messages=[{"role": "user", "content": DEMO_PROMPT}]
        )
        exact, actual = demo_prices()
        assert raw.headers["x-blockrun-cost-usd"] == usd(actual)
        assert raw.headers["x-blockrun-ceiling-usd"] == usd(exact)
        assert raw.headers["x-blockrun-cost-source"] == "settled"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output.decode()
    assert f"saved ${usd(exact - actual)}".encode() in output


def test_upto_without_an_rpc_url_refuses_to_start() -> None:
    result = CliRunner().invoke(
        main, ["serve", "--scheme", "upto"], env={"BLOCKRUN_PROXY_RPC_URL": ""}
    )
    assert result.exit_code == 2
    assert "--scheme upto needs --rpc-url" in result.output


def test_refuses_a_public_host_without_a_token() -> None:
    result = CliRunner().invoke(
        main, ["serve", "--host", "0.0.0.0"], env={"BLOCKRUN_PROXY_TOKEN": ""}
    )
    assert result.exit_code == 2
    assert "without a token" in result.output


def test_invalid_wallet_key_is_refused_without_echoing_it() -> None:
    bad = "0x" + "zz" * 32
    result = CliRunner().invoke(main, ["serve"], env={"BLOCKRUN_WALLET_KEY": bad})
    assert result.exit_code != 0
    assert bad not in result.output and "zz" * 8 not in result.output


def test_address_prints_the_address_never_the_key() -> None:
    key = secrets.token_hex(32)
    result = CliRunner().invoke(main, ["address"], env={"BLOCKRUN_WALLET_KEY": key})
    assert result.exit_code == 0
    assert Signer(key).address in result.output
    assert key not in result.output


def test_starting_the_proxy_leaves_option_only_modules_unloaded() -> None:
    """Startup is measured: what only Solana (blockhash), ``--redis-url`` (budget_redis),
    ``--rpc-url`` (evm_rpc, allowance, the balance watcher) or the ``wallet`` subcommand
    need is imported where that option is known to be set, not at start; the quote book's
    solver (quotes.fit) at its first fit."""
    code = (
        "import sys, blockrun_proxy.cli, blockrun_proxy.server, blockrun_proxy.app\n"
        "lazy = ['blockhash', 'budget_redis', 'evm_rpc', 'allowance', 'wallet.cli',\n"
        "        'wallet.chain', 'wallet.approve', 'solana_payer', 'quotes.fit',\n"
        "        'wallet.watcher']\n"
        "print(sorted(m for m in lazy if 'blockrun_proxy.' + m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_app_opens_without_loading_keccak() -> None:
    """Keccak (pycryptodome, loaded through ctypes) is startup time: the wallet's address,
    which needs it, is derived and logged after the port is open (server.running), not
    while the app builds its payment core."""
    code = (
        "import asyncio, secrets, sys\n"
        "from aiohttp import web\n"
        "from blockrun_proxy.app import create_app\n"
        "from blockrun_proxy.config import Settings\n"
        "async def main():\n"
        "    settings = Settings(wallet_key='0x' + secrets.token_hex(32), state_dir=None)\n"
        "    runner = web.AppRunner(create_app(settings))\n"
        "    await runner.setup()\n"
        "    print('Crypto.Hash.keccak' in sys.modules)\n"
        "    await runner.cleanup()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
