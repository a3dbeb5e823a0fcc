"""Learned quotes shared through a real redis-server: what replica A learned, replica B
(a fresh proxy on the same Redis) signs up front from its first call; a poisoned entry
costs a probe, never a payment the policy refuses."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from support.calls import round_trips
from support.redis_server import RedisServer

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.config import Settings
from blockrun_proxy.quote_store import RedisQuoteStore
from blockrun_proxy.quotes.entries import key_name
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.server import running
from blockrun_proxy.testing import DEFAULT_MODELS, FakeGateway
from blockrun_proxy.testing._models import PRICING_SHAPES
from blockrun_proxy.testing.workloads import bodies

MINI = {m.id: m for m in DEFAULT_MODELS}["openai/gpt-4o-mini"]
KEY = ("/v1/chat/completions", MINI.id)
TEST_NETWORK = "eip155:84532"
SENT = bodies("conversation", MINI.id)


@contextlib.asynccontextmanager
async def fleet_gateway() -> AsyncIterator[FakeGateway]:
    shape = PRICING_SHAPES["chars"]
    async with FakeGateway(
        network=TEST_NETWORK, models=shape.models, pricing=shape.price, verify="fast"
    ) as gateway:
        yield gateway


def replica(gateway: FakeGateway, redis_server: RedisServer, **fields: Any) -> Any:
    """A proxy of the fleet: same wallet, same Redis, no state directory."""
    settings = Settings(
        port=0,
        api_url=gateway.base_url,
        networks=(TEST_NETWORK,),
        wallet_key=WALLET,
        state_dir=None,
        redis_url=redis_server.url,
        redis_timeout_seconds=5.0,  # about what is shared, not timeouts
        **fields,
    )
    return running(settings)


WALLET = "0x" + secrets.token_hex(32)


async def readyz(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as resp,
    ):
        return dict(await resp.json())


async def learn(gateway: FakeGateway, runner: Any, port: int) -> None:
    for body in SENT[:20]:
        await round_trips(gateway, port, body)
    core = runner.app[CORE_KEY]
    assert core.quotes.trusted(MINI.id)
    assert await core.keeper.save()  # what the keeper does within seconds on its own


async def test_a_new_replica_signs_its_first_call_up_front(redis_server: RedisServer) -> None:
    async with fleet_gateway() as gateway, replica(gateway, redis_server) as (runner_a, port_a):
        await learn(gateway, runner_a, port_a)
        async with replica(gateway, redis_server) as (runner_b, port_b):
            core_b = runner_b.app[CORE_KEY]
            await core_b.keeper.loaded.wait()
            ready = await readyz(port_b)
            assert ready["ready"] and ready["quotes"] == "redis: 1 price keys loaded"
            models_reads = gateway.models_calls
            assert await round_trips(gateway, port_b, SENT[20]) == 1  # signed up front
            assert core_b.quotes.stats.presigned == 1 and core_b.quotes.stats.probed == 0
            assert gateway.models_calls == models_reads  # the catalogue came along
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port_b}/metrics") as resp,
            ):
                assert b"blockrun_proxy_quote_store_keys_loaded_total 1.0" in await resp.read()


async def test_a_running_replica_picks_up_what_another_learned(
    redis_server: RedisServer,
) -> None:
    async with fleet_gateway() as gateway, replica(gateway, redis_server) as (runner_b, port_b):
        keeper_b = runner_b.app[CORE_KEY].keeper
        await keeper_b.loaded.wait()
        assert "0 price keys" in keeper_b.status  # nothing learned yet anywhere
        async with replica(gateway, redis_server) as (runner_a, port_a):
            await learn(gateway, runner_a, port_a)
        assert await keeper_b.reload() == 1  # what it does every 30 s on its own
        assert await keeper_b.reload() == 0  # nothing newer since: nothing fetched
        assert await round_trips(gateway, port_b, SENT[20]) == 1


async def test_a_poisoned_entry_costs_a_probe_never_a_refused_payment(
    redis_server: RedisServer,
) -> None:
    """Entries in Redis are data, not trust: a template paying someone else is refused by
    the payer policy (--pay-to) and the call goes probe-first, paying the gateway."""
    attacker = "0x" + "66" * 20
    async with fleet_gateway() as gateway:
        async with replica(gateway, redis_server) as (runner_a, port_a):
            await learn(gateway, runner_a, port_a)
        link = RedisLink(redis_server.url, timeout=5.0, prefix="blockrun-proxy")
        try:
            store = RedisQuoteStore(link, gateway.base_url)
            name = key_name(KEY)
            stamp, data = (await store.load())[name]
            doc = orjson.loads(data)
            doc["key"]["template"]["requirement"]["payTo"] = attacker
            await store.save({name: (stamp + 1, orjson.dumps(doc))})
        finally:
            await link.aclose()
        async with replica(gateway, redis_server, pay_to=(gateway.pay_to,)) as (runner_b, port_b):
            core_b = runner_b.app[CORE_KEY]
            await core_b.keeper.loaded.wait()
            assert core_b.quotes.trusted(MINI.id)  # the entry was read...
            payments = len(gateway.payments)
            assert await round_trips(gateway, port_b, SENT[20]) == 2  # ...and cost one probe
            assert core_b.quotes.stats.declined == 1
            assert [p.pay_to.lower() for p in gateway.payments[payments:]] == [
                gateway.pay_to.lower()
            ]


async def test_redis_down_at_start_means_a_cold_start_not_a_stuck_one(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    async with fleet_gateway() as gateway, replica(gateway, redis_server) as (runner, port):
        keeper = runner.app[CORE_KEY].keeper
        await keeper.loaded.wait()
        assert "starting cold" in keeper.status
        assert (await readyz(port))["ready"] is True
