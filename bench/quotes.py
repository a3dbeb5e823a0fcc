"""``python -m bench.quotes``: what signing up front buys, and what a signature costs.

1. Paid-call latency (sequential, p50/p90) and throughput (concurrent calls/s)
   through a real proxy in front of the fake gateway, cold (probe, then pay:
   two round trips) against warm (the quote model signs the first request), in
   the same run. The gateway runs in its own process (``--verify fast``) so its
   CPU is not the proxy's; ``--rtt-ms`` makes it answer every request that much
   later, standing in for the network round trip to the real gateway.
2. The signer: microseconds per EIP-3009 signature, ours (precomputed domain,
   coincurve) against eth_account's ``sign_message(encode_typed_data(...))``,
   checked byte-identical.

Bounded: about 30 s with the defaults. A command, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from blockrun_proxy.app import QUOTES_KEY
from blockrun_proxy.config import Settings
from blockrun_proxy.quotes import QuoteStats
from blockrun_proxy.server import running

NETWORK = "eip155:84532"
MODEL = "openai/gpt-5.5"
JSON_HEADERS = {"Content-Type": "application/json"}
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge".split()  # noqa: SIM905
MAX_TOKENS = (16, 32, 50, 64, 100, 128, 256, 300, 512, 1000, 1024, 2048, 4000)
WARM_UP_CALLS = 40
ROOT = Path(__file__).resolve().parents[1]


def body(rng: random.Random) -> bytes:
    content = " ".join(rng.choices(WORDS, k=rng.randint(1, 120)))
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": rng.choice(MAX_TOKENS),
        }
    )


# --- the gateway, in its own process ----------------------------------------------------------


async def serve_gateway(port: int, delay: float) -> None:
    from blockrun_proxy.testing import FakeGateway

    gateway = FakeGateway(network=NETWORK, verify="fast", record=False)
    gateway.misbehave.delay_seconds = delay
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = await gateway.start("127.0.0.1", port)
    print(f"listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.close()


@contextlib.contextmanager
def gateway_process(rtt_ms: float) -> Any:
    args = [sys.executable, "-m", "bench.quotes", "--serve-gateway", "--rtt-ms", str(rtt_ms)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake gateway did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- the proxy and the client -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def proxy(api_url: str, *, presign: bool) -> AsyncIterator[tuple[str, QuoteStats]]:
    settings = Settings(
        port=0,
        api_url=api_url,
        networks=(NETWORK,),
        wallet_key="0x" + secrets.token_hex(32),  # throwaway: the fake gateway is not a chain
        presign=presign,
    )
    async with running(settings) as (runner, port):
        yield f"http://127.0.0.1:{port}/v1/chat/completions", runner.app[QUOTES_KEY].stats


async def call(session: aiohttp.ClientSession, url: str, data: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=data, headers=JSON_HEADERS) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"paid call failed: {resp.status}")
    return time.perf_counter() - started


@dataclass
class Result:
    p50_ms: float
    p90_ms: float
    calls_per_s: float
    upstream_per_call: float


async def measure(
    api_url: str, *, warm: bool, calls: int, concurrency: int, seconds: float
) -> Result:
    async with (
        proxy(api_url, presign=warm) as (url, stats),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
    ):
        rng = random.Random(0)
        for _ in range(WARM_UP_CALLS):  # both modes see the same traffic first
            await call(session, url, body(rng))
        before = _upstream(stats)
        latencies = [await call(session, url, body(rng)) for _ in range(calls)]
        upstream = (_upstream(stats) - before) / calls
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(seed: int) -> None:
            nonlocal done
            local = random.Random(seed)
            while time.perf_counter() < deadline:
                await call(session, url, body(local))
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Result(
        statistics.median(latencies) * 1000,
        latencies[int(0.9 * (len(latencies) - 1))] * 1000,
        done / elapsed,
        upstream,
    )


def _upstream(stats: QuoteStats) -> int:
    # A presign is one request; a probe-then-pay is two (a refused presign counts both).
    return stats.presigned + 2 * stats.probed


# --- the signer ---------------------------------------------------------------------------------


def bench_signer(rounds: int) -> tuple[float, float, float]:
    """(ours, ours with the whole header, eth_account) in microseconds per signature."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    from blockrun_proxy.x402 import NETWORKS, Authorization, Requirement, Signer, sign_payment

    key = secrets.token_bytes(32)
    signer = Signer(key)
    network = NETWORKS[NETWORK]
    auths = [
        Authorization(signer.address, signer.address, 1000 + i, 0, 2**40, secrets.token_bytes(32))
        for i in range(rounds)
    ]
    started = time.perf_counter()
    ours = [signer.sign_transfer(network, a) for a in auths]
    fast = (time.perf_counter() - started) / rounds * 1e6

    raw = {
        "scheme": "exact",
        "network": NETWORK,
        "amount": "1000",
        "asset": network.usdc,
        "payTo": signer.address,
        "maxTimeoutSeconds": 300,
        "extra": {"name": network.domain_name, "version": network.domain_version},
    }
    requirement = Requirement("exact", NETWORK, 1000, network.usdc, signer.address, 300, {}, raw)
    started = time.perf_counter()
    for _ in range(rounds):
        sign_payment(signer, requirement, network, {"url": "https://x/api"}, now=int(time.time()))
    header = (time.perf_counter() - started) / rounds * 1e6

    sample = auths[: max(1, rounds // 10)]
    started = time.perf_counter()
    theirs = [
        Account.sign_message(encode_typed_data(full_message=_typed(network, a)), key).signature
        for a in sample
    ]
    reference = (time.perf_counter() - started) / len(sample) * 1e6
    for mine, other in zip(ours, theirs, strict=False):
        if bytes.fromhex(mine[2:]) != bytes(other):
            raise AssertionError("fast signer and eth_account disagree")
    return fast, header, reference


def _typed(network: Any, auth: Any) -> dict[str, Any]:
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": network.domain_name,
            "version": network.domain_version,
            "chainId": network.chain_id,
            "verifyingContract": network.usdc,
        },
        "message": {
            "from": auth.from_,
            "to": auth.to,
            "value": auth.value,
            "validAfter": auth.valid_after,
            "validBefore": auth.valid_before,
            "nonce": auth.nonce,
        },
    }


