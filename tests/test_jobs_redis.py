"""A job submitted through one replica, polled through another: the payment travels
through Redis (``--redis-url``), never signed anew, never logged."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from support.calls import get, post
from support.payments import nonces
from support.redis_server import RedisServer

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.jobs import JOB_TTL_SECONDS, job_key
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.testing import FakeGateway

VIDEO = {"model": "xai/grok-imagine-video", "prompt": "an apple spinning", "duration_seconds": 5}
VIDEOS = "/v1/videos/generations"


async def replicas(start_proxy: Any, redis_server: RedisServer) -> tuple[Any, Any]:
    # A generous Redis bound: these tests are about where the payment is, not timeouts.
    options = {"redis_url": redis_server.url, "redis_timeout_seconds": 5.0}
    return await start_proxy(**options), await start_proxy(**options)


async def test_a_poll_on_another_replica_replays_the_submits_payment(
    start_proxy: Any, gateway: FakeGateway, redis_server: RedisServer, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    first, second = await replicas(start_proxy, redis_server)
    submit = await post(first, VIDEO, path=VIDEOS)
    assert submit.status == 202, submit.body
    poll_url = submit.json["poll_url"]
    statuses = [(await get(second, poll_url)).status for _ in range(3)]
    assert statuses == [202, 202, 200]  # the fake completes on the third poll
    assert len(nonces(gateway)) == 1  # every poll replayed the submit's authorization
    assert [s.amount for s in gateway.settled] == [gateway.price_for(VIDEO, VIDEOS)]
    assert len(second.app[CORE_KEY].jobs) == 1  # fetched once, then held locally

    # In Redis: under a digest of the job (no job id in key names), for a bounded time.
    header = first.app[CORE_KEY].jobs.local.payment_for(poll_url)
    assert header is not None
    link = RedisLink(redis_server.url, timeout=5.0, prefix="blockrun-proxy")
    try:
        keys = [key.decode() for key in await link.client.keys("*job*")]
        assert len(keys) == 1 and job_key(poll_url).rsplit("/", 1)[1] not in keys[0]
        assert await link.client.get(keys[0]) == header.encode()
        assert 0 < await link.client.ttl(keys[0]) <= JOB_TTL_SECONDS
    finally:
        await link.aclose()
    # A bearer credential for that job: in no log line.
    assert not any(header in record.getMessage() for record in caplog.records)


async def test_a_poll_redis_cannot_answer_for_signs_nothing(
    start_proxy: Any, gateway: FakeGateway, redis_server: RedisServer
) -> None:
    first, second = await replicas(start_proxy, redis_server)
    submit = await post(first, VIDEO, path=VIDEOS)
    assert submit.status == 202
    redis_server.stop()
    polled = await get(second, submit.json["poll_url"])
    assert polled.status == 503 and polled.code == "job_store_unavailable"
    assert polled.headers["Retry-After"] == "1"
    assert len(gateway.payments) == 1  # the submit's: nothing signed for the poll
    # The replica that took the submit still holds its payment.
    assert (await get(first, submit.json["poll_url"])).status == 202


async def test_a_submit_redis_does_not_take_is_still_answered(
    start_proxy: Any, gateway: FakeGateway, redis_server: RedisServer, caplog: Any
) -> None:
    first, _ = await replicas(start_proxy, redis_server)
    redis_server.stop()
    submit = await post(first, VIDEO, path=VIDEOS)
    assert submit.status == 202  # paid for: the client gets its job
    assert any("held by this process only" in r.getMessage() for r in caplog.records)
    assert (await get(first, submit.json["poll_url"])).status == 202
    assert len(nonces(gateway)) == 1


@pytest.mark.parametrize(
    "junk", [b"\xff\xfe not ascii", b"x" * (20 * 1024)], ids=["not-ascii", "too-large"]
)
async def test_what_redis_holds_that_is_not_a_header_is_not_replayed(
    start_proxy: Any, gateway: FakeGateway, redis_server: RedisServer, junk: bytes
) -> None:
    first, second = await replicas(start_proxy, redis_server)
    submit = await post(first, VIDEO, path=VIDEOS)
    link = RedisLink(redis_server.url, timeout=5.0, prefix="blockrun-proxy")
    try:
        (key,) = await link.client.keys("*job*")
        await link.client.set(key, junk)
    finally:
        await link.aclose()
    polled = await get(second, submit.json["poll_url"])
    assert polled.status == 402 and polled.code == "job_payment_unknown"
    assert len(gateway.payments) == 1
