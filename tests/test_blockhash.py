"""The Solana blockhash cache: warm reads never wait, an unreachable RPC is a clear 503."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from blockrun_proxy.blockhash import BlockhashCache, RpcFailure
from blockrun_proxy.errors import SolanaRpcUnreachable
from blockrun_proxy.testing import FakeSolanaRpc


@pytest.fixture
async def rpc() -> AsyncIterator[FakeSolanaRpc]:
    server = FakeSolanaRpc(rotate_seconds=0.05)
    await server.start()
    yield server
    await server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/?api-key=SECRET-IN-URL"


async def test_once_warm_signing_reads_without_asking_the_rpc(rpc: FakeSolanaRpc) -> None:
    cache = BlockhashCache(str(rpc.url), refresh_seconds=60, max_age_seconds=120)
    try:
        first = await cache.get()  # cold: one fetch
        assert rpc.calls == ["getLatestBlockhash"]
        for _ in range(100):
            assert cache.current() is first
            assert await cache.get() is first
        assert rpc.calls == ["getLatestBlockhash"]
        assert rpc.issued[first.value] == first.last_valid_block_height
    finally:
        await cache.close()


async def test_the_background_refresh_follows_the_chain(rpc: FakeSolanaRpc) -> None:
    cache = BlockhashCache(str(rpc.url), refresh_seconds=0.05, max_age_seconds=5)
    cache.start()
    try:
        first = await cache.get()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if cache.current().value != first.value:
                break
        assert cache.current().value != first.value
        assert cache.fetches >= 2 and cache.failures == 0
    finally:
        await cache.close()
    assert cache.current() is not None  # the last one stays readable after close


async def test_concurrent_cold_reads_share_one_fetch(rpc: FakeSolanaRpc) -> None:
    rpc.misbehave.delay_seconds = 0.1
    cache = BlockhashCache(str(rpc.url))
    try:
        results = await asyncio.gather(*(cache.get() for _ in range(20)))
        assert len({r.value for r in results}) == 1
        assert rpc.calls == ["getLatestBlockhash"]
    finally:
        await cache.close()


async def test_an_unreachable_rpc_is_a_503_that_names_only_the_host() -> None:
    cache = BlockhashCache(closed_port_url(), timeout_seconds=2)
    try:
        with pytest.raises(SolanaRpcUnreachable) as exc:
            await cache.get()
    finally:
        await cache.close()
    error = exc.value
    assert (error.status, error.code) == (503, "solana_rpc_unreachable")
    assert "127.0.0.1" in error.message and "Nothing was signed" in error.message
    assert "SECRET" not in error.message and "api-key" not in error.message
    assert b'"code":"solana_rpc_unreachable"' in error.to_json()


async def test_a_warm_cache_rides_out_an_outage_until_its_blockhash_is_too_old(
    rpc: FakeSolanaRpc,
) -> None:
    now = [0.0]
    cache = BlockhashCache(
        str(rpc.url), refresh_seconds=10, max_age_seconds=30, clock=lambda: now[0]
    )
    try:
        warm = await cache.get()
        rpc.misbehave.fail = 1000
        with pytest.raises(RpcFailure, match="HTTP 503"):
            await cache.refresh()
        now[0] = 29.0
        assert cache.current() is warm  # still young enough to sign with
        now[0] = 31.0
        with pytest.raises(SolanaRpcUnreachable) as exc:
            await cache.get()  # too old, and the fetch it tries fails
        assert "31s" in exc.value.message and "HTTP 503" in exc.value.message
        rpc.misbehave.fail = 0
        fresh = await cache.get()  # the RPC is back: one fetch, and signing goes on
        assert fresh.fetched_at == 31.0
    finally:
        await cache.close()


async def test_the_background_loop_recovers_after_failures(rpc: FakeSolanaRpc) -> None:
    rpc.misbehave.fail = 2
    cache = BlockhashCache(str(rpc.url), refresh_seconds=0.05, max_age_seconds=5)
    cache.start()
    try:
        # Until a fetch has succeeded (not "fetches > failures": a fetch is counted when
        # it starts, so that holds while the third one is still in flight).
        blockhash = None
        for _ in range(200):
            await asyncio.sleep(0.02)
            with contextlib.suppress(SolanaRpcUnreachable):
                blockhash = cache.current()
                break
        assert cache.failures == 2
        assert blockhash is not None and blockhash.value in rpc.issued
    finally:
        await cache.close()


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (web.Response(status=500), "HTTP 500"),
        (web.Response(body=b"not json"), "not JSON"),
        (web.Response(body=b"[1]"), "not a JSON-RPC object"),
        (web.json_response({"error": {"code": -32005, "message": "x"}}), "JSON-RPC error -32005"),
        (web.json_response({"result": {"value": {"blockhash": "0xbad"}}}), "no blockhash"),
        (
            web.json_response(
                {"result": {"value": {"blockhash": "1" * 32, "lastValidBlockHeight": -1}}}
            ),
            "no blockhash",
        ),
        (web.Response(body=b"{" + b" " * 70_000 + b"}"), "too large"),
        (web.Response(status=302, headers={"Location": "http://example.invalid/"}), "HTTP 302"),
    ],
)
async def test_bad_answers_are_failures_not_blockhashes(
    answer: web.Response, why: str, aiohttp_server: object
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return answer

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)  # type: ignore[operator]
    cache = BlockhashCache(str(server.make_url("/")))
    try:
        with pytest.raises(RpcFailure, match=why):
            await cache.refresh()
        assert cache.failures == 1
    finally:
        await cache.close()


def test_refresh_must_be_shorter_than_the_age_limit() -> None:
    with pytest.raises(ValueError):
        BlockhashCache("http://127.0.0.1:1/", refresh_seconds=30, max_age_seconds=30)


async def test_a_closed_cache_fetches_nothing(rpc: FakeSolanaRpc) -> None:
    cache = BlockhashCache(str(rpc.url))
    await cache.close()
    with pytest.raises(SolanaRpcUnreachable, match="closed"):
        await cache.get()
    assert rpc.calls == []
