"""The reference sidecar, blockrun-litellm 0.10.3, as a benchmark opponent.

What its installed source says (blockrun_litellm/proxy.py, _adapter.py, and
blockrun_llm 1.21.1's x402.py, validation.py, anthropic_client.py):

Command and flags
    Console script `blockrun-litellm-proxy` (blockrun_litellm.proxy:main), argparse:
    --host (127.0.0.1) --port (4001) --api-key (brk_live_..., the account rail)
    --chain {solana,base} (sets BLOCKRUN_CHAIN) --api-url URL (sets BLOCKRUN_API_URL)
    --log-level {critical,error,warning,info,debug,trace}. It then runs
    uvicorn("blockrun_litellm.proxy:app") with uvloop + httptools, one worker.
    Routes used here: GET /healthz (no upstream call), POST /v1/chat/completions,
    GET /v1/models.

Pointing it at another gateway
    --api-url http://127.0.0.1:G/api (or env BLOCKRUN_API_URL). The gateway URL
    wins over the chain default, which otherwise is *Solana* (sol.blockrun.ai)
    unless a Base wallet alone is configured. Chat goes to f"{api_url}/v1/chat/completions".
    The chain is sniffed from the URL: only a URL containing "sol.blockrun.ai" is Solana,
    so any loopback URL means the Base/EVM signer.
    Host validation: LLMClient() (built at startup to fail fast on credentials)
    calls validate_api_url(), which needs a scheme and host and demands https
    unless the host is exactly "localhost" or "127.0.0.1" ([::1] is refused).
    No check that the host is a blockrun.ai host; no check of the 402's resource URL.

Wallet
    BLOCKRUN_WALLET_KEY (or BASE_CHAIN_WALLET_KEY, or ~/.blockrun/.session),
    0x-prefixed 32-byte hex; validated at startup, exits 2 without one.
    BLOCKRUN_API_KEY must be unset (else the account rail, no x402 at all).
    Give it a private HOME so it never reads a real ~/.blockrun.

Networks it signs for
    blockrun_llm.x402.EVM_NETWORKS: eip155:8453 (Base, USDC domain "USD Coin"),
    eip155:84532 (Base Sepolia, domain "USDC"), eip155:5042 (Arc); alias
    "base-sepolia". The network comes from the 402 (first non-upto option in
    `accepts`), the EIP-712 domain from its own table; an unknown network or a
    non-USDC asset raises ValueError (nothing signed). So the fake gateway can
    quote eip155:84532 as it is: no need to quote Base mainnet. Only `exact` is
    signed on this path (upto-only 402s are refused).

How it pays and streams (the costs the bench measures)
    /v1/chat/completions is a verbatim passthrough: a *sync* httpx.Client with a
    signing transport (_BlockRunX402Transport wrapped in _SignedAmountTransport),
    called through Starlette's run_in_threadpool (anyio's 40-thread limiter) under
    an asyncio.Semaphore(BLOCKRUN_MAX_CONCURRENT=100). No quote cache: every paid
    call sends unpaid, gets the 402, signs with eth_account (EIP-712, no
    coincurve in its venv), and resends. Streams: the upstream is opened in a
    thread (semaphore held only for that), then StreamingResponse iterates the
    sync resp.iter_raw() generator, one thread hop per chunk; the httpx pool
    is the default 100 connections. Adds x-blockrun-cost-usd /
    x-litellm-response-cost / x-blockrun-settlement headers on paid calls.

Loopback operation (checked against a scratch x402 fake quoting eip155:84532):
    env -i PATH=... HOME=<private dir> BLOCKRUN_WALLET_KEY=0x<key> \\
        LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 \\
        <venv>/bin/blockrun-litellm-proxy --host 127.0.0.1 --port R \\
        --api-url http://127.0.0.1:G/api --log-level warning
    Free model: one upstream POST, 200 relayed. Paid model (stream or not): an
    unpaid POST -> 402 PAYMENT-REQUIRED, then a POST with PAYMENT-SIGNATURE whose
    signature recovers to the wallet address, `accepted.network` eip155:84532.
    LITELLM_LOCAL_MODEL_COST_MAP=True matters: importing litellm otherwise
    fetches its model price map from the internet. Under strace with it set,
    the only inet connect() was to the loopback gateway.
    Startup: imports dominate (litellm alone 5-10 s), then uvicorn: /healthz answers
    after 7 s (idle machine, warm cache) to 19 s (busy) on this 2-core machine;
    idle RSS about 225-230 MiB.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.procs import BENCH_WALLET_KEY, WORK_DIR, Service, child_env, spawn

REFERENCE_REQUIREMENT = "blockrun-litellm[proxy]==0.10.3"
REFERENCE_VENV = WORK_DIR / "ref-venv"
REFERENCE_SCRIPT = REFERENCE_VENV / "bin" / "blockrun-litellm-proxy"
REFERENCE_STAMP = REFERENCE_VENV / ".bench-requirement"
REFERENCE_READY_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 900.0


def reference_installed() -> bool:
    return (
        REFERENCE_SCRIPT.exists()
        and REFERENCE_STAMP.exists()
        and REFERENCE_STAMP.read_text().strip() == REFERENCE_REQUIREMENT
    )


def ensure_reference_venv(python: str = sys.executable) -> Path:
    """Create WORK_DIR/ref-venv with the pinned reference sidecar unless it is already there."""
    if reference_installed():
        return REFERENCE_SCRIPT
    REFERENCE_VENV.parent.mkdir(parents=True, exist_ok=True)
    if not (REFERENCE_VENV / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(REFERENCE_VENV)], check=True, timeout=120)
    subprocess.run(
        [str(REFERENCE_VENV / "bin" / "pip"), "install", "-q", REFERENCE_REQUIREMENT],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    REFERENCE_STAMP.write_text(REFERENCE_REQUIREMENT + "\n")
    return REFERENCE_SCRIPT


def reference_argv(port: int, api_url: str, log_level: str = "warning") -> list[str]:
    return [
        str(REFERENCE_SCRIPT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-url",
        api_url,
        "--log-level",
        log_level,
    ]


def reference_env(wallet_key: str = BENCH_WALLET_KEY) -> dict[str, str]:
    """Only what it needs: the wallet, a private HOME, and no internet fetch at import."""
    return child_env(
        {
            "BLOCKRUN_WALLET_KEY": wallet_key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "HF_HUB_OFFLINE": "1",
        },
        home=WORK_DIR / "ref-home",
    )


async def start_reference(
    *, port: int, api_url: str, wallet_key: str = BENCH_WALLET_KEY
) -> Service:
    """Start the reference sidecar against `api_url` and wait for its /healthz."""
    if not reference_installed():
        raise RuntimeError("reference venv missing: call ensure_reference_venv() first")
    return await spawn(
        "reference",
        reference_argv(port, api_url),
        port=port,
        env=reference_env(wallet_key),
        ready_timeout=REFERENCE_READY_TIMEOUT_S,
    )