# --- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    print(
        f"paid calls through the proxy to the fake gateway ({MODEL}, verify=fast): "
        f"{WARM_UP_CALLS} warm-up calls per mode,\nthen {args.calls} sequential for latency "
        f"and {args.seconds:g} s at concurrency {args.concurrency} for throughput\n"
    )
    header = (
        f"{'rtt':>6} {'mode':>5} {'p50 ms':>8} {'p90 ms':>8} {'calls/s':>8} {'upstream/call':>14}"
    )
    print(header)
    for rtt in args.rtt_ms:
        with gateway_process(rtt) as api_url:
            results = {}
            for mode in ("cold", "warm"):
                results[mode] = await measure(
                    api_url,
                    warm=mode == "warm",
                    calls=args.calls,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                )
                r = results[mode]
                print(
                    f"{rtt:>4g}ms {mode:>5} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} "
                    f"{r.calls_per_s:>8.1f} {r.upstream_per_call:>14.2f}"
                )
            cold, warm = results["cold"], results["warm"]
            print(
                f"{'':>6} ratio  latency cold/warm {cold.p50_ms / warm.p50_ms:.2f}x, "
                f"throughput warm/cold {warm.calls_per_s / cold.calls_per_s:.2f}x"
            )
    fast, header_us, reference = bench_signer(args.signatures)
    print(
        f"\nsigner: {fast:.1f} us per signature ({header_us:.1f} us with the PAYMENT-SIGNATURE "
        f"header), eth_account {reference:.1f} us: {reference / fast:.0f}x faster, "
        "byte-identical"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quotes", description=__doc__)
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--calls", type=int, default=60, help="sequential calls per mode")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput run per mode")
    parser.add_argument("--signatures", type=int, default=2000)
    parser.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_gateway:
        asyncio.run(serve_gateway(args.port, args.rtt_ms[0] / 1000))
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
