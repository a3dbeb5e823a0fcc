import asyncio

import pytest

from blockrun_proxy.errors import UpstreamError
from blockrun_proxy.models import ModelsCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_fetches_once_within_ttl_then_refreshes():
    calls = []

    async def fetch():
        calls.append(1)
        return 200, b'{"data": %d}' % len(calls)

    clock = FakeClock()
    cache = ModelsCache(fetch, ttl=60, clock=clock)
    assert await cache.get() == (b'{"data": 1}', "fresh")
    assert await cache.get() == (b'{"data": 1}', "cached")
    clock.now = 61
    assert await cache.get() == (b'{"data": 2}', "fresh")


async def test_concurrent_callers_share_one_fetch():
    calls = []

    async def fetch():
        calls.append(1)
        await asyncio.sleep(0.01)
        return 200, b"{}"

    cache = ModelsCache(fetch, ttl=60)
    results = await asyncio.gather(*(cache.get() for _ in range(20)))
    assert len(calls) == 1
    assert {body for body, _ in results} == {b"{}"}


async def test_serves_stale_when_gateway_fails_and_raises_when_nothing_cached():
    state = {"status": 200, "raise": False}

    async def fetch():
        if state["raise"]:
            raise UpstreamError("down")
        return state["status"], b'{"ok": 1}'

    clock = FakeClock()
    cache = ModelsCache(fetch, ttl=1, clock=clock)
    await cache.get()
    clock.now = 5
    state["raise"] = True
    assert await cache.get() == (b'{"ok": 1}', "stale")
    state["raise"], state["status"] = False, 429
    assert await cache.get() == (b'{"ok": 1}', "stale")

    empty = ModelsCache(fetch, ttl=1)
    with pytest.raises(UpstreamError):
        await empty.get()
