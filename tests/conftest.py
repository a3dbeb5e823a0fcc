"""Shared fixtures: a fake gateway and a real proxy server in front of it, on loopback."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from support.calls import TEST_NETWORK
from support.payments import assert_one_nonce_per_call
from support.svm import DEVNET
from support.svm import new_key as new_solana_key

from blockrun_proxy import config
from blockrun_proxy.config import Settings
from blockrun_proxy.server import running
from blockrun_proxy.testing import ApiKeyFakeGateway, FakeGateway, SolanaFakeGateway

SOLANA_NETWORK = DEVNET.caip2  # what the Solana fake quotes on in the tests


@dataclass
class Proxy:
    url: str  # e.g. http://127.0.0.1:PORT (the OpenAI base_url is url + "/v1")
    app: web.Application
    settings: Settings

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_clients`` that start a proxy (or ask for ``upstream_client``)
    run once per upstream HTTP client; the others use the default one."""
    marked = metafunc.definition.get_closest_marker("both_clients") is not None
    if marked and "upstream_client" in metafunc.fixturenames:
        metafunc.parametrize("upstream_client", config.UPSTREAM_CLIENTS)


@pytest.fixture
def upstream_client() -> str:
    """The --upstream-client the proxies of a test use (see pytest_generate_tests)."""
    return config.DEFAULT_UPSTREAM_CLIENT


@pytest.fixture
def wallet_key() -> str:
    # Generated per test: no key is ever committed in clear.
    return "0x" + secrets.token_hex(32)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway(network=TEST_NETWORK)
    await gw.start()
    yield gw
    await gw.close()
    # Whatever the test did, no client call ever carried two authorizations (issue 9).
    assert_one_nonce_per_call(gw)


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(
    gateway: FakeGateway, wallet_key: str, upstream_client: str
) -> AsyncIterator[StartProxy]:
    """Start a proxy in front of ``gateway``; keyword arguments override Settings fields."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Proxy:
            fields: dict[str, Any] = {
                "host": "127.0.0.1",
                "port": 0,
                "api_url": gateway.base_url,
                "networks": (TEST_NETWORK,),
                "wallet_key": wallet_key,
                "grace_seconds": 1.0,
                "state_dir": None,  # tests never write under the user's home
                "upstream_client": upstream_client,
            }
            fields.update(overrides)
            settings = Settings(**fields)
            runner, port = await stack.enter_async_context(running(settings))
            return Proxy(f"http://127.0.0.1:{port}", runner.app, settings)

        yield start


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Proxy:
    return await start_proxy()


@pytest.fixture
async def run_proxy(upstream_client: str) -> AsyncIterator[StartProxy]:
    """Start a proxy with these Settings fields (on loopback, port 0, nothing on disk), in
    front of whatever gateway they name: the other rails' fixtures build on it. It talks
    upstream through ``upstream_client`` (both kinds, in tests marked ``both_clients``)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**fields: Any) -> Proxy:
            settings = Settings(
                **{
                    "host": "127.0.0.1",
                    "port": 0,
                    "grace_seconds": 1.0,
                    "state_dir": None,
                    "upstream_client": upstream_client,
                    **fields,
                }
            )
            runner, port = await stack.enter_async_context(running(settings))
            return Proxy(f"http://127.0.0.1:{port}", runner.app, settings)

        yield start


@pytest.fixture
async def solana_gateway() -> AsyncIterator[SolanaFakeGateway]:
    gw = SolanaFakeGateway(network=SOLANA_NETWORK)
    await gw.start()
    yield gw
    await gw.close()
    # Whatever the test did, no client call sent two different Solana transactions.
    assert_one_nonce_per_call(gw)


@pytest.fixture
async def start_solana_proxy(
    solana_gateway: SolanaFakeGateway, run_proxy: StartProxy
) -> StartProxy:
    """Start a proxy paying ``solana_gateway`` from a throwaway Solana wallet."""

    async def start(**overrides: Any) -> Proxy:
        fields: dict[str, Any] = {
            "chain": "solana",
            "api_url": solana_gateway.base_url,
            "networks": (SOLANA_NETWORK,),
            "solana_key": new_solana_key(),
            "solana_rpc_url": solana_gateway.rpc_url,
        }
        fields.update(overrides)
        return await run_proxy(**fields)

    return start


@pytest.fixture
async def api_host() -> AsyncIterator[ApiKeyFakeGateway]:
    """The API-key host (prepaid credit, no x402)."""
    host = ApiKeyFakeGateway()
    await host.start()
    yield host
    await host.close()
    # Nothing x402 ever reaches this host.
    assert not [r for r in host.requests if "PAYMENT-SIGNATURE" in r.headers]


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[Any]:
    """A real redis-server for this test (skips, saying why, without the binary)."""
    from support.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
