"""Admission control: the gate on its own, then overload over real HTTP through the proxy."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from support.calls import FREE_MODEL, JSON
from support.process import ProxyProcess
from support.servers import LAST_FRAME, HoldingUpstream, proxy_environ, until

from blockrun_proxy import h1
from blockrun_proxy.app import ADMISSION_KEY, CORE_KEY
from blockrun_proxy.config import Settings
from blockrun_proxy.errors import Overloaded, ShuttingDown
from blockrun_proxy.limits import (
    MAX_AUTO_CONCURRENT,
    MIN_AUTO_CONCURRENT,
    Admission,
    Limits,
    auto_max_concurrent,
)

CHAT = orjson.dumps(
    {"model": FREE_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
)


# --------------------------------------------------------------------------- the gate


async def hold(admission: Admission, release: asyncio.Event, order: list[int], n: int) -> None:
    async with admission.slot():
        order.append(n)
        await release.wait()


async def test_admits_up_to_the_limit_then_queues_in_arrival_order():
    admission = Admission(2, 10, 10.0)
    release = asyncio.Event()
    order: list[int] = []
    tasks = [asyncio.create_task(hold(admission, release, order, n)) for n in range(6)]
    await until(lambda: admission.queued == 4)
    assert (admission.active, order) == (2, [0, 1])
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert (admission.active, admission.queued) == (0, 0)


async def test_a_newcomer_never_overtakes_the_queue():
    admission = Admission(1, 10, 10.0)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await until(lambda: admission.queued == 1)
    admission.release()  # the slot goes to the waiter, not to whoever asks next
    late = asyncio.create_task(admission.acquire())
    await waiter
    await asyncio.sleep(0)
    assert not late.done() and admission.queued == 1
    admission.release()
    await late
    admission.release()
    assert (admission.active, admission.queued) == (0, 0)


async def test_full_queue_is_refused_at_once_with_retry_after():
    admission = Admission(1, 1, 10.0)
    await admission.acquire()
    queued = asyncio.create_task(admission.acquire())
    await until(lambda: admission.queued == 1)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        await admission.acquire()
    assert time.monotonic() - started < 0.1
    assert refused.value.status == 429
    assert refused.value.code == "proxy_overloaded"
    assert refused.value.headers["Retry-After"] == "1"
    queued.cancel()
    admission.release()


async def test_queue_wait_is_bounded():
    admission = Admission(1, 5, 0.05)
    await admission.acquire()
    with pytest.raises(Overloaded) as refused:
        await admission.acquire()
    assert refused.value.code == "proxy_queue_timeout"
    assert (admission.active, admission.queued) == (1, 0)
    admission.release()
    assert admission.active == 0


async def test_a_caller_cancelled_while_queued_frees_its_place():
    admission = Admission(1, 1, 10.0)
    await admission.acquire()
    queued = asyncio.create_task(admission.acquire())
    await until(lambda: admission.queued == 1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert admission.queued == 0
    again = asyncio.create_task(admission.acquire())  # the freed place is usable
    await until(lambda: admission.queued == 1)
    admission.release()
    await again
    admission.release()
    assert (admission.active, admission.queued) == (0, 0)


async def test_a_caller_cancelled_as_it_is_handed_a_slot_passes_it_on():
    admission = Admission(1, 5, 10.0)
    await admission.acquire()
    first = asyncio.create_task(admission.acquire())
    second = asyncio.create_task(admission.acquire())
    await until(lambda: admission.queued == 2)
    admission.release()  # hands the slot to ``first``...
    first.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot was passed on, not lost
    assert (admission.active, admission.queued) == (1, 0)
    admission.release()
    assert admission.active == 0


async def test_draining_refuses_newcomers():
    admission = Admission(1, 1, 1.0)
    admission.start_draining()
    with pytest.raises(ShuttingDown):
        await admission.acquire()
    assert admission.active == 0


async def test_no_slot_leaks_under_random_cancellations_and_timeouts():
    admission = Admission(4, 20, 0.02)
    rng = random.Random(7)

    async def caller() -> None:
        try:
            async with admission.slot():
                await asyncio.sleep(rng.random() * 0.01)
        except Overloaded:
            pass

    tasks = [asyncio.create_task(caller()) for _ in range(400)]
    for _ in range(60):
        await asyncio.sleep(0.001)
        rng.choice(tasks).cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (admission.active, admission.queued) == (0, 0)


def test_every_limit_derives_from_max_concurrent():
    limits = Limits.from_settings(Settings(max_concurrent=300))
    assert limits.max_queue == 300
    assert limits.pool_size > limits.max_concurrent  # an admitted call never waits for a socket
    assert limits.backlog >= limits.max_concurrent + limits.max_queue
    assert Limits.from_settings(Settings(max_concurrent=8, max_queue=0)).max_queue == 0


def test_unset_max_concurrent_is_sized_from_the_open_files_limit():
    # Issue 14: a sidecar carries thousands of streams without flags. Four descriptors per
    # slot (its call's client and gateway sockets, one queued client, one idle client).
    limits = Limits.from_settings(Settings(), open_files=20_000)
    assert limits.max_concurrent >= 4000
    assert limits.max_queue == limits.max_concurrent
    # Every descriptor accounted for, the client connections capped by what is left, and
    # still room for every admitted and queued call.
    assert limits.fds_needed <= 20_000
    assert limits.max_connections >= limits.max_concurrent + limits.max_queue
    assert limits.sized_from == "sized from the open-files limit 20000"
    assert auto_max_concurrent(1 << 20) == MAX_AUTO_CONCURRENT
    assert auto_max_concurrent(-1) == MAX_AUTO_CONCURRENT  # unlimited
    assert auto_max_concurrent(100) == MIN_AUTO_CONCURRENT
    assert 200 <= auto_max_concurrent(1024) < 256
    assert Limits.from_settings(Settings(), open_files=1024).fds_needed <= 1024
    # A short queue given leaves more for calls; connections given are kept.
    assert auto_max_concurrent(20_000, max_queue=0) > limits.max_concurrent
    given = Limits.from_settings(Settings(max_connections=3000), open_files=20_000)
    assert given.max_connections == 3000
    # A number given is a number kept, whatever the limit.
    pinned = Limits.from_settings(Settings(max_concurrent=300), open_files=20_000)
    assert (pinned.max_concurrent, pinned.sized_from) == (300, "set by --max-concurrent")
    assert pinned == Limits.from_settings(Settings(max_concurrent=300), open_files=100)


def test_default_queue_timeout_serves_a_burst_rather_than_refusing_it():
    # 400 two-second streams against the old 2 s timeout got 143 429s.
    assert Settings().queue_timeout_seconds >= 30
    assert Settings().max_concurrent is None  # sized at start


async def test_serve_says_at_start_how_many_calls_it_admits_and_why(tmp_path):
    proxy = await ProxyProcess.start("--port", "0", env=proxy_environ(tmp_path))
    try:
        (line,) = [x for x in proxy.lines if str(x.get("msg", "")).startswith("admitting")]
        # serve raises its soft limit to the hard one, then sizes the limit from it.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        files = -1 if hard == resource.RLIM_INFINITY else hard
        limits = Limits.from_settings(Settings(), open_files=files)
        assert line["msg"].startswith(
            f"admitting up to {limits.max_concurrent} concurrent calls ({limits.sized_from}), "
            f"{limits.max_queue} more queued for up to 30s, {limits.max_connections} client"
        )
        assert files < 0 or limits.fds_needed <= files
    finally:
        await proxy.kill()


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
async def holding() -> AsyncIterator[HoldingUpstream]:
    upstream = HoldingUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


async def stream(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with session.post(url, data=CHAT, headers=JSON) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def unlimited_session() -> aiohttp.ClientSession:
    # aiohttp's client pool defaults to 100 connections, which would queue the burst
    # inside the test instead of at the proxy.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def test_overload_is_refused_fast_and_the_proxy_recovers(start_proxy, holding):
    proxy = await start_proxy(api_url=holding.url, max_concurrent=4, max_queue=0)
    admission = proxy.app[ADMISSION_KEY]
    url = proxy.base_url + "/chat/completions"
    async with unlimited_session() as session:
        held = [asyncio.create_task(stream(session, url)) for _ in range(4)]
        await until(lambda: holding.started == 4)

        async def refused() -> tuple[float, int, bytes, dict[str, str]]:
            started = time.monotonic()
            status, body, headers = await stream(session, url)
            return time.monotonic() - started, status, body, headers

        burst = await asyncio.gather(*[refused() for _ in range(40)])
        assert {status for _, status, _, _ in burst} == {429}
        # Refused at once: nothing waits for a slot when the queue is full.
        assert max(seconds for seconds, *_ in burst) < 2.0
        _, _, body, headers = burst[0]
        assert headers["Retry-After"] == "1"
        error = orjson.loads(body)["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "proxy_overloaded")
        assert holding.started == 4  # the refused never reached the gateway

        holding.release.set()
        for status, body, _ in await asyncio.gather(*held):
            assert status == 200 and body.endswith(LAST_FRAME)
        await until(lambda: admission.active == 0)
        status, body, _ = await stream(session, url)  # recovered
        assert status == 200 and body.endswith(LAST_FRAME)


async def test_queued_calls_are_served_when_slots_free_up(start_proxy, holding):
    proxy = await start_proxy(
        api_url=holding.url, max_concurrent=2, max_queue=2, queue_timeout_seconds=30.0
    )
    admission = proxy.app[ADMISSION_KEY]
    url = proxy.base_url + "/chat/completions"
    async with unlimited_session() as session:
        calls = [asyncio.create_task(stream(session, url)) for _ in range(4)]
        await until(lambda: admission.active == 2 and admission.queued == 2)
        status, _, _ = await stream(session, url)  # queue full
        assert status == 429
        holding.release.set()
        assert [status for status, _, _ in await asyncio.gather(*calls)] == [200] * 4
    assert holding.started == 4


async def test_a_client_hanging_up_while_queued_frees_its_place(start_proxy, holding):
    proxy = await start_proxy(
        api_url=holding.url, max_concurrent=1, max_queue=1, queue_timeout_seconds=30.0
    )
    admission = proxy.app[ADMISSION_KEY]
    url = proxy.base_url + "/chat/completions"
    async with unlimited_session() as session:
        first = asyncio.create_task(stream(session, url))
        await until(lambda: holding.started == 1)
        gone = asyncio.create_task(stream(session, url))
        await until(lambda: admission.queued == 1)
        gone.cancel()  # closes its connection: the proxy cancels the queued handler
        await until(lambda: admission.queued == 0)
        waiting = asyncio.create_task(stream(session, url))  # its place is free again
        await until(lambda: admission.queued == 1)
        holding.release.set()
        assert (await first)[0] == 200
        assert (await waiting)[0] == 200
    await until(lambda: admission.active == 0)


async def test_a_burst_far_past_the_limit_never_wedges(start_proxy, gateway):
    """The reference sidecar wedged for good after 200 concurrent streams."""
    gateway.event_interval = 0.01
    proxy = await start_proxy(max_concurrent=8, max_queue=8, queue_timeout_seconds=5.0)
    admission = proxy.app[ADMISSION_KEY]
    url = proxy.base_url + "/chat/completions"
    async with unlimited_session() as session:
        results = await asyncio.wait_for(
            asyncio.gather(*[stream(session, url) for _ in range(200)]), timeout=60
        )
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 429}
        assert statuses.count(200) >= 16  # the limit and the queue were all served
        for status, body, _ in results:
            if status == 200:
                assert body.endswith(LAST_FRAME)
        assert (admission.active, admission.queued) == (0, 0)
        status, _, _ = await stream(session, url)
        assert status == 200


@pytest.mark.both_clients
async def test_the_upstream_pool_is_never_smaller_than_the_limit(start_proxy, holding):
    proxy = await start_proxy(api_url=holding.url, max_concurrent=7)
    session = proxy.app[CORE_KEY].session
    if isinstance(session, h1.Client):
        assert session.limits.max_connections >= 7
    else:
        assert session.connector is not None and session.connector.limit >= 7


async def test_admission_and_stream_gauges_show_the_calls_in_flight(start_proxy, holding):
    # In one process the gauges are read when scraped (no per-request writes): they must
    # still show what is in flight at that moment, and 0 once it is over.
    proxy = await start_proxy(api_url=holding.url, max_concurrent=2, max_queue=4)
    url = proxy.base_url + "/chat/completions"

    async def gauges() -> dict[str, float]:
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/metrics") as r:
            text = await r.text()
        names = ("upstream_inflight", "admission_queue", "open_streams", "max_concurrent")
        return {
            name: float(line.split()[-1])
            for line in text.splitlines()
            for name in names
            if line.startswith(f"blockrun_proxy_{name} ")
        }

    async with unlimited_session() as session:
        calls = [asyncio.create_task(stream(session, url)) for _ in range(3)]
        await until(lambda: holding.started == 2 and proxy.app[ADMISSION_KEY].queued == 1)
        assert await gauges() == {
            "upstream_inflight": 2,
            "admission_queue": 1,
            "open_streams": 2,
            "max_concurrent": 2,
        }
        holding.release.set()
        await asyncio.gather(*calls)
    assert await gauges() == {
        "upstream_inflight": 0,
        "admission_queue": 0,
        "open_streams": 0,
        "max_concurrent": 2,
    }
