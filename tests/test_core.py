"""The payment core: built once, by ``open_core``, for the proxy and the in-process provider."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from support.calls import TEST_NETWORK, post
from support.gateway_client import ANTHROPIC_BODY

import blockrun_proxy
from blockrun_proxy import h1
from blockrun_proxy.budget import MemoryBudgetStore
from blockrun_proxy.config import UPSTREAM_CLIENTS, Settings
from blockrun_proxy.core import POOL_KEEPALIVE_SECONDS, USER_AGENT, open_core
from blockrun_proxy.h1.route import Proxy
from blockrun_proxy.limits import Limits
from blockrun_proxy.upstream import GATEWAY_MAX_FIELD_SIZE

PACKAGE = Path(blockrun_proxy.__file__).parent


def calls_to(name: str) -> set[str]:
    """The modules of blockrun_proxy (outside the fake gateway) that call ``name(...)``."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if "testing" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    found.add(path.relative_to(PACKAGE).as_posix())
    return found


def test_the_gateway_and_its_session_are_assembled_in_one_place() -> None:
    assert calls_to("Gateway") == {"core.py"}
    assert calls_to("payer_for") == {"core.py"}
    assert calls_to("QuoteBook") == {"core.py"}
    # The other sessions are the RPC clients' own (chain reads, Solana blockhashes).
    assert calls_to("ClientSession") == {"core.py", "evm_rpc.py", "blockhash.py"}
    assert calls_to("open_core") == {"app.py", "inprocess.py"}


@pytest.mark.parametrize("kind", UPSTREAM_CLIENTS)
async def test_the_upstream_client_as_the_core_builds_it(tmp_path, kind) -> None:
    settings = Settings(
        api_url="https://blockrun.ai/api",
        networks=(TEST_NETWORK,),
        max_concurrent=7,
        idle_timeout_seconds=123.0,
        budget_usd=Decimal("1"),
        state_dir=tmp_path,
        upstream_client=kind,
        https_proxy="http://egress:3128",
        no_proxy="blockrun.ai",
    )
    async with open_core(settings) as core:
        session = core.session
        pool_size = Limits.from_settings(settings).pool_size
        assert pool_size >= 7
        if isinstance(session, h1.Client):
            # Nothing to configure away: it keeps no cookies, adds no Accept-Encoding,
            # never decompresses nor follows a redirect (tests/h1).
            assert session.limits == h1.Limits(pool_size, POOL_KEEPALIVE_SECONDS)
            assert session._timeouts.read == 123.0
            assert session._user_agent == USER_AGENT
            assert session._max_head >= GATEWAY_MAX_FIELD_SIZE
            # The egress proxy as egress.py decides it, NO_PROXY included.
            assert session._proxy(("https", "blockrun.ai", 443)) is None
            assert session._proxy(("https", "sol.example", 443)) == Proxy("egress", 3128)
        else:
            assert isinstance(session, aiohttp.ClientSession)
            assert session.connector is not None
            assert session.connector.limit == pool_size
            assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
            assert session.auto_decompress is False
            assert session.trust_env is False  # the egress proxy comes from Settings (egress.py)
            assert session.timeout.total is None and session.timeout.sock_read == 123.0
            assert "Accept-Encoding" in session.skip_auto_headers
            assert session._max_field_size == GATEWAY_MAX_FIELD_SIZE
        assert isinstance(core.budget, MemoryBudgetStore)
        assert core.payer.budget is core.budget  # every rail reserves in this one
        assert core.gateway.quotes is core.quotes
        assert core.recorder is not None and core.observers == [core.recorder.observe]
    assert session.closed


async def test_a_redirected_call_on_any_route_is_not_followed(proxy, gateway) -> None:
    gateway.misbehave.redirect_to = "http://127.0.0.1:9/api/v1/messages"
    gateway.misbehave.redirect_unpaid = True
    reply = await post(proxy, ANTHROPIC_BODY, path="/v1/messages")
    assert reply.status == 502 and reply.code == "gateway_redirect"
    assert gateway.payments == []


async def test_per_call_gateways_pick_their_rail_by_the_key_they_are_given() -> None:
    from blockrun_proxy.apikey_gateway import ApiKeyGateway

    settings = Settings(api_url="https://blockrun.ai/api", networks=(TEST_NETWORK,), state_dir=None)
    async with open_core(settings, record_spend=False) as core:
        assert core.rail == "base" and not isinstance(core.gateway, ApiKeyGateway)
        keyed = core.gateway_for(wallet_key="brk_live_" + "a" * 20)
        assert isinstance(keyed, ApiKeyGateway)
        assert keyed.origin == "https://api.blockrun.ai"
    keyed_settings = Settings(api_key="brk_live_" + "b" * 20, state_dir=None)
    async with open_core(keyed_settings, record_spend=False) as core:
        assert core.rail == "apikey" and isinstance(core.gateway, ApiKeyGateway)
        assert core.blockhashes is None and core.payer.solana is None
        # An explicit wallet is a deliberate choice of the x402 rail (blockrun-llm's rule).
        wallet = core.gateway_for(wallet_key="0x" + "1" * 64)
        assert not isinstance(wallet, ApiKeyGateway)
