"""``serve --workers 2``: two processes on one port, metrics summed over both, clean exit."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import orjson
from ops_support import free_port, proxy_environ, until
from proc_support import ProxyProcess
from prometheus_client.parser import text_string_to_metric_families

from blockrun_proxy.testing import FakeGateway

TEST_NETWORK = "eip155:84532"
PAID = "openai/gpt-4o-mini"
CALLS = 24


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_two_workers_share_the_port_sum_their_metrics_and_exit_0(tmp_path, wallet_key):
    gateway = FakeGateway(network=TEST_NETWORK)
    await gateway.start()
    port = free_port()
    proxy = await ProxyProcess.start(
        "--workers", "2", "--port", str(port), "--api-url", str(gateway.base_url),
        "--networks", TEST_NETWORK,
        env=proxy_environ(tmp_path, BLOCKRUN_WALLET_KEY=wallet_key),
        listeners=2,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    body = orjson.dumps(
        {"model": PAID, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    )
    try:
        # A fresh connection per call, so the kernel picks a worker for each.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(CALLS):
                async with session.post(base + "/v1/chat/completions", data=body) as resp:
                    assert resp.status == 200
            key = ("blockrun_proxy_requests_total",
                   (("route", "/v1/chat/completions"), ("status", "200")))  # fmt: skip

            async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                async with session.get(base + "/metrics") as resp:
                    assert resp.status == 200
                    return samples(await resp.text())

            # A worker counts a call just after its last byte went out: wait for that.
            for _ in range(200):
                if (await scrape()).get(key) == CALLS:
                    break
                await asyncio.sleep(0.05)
            # Every scrape, whichever worker answers it, reports the sum over both.
            for _ in range(6):
                values = await scrape()
                assert values[key] == CALLS
                assert values[("blockrun_proxy_payments_signed_total", ())] == CALLS
                settled = sum(s.amount for s in gateway.settled)
                assert values[("blockrun_proxy_settled_micro_usdc_total", ())] == settled
                assert values[("blockrun_proxy_max_concurrent", ())] == 2 * 256
        await until(lambda: len(proxy.access("/v1/chat/completions")) >= CALLS)
        pids = {line["pid"] for line in proxy.access("/v1/chat/completions")}
        assert len(pids) == 2, "both workers should have served"
        proxy.signal()
        assert await proxy.wait(timeout=30) == 0
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"worker {pid} outlived the supervisor")
    finally:
        await proxy.kill()
        await gateway.close()
