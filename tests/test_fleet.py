"""A fleet end to end: three proxy processes, one Redis, one fake gateway, one wallet.

300 concurrent paid calls spread over the three: together they sign at most the budget
(and within one call's price of it), the fleet's ledger adds up to what the gateway
settled, and with Redis stopped not one payment is signed until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.calls import PRICED_MODEL, TEST_NETWORK, chat
from support.process import ProxyProcess
from support.redis_server import RedisServer
from support.servers import proxy_environ

from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.redis_ledger import RedisLedger
from blockrun_proxy.testing import FakeGateway, default_price

CALLS = 300
REPLICAS = 3


@pytest.fixture
async def fast_gateway() -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway(network=TEST_NETWORK, verify="fast")
    await gateway.start()
    yield gateway
    await gateway.close()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url + "/chat/completions", json=body) as resp:
        data = await resp.json(content_type=None)
        return resp.status, (data.get("error") or {}).get("code")


async def test_three_replicas_share_one_budget_and_one_ledger(
    redis_server: RedisServer, fast_gateway: FakeGateway, wallet_key: str, tmp_path: Path
) -> None:
    gateway = fast_gateway
    body = chat(PRICED_MODEL, "hello fleet", max_tokens=100)
    price = default_price(gateway.models[PRICED_MODEL], body)
    budget = 100 * price + price // 2  # room for 100 calls and half of one more
    env = proxy_environ(tmp_path / "home", BLOCKRUN_WALLET_KEY=wallet_key)
    args = [
        "--port", "0",
        "--api-url", str(gateway.base_url),
        "--networks", TEST_NETWORK,
        "--redis-url", redis_server.url,
        # 300 calls at once on three proxies saturate each one's event loop on a 2-core
        # machine: a reservation's answer then waits its turn there, past 2 s under load
        # (503s). The test is about the budget, not timeouts, and a stopped Redis refuses
        # connections at once anyway.
        "--redis-timeout", "15",
        "--budget-usd", str(Decimal(budget) / 10**6),
        "--state-dir", "",
    ]  # fmt: skip
    proxies = await asyncio.gather(*(ProxyProcess.start(*args, env=env) for _ in range(REPLICAS)))
    link = RedisLink(redis_server.url, timeout=15.0, prefix="blockrun-proxy")
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            replies = await asyncio.gather(
                *(post(session, proxies[i % REPLICAS].base_url, body) for i in range(CALLS))
            )
            assert Counter(replies) == {(200, None): 100, (402, "budget_exceeded"): 200}
            signed = sum(payment.amount for payment in gateway.payments)
            assert signed <= budget and budget - signed < price  # the fleet, not each
            assert len(gateway.settled) == 100

            # The ledger: every replica's records in one place, adding up.
            ledger = RedisLedger(link, retention_seconds=86400)
            records: list[Any] = []

            async def all_recorded() -> bool:  # each replica writes in the background
                records[:] = await ledger.last(1000)
                return len(records) == CALLS

            await _until_async(all_recorded)
            settled_by_replica: Counter[str] = Counter()
            for record in records:
                if record.outcome == "ok":
                    settled_by_replica[record.replica] += record.settled
            assert len(settled_by_replica) >= 2  # several replicas paid, and they add up:
            assert sum(settled_by_replica.values()) == sum(s.amount for s in gateway.settled)
            assert Counter(r.outcome for r in records) == {"ok": 100, "refused": 200}

            # Redis stops: no reservation, no signature, on any replica.
            redis_server.stop()
            payments = len(gateway.payments)
            down = await asyncio.gather(
                *(post(session, proxies[i % REPLICAS].base_url, body) for i in range(30))
            )
            assert set(down) == {(503, "budget_store_unavailable")}
            assert len(gateway.payments) == payments
            # Back (empty: nothing was persisted), and every replica pays again.
            redis_server.start()
            for proxy in proxies:
                assert await post(session, proxy.base_url, body) == (200, None)
            assert len(gateway.payments) == payments + REPLICAS
    finally:
        await link.aclose()
        for proxy in proxies:
            proxy.signal()
        for proxy in proxies:
            with contextlib.suppress(asyncio.TimeoutError):
                await proxy.wait(15)
            await proxy.kill()


async def _until_async(predicate: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
