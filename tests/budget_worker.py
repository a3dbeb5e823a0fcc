"""One replica's side of the shared-budget test: run as its own OS process.

    python tests/budget_worker.py URL PREFIX LIMIT WINDOW CALLS SEED

Prints ``ready``, waits for a line on stdin (so every process starts together), fires
CALLS concurrent reservations of random amounts, commits each granted one after a random
pause, and prints one JSON line: the amounts granted and how many were refused.
"""

from __future__ import annotations

import asyncio
import random
import sys

import orjson

from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.errors import PaymentRefused
from blockrun_proxy.redis_link import RedisLink

MIN_AMOUNT = 1_000
MAX_AMOUNT = 5_000


async def main(url: str, prefix: str, limit: int, window: float, calls: int, seed: int) -> None:
    rng = random.Random(seed)
    link = RedisLink(url, timeout=5.0, prefix=prefix)
    store = RedisBudgetStore(link, limit, window)
    amounts = [rng.randint(MIN_AMOUNT, MAX_AMOUNT) for _ in range(calls)]
    # Spread over 200 ms so the processes' reservations interleave (not one after another).
    starts = [rng.random() * 0.2 for _ in range(calls)]
    pauses = [rng.random() * 0.01 for _ in range(calls)]
    granted: list[int] = []
    refused = 0

    async def one(amount: int, start: float, pause: float) -> None:
        nonlocal refused
        await asyncio.sleep(start)
        try:
            reservation = await store.reserve(amount)
        except PaymentRefused:
            refused += 1
            return
        granted.append(amount)
        await asyncio.sleep(pause)  # the "call": other replicas reserve meanwhile
        await store.commit(reservation)

    await store.usage()  # connected, script loaded: the race starts even
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(one(a, s, p) for a, s, p in zip(amounts, starts, pauses, strict=True)))
    await store.flush(10.0)
    await link.aclose()
    print(orjson.dumps({"granted": granted, "refused": refused}).decode(), flush=True)


if __name__ == "__main__":
    url, prefix, limit, window, calls, seed = sys.argv[1:7]
    asyncio.run(main(url, prefix, int(limit), float(window), int(calls), int(seed)))
