"""``python -m blockrun_proxy.testing``: run the fake gateway as its own process.

Benchmarks start it this way so its CPU is not the proxy's. It prints one line,
``listening on <base url>``, once the socket is bound, then serves until
SIGINT/SIGTERM. ``--rail solana`` plays the Solana gateway (its RPC under
``<base url>/v1/solana/rpc``); ``--rail apikey`` the API-key host, and prints a
second line, ``api key <key>``, with a key of unlimited credit.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from blockrun_proxy.testing._apikey import ApiKeyFakeGateway
from blockrun_proxy.testing._gateway import DEFAULT_NETWORK, DEFAULT_PAY_TO, FakeGateway
from blockrun_proxy.testing._ledger import UsdcLedger
from blockrun_proxy.testing._networks import NETWORKS
from blockrun_proxy.testing._solana import (
    DEFAULT_SOLANA_NETWORK,
    DEFAULT_SOLANA_PAY_TO,
    SOLANA_USDC,
    SolanaFakeGateway,
)
from blockrun_proxy.testing._upto import UptoMode
from blockrun_proxy.testing._verify import VERIFY_MODES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blockrun_proxy.testing", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8402, help="0 picks a free port")
    p.add_argument("--rail", default="base", choices=("base", "solana", "apikey"))
    p.add_argument(
        "--network",
        default=None,
        choices=sorted([*NETWORKS, *SOLANA_USDC]),
        help=f"default: {DEFAULT_NETWORK} (base), {DEFAULT_SOLANA_NETWORK} (solana)",
    )
    p.add_argument("--pay-to", default=None)
    p.add_argument("--verify", default="eth_account", choices=VERIFY_MODES)
    p.add_argument("--stream-events", type=int, default=20)
    p.add_argument("--event-interval", type=float, default=0.0, help="seconds between SSE events")
    p.add_argument("--event-size", type=int, default=None, help="pad each SSE piece to ~N bytes")
    p.add_argument(
        "--no-settle-amount",
        action="store_true",
        help="omit amount from PAYMENT-RESPONSE, as the real gateway sometimes does",
    )
    p.add_argument(
        "--job-polls",
        type=int,
        default=2,
        help="polls a video/music/slow-image job answers 202 before it completes",
    )
    p.add_argument(
        "--speech-format",
        default="json",
        choices=("json", "audio"),
        help="/v1/audio/speech answers BlockRun's JSON (a hosted URL) or the audio bytes",
    )
    p.add_argument(
        "--upto",
        action="store_true",
        help="base: also offer the upto scheme (verified by the official x402 facilitator code)",
    )
    p.add_argument(
        "--upto-auto-fund",
        type=int,
        default=100_000_000,
        help="with --upto: atomic USDC (and Permit2 allowance) given to each new payer",
    )
    p.add_argument(
        "--upto-gas-sponsoring",
        action="store_true",
        help="with --upto: declare the eip2612GasSponsoring extension",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="keep every request and payment in memory (off: nobody can read them here)",
    )
    return p


def _gateway(args: argparse.Namespace) -> FakeGateway:
    """The gateway the options describe; ValueError for options that do not fit."""
    options = {
        "stream_events": args.stream_events,
        "event_interval": args.event_interval,
        "event_size": args.event_size,
        "settle_amount_in_response": not args.no_settle_amount,
        "job_polls": args.job_polls,
        "speech_format": args.speech_format,
        "record": args.record,
    }
    if args.rail == "solana":
        return SolanaFakeGateway(
            args.network or DEFAULT_SOLANA_NETWORK, args.pay_to or DEFAULT_SOLANA_PAY_TO, **options
        )
    if args.rail == "apikey":
        return ApiKeyFakeGateway(**options)
    network = args.network or DEFAULT_NETWORK
    upto = (
        UptoMode(
            UsdcLedger(network),
            gas_sponsoring=args.upto_gas_sponsoring,
            auto_fund=args.upto_auto_fund,
        )
        if args.upto
        else None
    )
    return FakeGateway(
        network=network,
        pay_to=args.pay_to or DEFAULT_PAY_TO,
        verify=args.verify,
        upto=upto,
        **options,
    )


async def _serve(args: argparse.Namespace) -> None:
    gateway = _gateway(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = await gateway.start(args.host, args.port)
    print(f"listening on {url}", flush=True)
    if isinstance(gateway, ApiKeyFakeGateway):
        print(f"api key {gateway.new_key()}", flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _gateway(args)  # fail fast on bad options
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
