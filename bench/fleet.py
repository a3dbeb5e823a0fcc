"""``python -m bench.fleet``: what the shared budget in Redis adds to a paid call.

Starts its own ``redis-server`` (Debian's binary; ``apt-get install -y redis-server``) on
a free loopback port, then measures:

1. The reservation alone: ``RedisBudgetStore.reserve`` (one Lua script, one round trip)
   sequentially, p50/p99, then the same from ``--concurrency`` tasks at once, with the
   reservations per second Redis sustains. The commit that follows every paid call runs
   in the background (never on the call's path), so it is not part of the latency.
2. Paid calls end to end: the same warm paid calls through a real proxy in front of the
   fake gateway (own process, ``verify=fast``), with the budget in memory and with it in
   Redis, alternating batches; the difference of the p50s and p99s is what the
   reservation adds per paid call.

Bounded: about 20 s with the defaults. A command, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from decimal import Decimal

import aiohttp

from bench.load import percentile
from bench.quotes import NETWORK, WARM_UP_CALLS, body, call, gateway_process
from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.config import Settings
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.server import running


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def ms(values: Sequence[float], pct: float) -> float:
    return percentile(values, pct) * 1000


# --- 1. the reservation alone -----------------------------------------------------------------


async def reservations(url: str, count: int, concurrency: int) -> None:
    link = RedisLink(url, timeout=2.0, prefix=f"bench-{secrets.token_hex(4)}")
    store = RedisBudgetStore(link, 10**15, 86400)
    try:
        for _ in range(200):  # connections open, script loaded
            await store.commit(await store.reserve(1))
        sequential = []
        for _ in range(count):
            started = time.perf_counter()
            reservation = await store.reserve(1_000)
            sequential.append(time.perf_counter() - started)
            await store.commit(reservation)
        await store.flush(10)
        print(
            f"reserve, sequential ({count}):       p50 {ms(sequential, 50):.3f} ms, "
            f"p99 {ms(sequential, 99):.3f} ms"
        )
        loaded: list[float] = []
        per_task = max(1, count // concurrency)

        async def worker() -> None:
            for _ in range(per_task):
                started = time.perf_counter()
                reservation = await store.reserve(1_000)
                loaded.append(time.perf_counter() - started)
                await store.commit(reservation)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await store.flush(30)
        elapsed = time.perf_counter() - started
        print(
            f"reserve, {concurrency} at once ({len(loaded)}):     p50 {ms(loaded, 50):.3f} ms, "
            f"p99 {ms(loaded, 99):.3f} ms, {len(loaded) / elapsed:,.0f} reserve+commit/s"
        )
    finally:
        await store.aclose()
        await link.aclose()


# --- 2. paid calls, budget in memory vs in Redis -------------------------------------------------


@contextlib.asynccontextmanager
async def proxy(api_url: str, redis_url: str | None) -> AsyncIterator[str]:
    settings = Settings(
        port=0,
        api_url=api_url,
        networks=(NETWORK,),
        wallet_key="0x" + secrets.token_hex(32),
        budget_usd=Decimal(10**6),  # never reached: only its bookkeeping is measured
        redis_url=redis_url,
        redis_prefix=f"bench-{secrets.token_hex(4)}",
        state_dir=None,
    )
    async with running(settings) as (_, port):
        yield f"http://127.0.0.1:{port}/v1/chat/completions"


async def paid_calls(api_url: str, redis_url: str, calls: int, batches: int) -> None:
    samples: dict[str, list[float]] = {"memory": [], "redis": []}
    async with (
        proxy(api_url, None) as memory_url,
        proxy(api_url, redis_url) as redis_proxy_url,
        aiohttp.ClientSession() as session,
    ):
        urls = {"memory": memory_url, "redis": redis_proxy_url}
        for url in urls.values():  # both learn the quotes: one round trip per paid call
            rng = random.Random(0)
            for _ in range(WARM_UP_CALLS):
                await call(session, url, body(rng))
        rng = random.Random(1)
        for batch in range(batches):
            order = ("memory", "redis") if batch % 2 == 0 else ("redis", "memory")
            bodies = [body(rng) for _ in range(calls // batches)]
            for mode in order:
                for data in bodies:
                    samples[mode].append(await call(session, urls[mode], data))
    memory, redis = samples["memory"], samples["redis"]
    for mode, values in samples.items():
        print(
            f"paid call, budget in {mode + ':':<7} ({len(values)}) p50 {ms(values, 50):.3f} ms, "
            f"p99 {ms(values, 99):.3f} ms"
        )
    print(
        f"added by the Redis reservation:      p50 {ms(redis, 50) - ms(memory, 50):+.3f} ms, "
        f"p99 {ms(redis, 99) - ms(memory, 99):+.3f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    with redis_server() as url:
        print(f"local redis-server, {NETWORK} fake gateway (verify=fast, own process)\n")
        await reservations(url, args.reservations, args.concurrency)
        with gateway_process(0.0) as api_url:
            await paid_calls(api_url, url, args.calls, args.batches)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--reservations", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--calls", type=int, default=600, help="paid calls per mode")
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
