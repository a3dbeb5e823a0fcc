"""The shared budget in a real redis-server: atomic across processes, bounded, fail closed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.redis_server import RedisServer
from support.servers import WORKTREE

from blockrun_proxy.budget import BUCKETS, Reservation
from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.errors import BudgetStoreUnavailable, PaymentRefused
from blockrun_proxy.redis_link import RedisLink

# The link's bound in the tests about a slow or hung Redis.
TIMEOUT = 0.3
# Everywhere else: on a loaded 2-core machine a round trip to a healthy local Redis has
# taken 236 ms (one in 27,000; p50 0.5 ms), so 0.3 s failed tests about accounting.
GENEROUS = 10.0


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    link = RedisLink(redis_server.url, timeout=GENEROUS, prefix="test")
    yield link
    await link.aclose()


def store_for(link: RedisLink, limit: int = 10_000, window: float = 3600, **kw: Any) -> Any:
    return RedisBudgetStore(link, limit, window, **kw)


async def spent(store: RedisBudgetStore) -> int:
    await store.flush(5)
    return (await store.usage()).spent


async def test_reserve_commit_release_and_refusal(link: RedisLink) -> None:
    store = store_for(link)
    first = await store.reserve(6_000)
    assert isinstance(first, Reservation) and first.amount == 6_000
    assert abs(first.at - time.time()) < 5  # Redis's clock, unix seconds
    assert await spent(store) == 6_000
    await store.commit(first, 4_000)  # settled less than signed: the settled amount counts
    assert await spent(store) == 4_000
    second = await store.reserve(6_000)
    assert await spent(store) == 10_000
    with pytest.raises(PaymentRefused) as refused:
        await store.reserve(1)
    assert refused.value.code == "budget_exceeded"
    assert "$0.010000 per 1h" in refused.value.message
    assert await spent(store) == 10_000  # the refusal held nothing
    await store.release(second)
    assert await spent(store) == 4_000
    assert store.stats.reserved == 2 and store.stats.refused == 1


async def test_commit_and_release_are_idempotent(link: RedisLink) -> None:
    store = store_for(link)
    kept = await store.reserve(3_000)
    await store.commit(kept)
    await store.commit(kept)
    await store.release(kept)  # after a commit: too late, it counts
    gone = await store.reserve(2_000)
    await store.release(gone)
    await store.release(gone)
    await store.commit(gone)  # after a release: nothing to commit
    assert await spent(store) == 3_000


async def test_a_reservation_arriving_after_its_release_holds_nothing(link: RedisLink) -> None:
    """A reserve that timed out on our side is released in the background, over another
    connection: should the reserve itself reach Redis later, it must be refused."""
    store = store_for(link)
    await store.release(Reservation("late-one", 4_000, time.time()))
    await store.flush(5)
    granted, total, _ = await store._run("reserve", store.limit, 4_000, "late-one")
    assert (granted, total) == (0, 0)
    assert await spent(store) == 0


async def test_a_spent_above_the_amount_counts_the_amount(link: RedisLink) -> None:
    store = store_for(link)
    reservation = await store.reserve(1_000)
    await store.commit(reservation, 5_000)
    assert await spent(store) == 1_000


async def test_stores_with_other_windows_or_prefixes_do_not_mix(redis_server: RedisServer) -> None:
    links = [RedisLink(redis_server.url, timeout=GENEROUS, prefix=p) for p in ("a", "a", "b")]
    try:
        day, hour, other = (
            store_for(links[0], window=86400),
            store_for(links[1], window=3600),
            store_for(links[2], window=86400),
        )
        await day.reserve(5_000)
        assert await spent(hour) == 0
        assert await spent(other) == 0
        assert await spent(store_for(links[0], window=86400)) == 5_000
    finally:
        for link in links:
            await link.aclose()


async def test_spend_leaves_the_window_and_memory_stays_bounded(link: RedisLink) -> None:
    window = 0.5
    store = store_for(link, limit=10**9, window=window)
    for _ in range(300):
        await store.commit(await store.reserve(7))
    await store.flush(5)
    keys = store._keys
    buckets = await link.client.hlen(keys[1])
    assert 0 < buckets <= BUCKETS + 1
    await asyncio.sleep(window + 2 * window / BUCKETS + 0.05)
    assert (await store.usage()).spent == 0
    assert await link.client.hlen(keys[1]) == 0
    assert await link.client.zcard(keys[3]) == 0  # no holds left behind
    for key in keys:  # nothing in Redis outlives the window and the hold TTL
        ttl = await link.client.pttl(key)
        assert ttl == -2 or 0 < ttl <= (window + 900 + 60) * 1000


async def test_a_hold_never_settled_counts_in_full_after_its_ttl(link: RedisLink) -> None:
    """A replica that crashed mid-call may have sent the payment: its hold is never
    dropped, it becomes spend (and leaves with the window like any other)."""
    store = store_for(link, hold_seconds=0.2)
    orphan = await store.reserve(4_000)
    await asyncio.sleep(0.3)
    assert await spent(store) == 4_000  # the script turned it into committed spend
    assert await link.client.zcard(store._keys[3]) == 0  # no longer a hold
    await store.release(orphan)  # too late: it may have been paid
    await store.commit(orphan, 1)
    assert await spent(store) == 4_000


def test_three_processes_never_reserve_more_than_the_budget(redis_server: RedisServer) -> None:
    """Three OS processes, 100 concurrent reservations each, random amounts: together
    they reserve at most the budget, and within one call's price of it."""
    limit = 200_000  # about 67 reservations of the 300 fit
    worker = str(Path(WORKTREE) / "tests" / "budget_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, redis_server.url, "fleet", str(limit), "3600", "100", seed],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=WORKTREE,
        )
        for seed in ("0", "1", "2")
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        results = [orjson.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    granted = [amount for result in results for amount in result["granted"]]
    refused = sum(result["refused"] for result in results)
    assert len(granted) + refused == 300
    # They raced for it (one process alone did not drain the budget before the others).
    assert sum(1 for result in results if result["granted"]) >= 2
    total = sum(granted)
    assert total <= limit
    assert limit - total < 5_000  # the largest amount asked for: nothing left unused

    async def counted() -> int:
        link = RedisLink(redis_server.url, timeout=GENEROUS, prefix="fleet")
        try:
            return await spent(store_for(link, limit=limit))
        finally:
            await link.aclose()

    assert asyncio.run(counted()) == total


async def test_redis_stopped_mid_run_fails_closed_then_resumes(
    redis_server: RedisServer,
) -> None:
    # A generous bound: 100 reservations at once on fresh connections, on a loaded
    # machine, must not time out; a stopped Redis refuses connections at once anyway.
    link = RedisLink(redis_server.url, timeout=GENEROUS, prefix="test")
    store = store_for(link, limit=10**9)
    try:

        async def attempt() -> Reservation | Exception:
            try:
                reservation = await store.reserve(1_000)
            except (BudgetStoreUnavailable, PaymentRefused) as exc:
                return exc
            await store.commit(reservation)
            return reservation

        before = await asyncio.gather(*(attempt() for _ in range(100)))
        assert all(isinstance(r, Reservation) for r in before)
        redis_server.stop()
        started = time.monotonic()
        during = await asyncio.gather(*(attempt() for _ in range(100)))
        # Refused at once: no attempt waited for the link's timeout.
        assert time.monotonic() - started < GENEROUS / 2
        assert all(isinstance(r, BudgetStoreUnavailable) for r in during)  # zero granted
        assert all(r.status == 503 and r.code == "budget_store_unavailable" for r in during)
        assert store.stats.unavailable == 100
        assert link.up is False and "unreachable" in link.describe()
        redis_server.start()  # same port, empty (nothing was persisted)
        after = await asyncio.gather(*(attempt() for _ in range(100)))
        assert all(isinstance(r, Reservation) for r in after)  # reconnected on its own
        assert link.describe() == "redis: ok"
        assert await spent(store) == 100 * 1_000
    finally:
        await store.aclose()
        await link.aclose()


async def test_a_hung_redis_costs_at_most_the_timeout_and_never_blocks_settling(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(redis_server.url, timeout=TIMEOUT, prefix="test")
    store = store_for(link)
    try:
        paid = await store.reserve(2_000)
        redis_server.pause()
        started = time.monotonic()
        await store.commit(paid)  # after the send: must not wait for Redis
        await store.release(Reservation("never-sent", 1, time.time()))
        assert time.monotonic() - started < TIMEOUT  # neither waited for Redis's answer
        with pytest.raises(BudgetStoreUnavailable):
            await store.reserve(3_000)
        # Bounded by the timeout, not hung (the margin is for a loaded machine's loop).
        assert time.monotonic() - started < TIMEOUT + 1.5
        redis_server.resume()
        # The commit lands in the background; the reservation that timed out holds
        # nothing (released, or refused should it arrive late).
        assert await spent(store) == 2_000
        assert store.stats.settle_failed == 0
    finally:
        redis_server.resume()
        await store.aclose()
        await link.aclose()


async def test_a_reservation_cancelled_in_flight_holds_nothing(
    redis_server: RedisServer,
) -> None:
    """A client that hangs up while its reservation is on the wire (handler cancelled)."""
    link = RedisLink(redis_server.url, timeout=5.0, prefix="test")
    store = store_for(link)
    try:
        await store.usage()  # connected
        redis_server.pause()
        pending = asyncio.ensure_future(store.reserve(3_000))
        await asyncio.sleep(0.1)  # sent; Redis will run it when it wakes up
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        redis_server.resume()
        assert await spent(store) == 0
    finally:
        redis_server.resume()
        await store.aclose()
        await link.aclose()


async def test_fail_open_signs_under_this_process_budget_while_redis_is_away(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(redis_server.url, timeout=TIMEOUT, prefix="test")
    store = store_for(link, limit=10_000, fail_open=True)
    try:
        redis_server.stop()
        local = await store.reserve(6_000)
        assert local.id.startswith("local-")
        assert store.stats.fail_open == 1
        with pytest.raises(PaymentRefused) as refused:  # the local cap still holds
            await store.reserve(6_000)
        assert refused.value.code == "budget_exceeded"
        await store.release(local)
        await store.reserve(6_000)
    finally:
        await store.aclose(0.1)  # its background release cannot land: Redis is gone
        await link.aclose()


async def test_the_redis_url_password_never_shows(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis://:s3cret-pass@")
    link = RedisLink(url, timeout=TIMEOUT, prefix="test")
    try:
        assert "s3cret" not in link.url and "***" in link.url
        redis_server.stop()
        with pytest.raises(BudgetStoreUnavailable) as unavailable:
            await store_for(link).reserve(1)
        assert "s3cret" not in str(unavailable.value.__cause__)
        assert "s3cret" not in unavailable.value.message
    finally:
        await link.aclose()


async def test_settlements_of_one_reservation_reach_redis_in_order(link: RedisLink) -> None:
    """A commit then a release of the same reservation arrive in that order even when the
    commit's round trip is the slower one (pooled connections race; retries reorder)."""
    store = store_for(link)
    arrived: list[str] = []
    run = store._run

    async def slow_first(op: str, *args: int | str) -> tuple[int, int, int]:
        if op == "commit":
            await asyncio.sleep(0.05)  # the commit's connection is the slow one
        arrived.append(op)
        return await run(op, *args)

    kept = await store.reserve(3_000)
    store._run = slow_first  # type: ignore[method-assign]
    await store.commit(kept)
    await store.release(kept)  # too late: it was committed first
    await store.flush(5)
    store._run = run  # type: ignore[method-assign]
    assert arrived == ["commit", "release"]
    assert await spent(store) == 3_000
