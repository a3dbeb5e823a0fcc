"""``python -m bench.quotes``: what signing up front buys on agent traffic, and what a
signature costs.

1. Per workload (a 60-turn growing conversation, a 40-step tool loop, 60 random
   prompts of 10 to 10,000 characters; streamed and not) and price formula: the share
   of paid calls after the first 10 that took one upstream round trip, p50 latency of
   those calls with the quote model off ("cold": probe, then pay) and on ("warm"), and
   what was over-paid. Through a real proxy in front of a gateway in its own process
   (the fake, or one built from the official x402 SDK's resource server), answering
   every request ``--rtt-ms`` later, standing in for the network round trip.
2. The signer: microseconds per EIP-3009 signature, ours (precomputed domain,
   coincurve) against eth_account's ``sign_message(encode_typed_data(...))``, checked
   byte-identical.

``--scheme upto``: the same through a proxy paying upto (the fake gateway in upto mode,
its chain served by a fake JSON-RPC node as ``--rpc-url``, the wallet funded there): the
ceilings are signed up front from the same quotes, and what was paid is what the official
x402 facilitator code settled ("paid": the settled total against the exact prices of the
same calls). The official server offers no upto: its rows are skipped.

A few minutes with the defaults (``--quick``: one workload pass per formula at a shorter
round trip; ``--formula TEXT`` and ``--workload NAME`` measure only some rows). A command,
not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.config import Settings, usd_to_atomic
from blockrun_proxy.quotes import QuoteStats
from blockrun_proxy.server import running
from blockrun_proxy.testing._models import PRICING_SHAPES
from blockrun_proxy.testing.workloads import WORKLOADS, bodies
from blockrun_proxy.x402 import Signer

NETWORK = "eip155:84532"
# The proxy answers only JSON POSTs (a browser cannot send one without asking).
JSON_HEADERS = {"Content-Type": "application/json"}
ROOT = Path(__file__).resolve().parents[1]
WARM_UP = 10  # paid calls of a model before the share is counted
COST_HEADER = "x-blockrun-cost-usd"
CEILING_HEADER = "x-blockrun-ceiling-usd"
FUNDS = 10**12  # the wallet's USDC and Permit2 allowance on the fake chain (--scheme upto)


@dataclass(frozen=True)
class Formula:
    """One row group: how the gateway prices, and what the proxy is told."""

    label: str
    shape: str
    model: str
    gateway: str = "fake"  # or "official": the x402 SDK's resource server
    tolerance_usd: Decimal = Decimal(0)
    publish_prices: bool = True


FORMULAS = (
    Formula("only max_tokens", "max_tokens", "openai/gpt-5.5"),
    Formula("chars/4 + 4/msg, $0.15/$0.60", "chars", "openai/gpt-4o-mini"),
    Formula("catalogue prices, BlockRun estimate", "catalogue", "google/gemini-2.5-pro"),
    Formula(
        "chars/4 + 4/msg, no catalogue prices",
        "chars",
        "openai/gpt-4o-mini",
        publish_prices=False,
    ),
    Formula(
        "re-serialised JSON, tolerance $0.0001",
        "reserialised",
        "openai/gpt-4o-mini",
        tolerance_usd=Decimal("0.0001"),
    ),
    Formula(
        "re-serialised JSON, tolerance $0.001",
        "reserialised",
        "openai/gpt-4o-mini",
        tolerance_usd=Decimal("0.001"),
    ),
    Formula(
        "official x402 server, chars/4 + 4/msg", "chars", "openai/gpt-4o-mini", gateway="official"
    ),
)


# --- the gateway, in its own process ----------------------------------------------------------


async def serve_gateway(args: argparse.Namespace) -> None:
    shape = PRICING_SHAPES[args.shape]
    delay = args.rtt_ms[0] / 1000
    gateway: Any
    rpc: Any = None
    if args.gateway == "official":
        from blockrun_proxy.testing.official import OfficialGateway

        gateway = OfficialGateway(shape.models, shape.price, delay_seconds=delay)
    else:
        from blockrun_proxy.testing import FakeGateway, FakeRpc, UptoMode, UsdcLedger
        from blockrun_proxy.x402 import PERMIT2_ADDRESS

        upto = None
        if args.upto_wallet:
            ledger = UsdcLedger(NETWORK)
            ledger.fund(args.upto_wallet, usdc=FUNDS)
            ledger.approve(args.upto_wallet, PERMIT2_ADDRESS, FUNDS)
            upto = UptoMode(ledger)
            rpc = FakeRpc(ledger)
        gateway = FakeGateway(
            network=NETWORK,
            models=shape.models,
            pricing=shape.price,
            verify="fast",
            record=False,
            publish_prices=not args.no_prices,
            upto=upto,
        )
        gateway.misbehave.delay_seconds = delay
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = await gateway.start("127.0.0.1", 0)
    rpc_url = await rpc.start() if rpc is not None else "-"
    print(f"listening on {url} {rpc_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.close()
        if rpc is not None:
            await rpc.close()


@contextlib.contextmanager
def gateway_process(
    formula: Formula, rtt_ms: float, upto_wallet: str | None = None
) -> Iterator[tuple[str, str | None]]:
    """The gateway's URL, and its chain's JSON-RPC URL when it offers upto."""
    args = [
        sys.executable,
        "-m",
        "bench.quotes",
        "--serve-gateway",
        "--rtt-ms",
        str(rtt_ms),
        "--shape",
        formula.shape,
        "--gateway",
        formula.gateway,
    ]
    if not formula.publish_prices:
        args.append("--no-prices")
    if upto_wallet is not None:
        args += ["--upto-wallet", upto_wallet]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"gateway did not start: {line!r}")
        url, rpc_url = line.split()[-2:]
        yield url, None if rpc_url == "-" else rpc_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- the proxy and the client -----------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """How the proxy pays: the scheme, and for upto the wallet funded on the fake chain."""

    scheme: str = "exact"
    # Throwaway under exact: the gateways are not a chain.
    wallet_key: str = field(default_factory=lambda: "0x" + secrets.token_hex(32))
    rpc_url: str | None = None


@contextlib.asynccontextmanager
async def proxy(
    api_url: str, *, presign: bool, tolerance: Decimal, payment: Payment
) -> AsyncIterator[tuple[str, QuoteStats]]:
    settings = Settings(
        port=0,
        api_url=api_url,
        networks=(NETWORK,),
        wallet_key=payment.wallet_key,
        scheme=payment.scheme,
        rpc_url=payment.rpc_url,
        presign=presign,
        presign_tolerance_usd=tolerance,
        state_dir=None,  # each run starts cold
    )
    async with running(settings) as (runner, port):
        yield f"http://127.0.0.1:{port}/v1/chat/completions", runner.app[CORE_KEY].quotes.stats


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    round_trips: list[int] = field(default_factory=list)
    overpaid: list[int] = field(default_factory=list)  # signed (the ceiling) - the price
    paid: list[int] = field(default_factory=list)  # the cost reported (upto: settled)
    priced: list[int] = field(default_factory=list)  # the gateway's price of each call

    def share(self) -> float:
        after = self.round_trips[WARM_UP:]
        return sum(1 for n in after if n == 1) / len(after)

    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms[WARM_UP:])


async def run_workload(
    api_url: str, formula: Formula, workload: str, *, presign: bool, payment: Payment
) -> Run:
    shape = PRICING_SHAPES[formula.shape]
    spec = {m.id: m for m in shape.models}[formula.model]
    run = Run()
    async with (
        proxy(api_url, presign=presign, tolerance=formula.tolerance_usd, payment=payment) as (
            url,
            stats,
        ),
        aiohttp.ClientSession() as session,
    ):
        for body in bodies(workload, formula.model):
            before = (stats.hits, stats.misses, stats.probed)
            started = time.perf_counter()
            async with session.post(url, data=orjson.dumps(body), headers=JSON_HEADERS) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"paid call failed: {resp.status}")
                cost = resp.headers[COST_HEADER]
                signed = resp.headers.get(CEILING_HEADER, cost)
            run.latencies_ms.append((time.perf_counter() - started) * 1000)
            # A presign accepted is one request; a probe and its payment two; a presign
            # refused as not used, then the probe and the payment, three.
            hits, misses, probed = stats.hits, stats.misses, stats.probed
            if hits > before[0]:
                run.round_trips.append(1)
            else:
                run.round_trips.append(2 + (misses - before[1]))
            assert probed >= before[2]
            price = shape.price(spec, body)
            run.overpaid.append(usd_to_atomic(Decimal(signed)) - price)
            run.paid.append(usd_to_atomic(Decimal(cost)))
            run.priced.append(price)
    return run


@dataclass
class Row:
    workload: str
    formula: Formula
    warm: Run
    cold: Run | None


async def measure(
    formula: Formula, workload: str, rtt_ms: float, cold: bool, scheme: str = "exact"
) -> Row:
    payment = Payment(scheme)
    wallet = Signer(payment.wallet_key).address if scheme != "exact" else None
    with gateway_process(formula, rtt_ms, wallet) as (api_url, rpc_url):
        payment = dataclasses.replace(payment, rpc_url=rpc_url)
        warm = await run_workload(api_url, formula, workload, presign=True, payment=payment)
        off = None
        if cold:
            off = await run_workload(api_url, formula, workload, presign=False, payment=payment)
    return Row(workload, formula, warm, off)


def table(rows: Sequence[Row], scheme: str = "exact") -> str:
    signed = "ceiling over the price" if scheme == "upto" else "over-paid"
    lines = [
        "| workload | formula | one round trip (after 10 calls) | p50 cold ms | p50 warm ms "
        f"| {signed} (max per call) |" + (" paid / exact price |" if scheme == "upto" else ""),
        "|---|---|---|---|---|---|" + ("---|" if scheme == "upto" else ""),
    ]
    for row in rows:
        over, most = sum(row.warm.overpaid), max(row.warm.overpaid)
        cold = f"{row.cold.p50_ms():.0f}" if row.cold is not None else "-"
        after = row.warm.round_trips[WARM_UP:]
        line = (
            f"| {row.workload} | {row.formula.label} | {row.warm.share():.0%} "
            f"({sum(1 for n in after if n == 1)}/{len(after)}) | {cold} "
            f"| {row.warm.p50_ms():.0f} | {over} uUSDC ({most}) |"
        )
        if scheme == "upto":
            paid, priced = sum(row.warm.paid), sum(row.warm.priced)
            line += f" {paid / priced:.0%} |"
        lines.append(line)
    return "\n".join(lines)


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
    rtt = args.rtt_ms[0]
    print(
        f"paid calls through the proxy, each gateway in its own process answering {rtt:g} ms "
        f"late;\nshare and p50 over the calls after the first {WARM_UP} of each workload\n",
        flush=True,
    )
    rows = []
    formulas = [
        f
        for f in FORMULAS
        if (args.scheme == "exact" or f.gateway == "fake") and args.formula in f.label
    ]
    for workload in args.workload or WORKLOADS:
        for formula in formulas:
            row = await measure(formula, workload, rtt, not args.quick, args.scheme)
            rows.append(row)
            print(table(rows[-1:], args.scheme).splitlines()[-1], flush=True)
    print()
    print(table(rows, args.scheme))
    fast, header_us, reference = bench_signer(args.signatures)
    print(
        f"\nsigner: {fast:.1f} us per signature ({header_us:.1f} us with the PAYMENT-SIGNATURE "
        f"header), eth_account {reference:.1f} us: {reference / fast:.0f}x faster, "
        "byte-identical"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quotes", description=__doc__)
    parser.add_argument("--rtt-ms", type=float, nargs=1, default=[50.0])
    parser.add_argument("--quick", action="store_true", help="no cold runs")
    parser.add_argument("--signatures", type=int, default=2000)
    parser.add_argument("--scheme", choices=("exact", "upto"), default="exact")
    parser.add_argument(
        "--formula", default="", help="only the formulas whose label contains this text"
    )
    parser.add_argument(
        "--workload", action="append", choices=list(WORKLOADS), help="only these (repeatable)"
    )
    parser.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", default="fake", help=argparse.SUPPRESS)
    parser.add_argument("--no-prices", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upto-wallet", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_gateway:
        asyncio.run(serve_gateway(args))
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
