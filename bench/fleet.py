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
3. Learned quotes: what a new replica's one load at start costs (read the entries from
   Redis, rebuild the formulas in a worker thread, merge), for books of 1, 16 and 256
   learned price keys (256 is the book's bound); what saving a changed key costs; and
   the periodic re-load when nothing changed (one small read).

Bounded: about 30 s with the defaults. A command, not a test.
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
import orjson

from bench.load import percentile
from bench.quotes import FORMULAS, NETWORK, gateway_process
from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.config import Settings
from blockrun_proxy.quote_store import RedisQuoteStore
from blockrun_proxy.quotes import QuoteBook, parse_catalogue, request_features
from blockrun_proxy.quotes.entries import encode
from blockrun_proxy.quotes.keeper import QuoteKeeper
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.server import running
from blockrun_proxy.testing import DEFAULT_MODELS, ModelSpec
from blockrun_proxy.testing._models import chars_price
from blockrun_proxy.testing.workloads import bodies
from blockrun_proxy.x402 import Requirement

API_URL = "https://gateway.bench/api"
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
# The gateway prices by max_tokens only: both proxies learn it within these calls, so
# every measured call is signed up front (one round trip) in both modes.
FORMULA = FORMULAS[0]
WARM_UP_CALLS = 40
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge".split()  # noqa: SIM905
MAX_TOKENS = (16, 32, 50, 64, 100, 128, 256, 300, 512, 1000, 1024, 2048, 4000)


def body(rng: random.Random) -> bytes:
    content = " ".join(rng.choices(WORDS, k=rng.randint(1, 120)))
    return orjson.dumps(
        {
            "model": FORMULA.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": rng.choice(MAX_TOKENS),
        }
    )


async def call(session: aiohttp.ClientSession, url: str, data: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"paid call failed: {resp.status}")
    return time.perf_counter() - started


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


# --- 3. learned quotes: the load at start ------------------------------------------------------


def learned_book(keys: int) -> QuoteBook:
    """A book that learned ``keys`` models (each 40 conversation turns of 402s, priced
    by characters, with its catalogue price), as a busy replica's would be."""
    template = {m.id: m for m in DEFAULT_MODELS}["openai/gpt-4o-mini"]
    specs = [
        ModelSpec(f"bench/model-{i}", template.input_price, template.output_price)
        for i in range(keys)
    ]
    book = QuoteBook(max_models=max(256, keys))
    listing = {"data": [spec.listing() for spec in specs]}
    book.set_catalogue(parse_catalogue(orjson.dumps(listing)))
    turns = bodies("conversation", template.id)[:40]
    for spec in specs:
        resource = {"url": API_URL + "/v1/chat/completions", "mimeType": "application/json"}
        for turn in turns:
            data = {**turn, "model": spec.id}
            features = request_features(spec.id, data["max_tokens"], data)
            assert features is not None
            amount = chars_price(spec, data)
            raw = {
                "scheme": "exact", "network": NETWORK, "amount": str(amount), "asset": USDC,
                "payTo": "0x000000000000000000000000000000000000dEaD", "maxTimeoutSeconds": 300,
                "extra": {"name": "USDC", "version": "2"},
            }  # fmt: skip
            requirement = Requirement(
                "exact", NETWORK, amount, USDC, raw["payTo"], 300, raw["extra"], raw
            )
            book.observe(features, requirement, resource, None)
    return book


async def quote_loads(url: str, sizes: Sequence[int], rounds: int) -> None:
    for keys in sizes:
        link = RedisLink(url, timeout=5.0, prefix=f"bench-{secrets.token_hex(4)}")
        try:
            store = RedisQuoteStore(link, API_URL)
            book = learned_book(keys)
            entries = encode(book.take_changes(), API_URL)
            size = sum(len(data) for _, data in entries.values())
            await store.save(entries)
            loads: list[float] = []
            for _ in range(rounds):
                fresh = QuoteBook()
                keeper = QuoteKeeper(fresh, store=store, api_url=API_URL)
                started = time.perf_counter()
                taken = await keeper.reload()
                loads.append(time.perf_counter() - started)
                assert taken == keys, (taken, keys)
            idle: list[float] = []
            for _ in range(rounds):  # a running replica's periodic re-load, nothing new
                started = time.perf_counter()
                assert await keeper.reload() == 0
                idle.append(time.perf_counter() - started)
            saves: list[float] = []
            for _ in range(rounds):  # one key changed (its latest quote refused): one entry
                fresh.forget("bench/model-0")
                started = time.perf_counter()
                assert await keeper.save()
                saves.append(time.perf_counter() - started)
            print(
                f"quote load at start, {keys:>3} keys ({size / 1024:,.0f} KiB): "
                f"p50 {ms(loads, 50):.1f} ms, max {ms(loads, 100):.1f} ms; re-load with "
                f"nothing new p50 {ms(idle, 50):.2f} ms; saving one key p50 "
                f"{ms(saves, 50):.2f} ms"
            )
        finally:
            await link.aclose()


async def run(args: argparse.Namespace) -> None:
    with redis_server() as url:
        print(f"local redis-server, {NETWORK} fake gateway (verify=fast, own process)\n")
        await reservations(url, args.reservations, args.concurrency)
        with gateway_process(FORMULA, 0.0) as (api_url, _):
            await paid_calls(api_url, url, args.calls, args.batches)
        await quote_loads(url, (1, 16, 256), args.quote_rounds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--reservations", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--calls", type=int, default=600, help="paid calls per mode")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--quote-rounds", type=int, default=10)
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
