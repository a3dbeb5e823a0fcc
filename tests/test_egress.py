"""The upstream as a cluster sees it: the gateway over TLS with a CA trusted through
``SSL_CERT_FILE``, reached through an egress ``CONNECT`` proxy (``HTTPS_PROXY``), with
``NO_PROXY`` honoured. Paid and streamed, as any call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.calls import PRICED_MODEL, TEST_NETWORK, chat, post
from support.connect_proxy import ConnectProxy
from support.gateway_client import ANTHROPIC_BODY, sse_events
from support.payments import assert_one_nonce_per_call
from support.tls import HOST, TLSGateway

from blockrun_proxy import egress
from blockrun_proxy.config import Settings
from blockrun_proxy.testing import ApiKeyFakeGateway, FakeGateway

# The payment rules hold whichever HTTP client talks to the gateway.
pytestmark = pytest.mark.both_clients


@pytest.fixture
async def tls(tmp_path) -> AsyncIterator[TLSGateway]:
    gateway = TLSGateway(FakeGateway(network=TEST_NETWORK), tmp_path)
    await gateway.start()
    yield gateway
    await gateway.close()
    assert_one_nonce_per_call(gateway.gateway)


@pytest.fixture
async def egress_proxy() -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy()
    await proxy.start()
    yield proxy
    await proxy.close()


async def paid_stream(proxy) -> None:
    reply = await post(proxy, chat(PRICED_MODEL, stream=True, max_tokens=32))
    assert reply.status == 200, reply.body
    assert reply.body.endswith(b"data: [DONE]\n\n")
    assert float(reply.headers["x-blockrun-cost-usd"]) > 0
    reply = await post(proxy, {**ANTHROPIC_BODY, "stream": True}, path="/v1/messages")
    assert reply.status == 200 and sse_events(reply.body)[-1][0] == "message_stop"


async def test_a_tls_gateway_trusted_through_ssl_cert_file(start_proxy, tls) -> None:
    settings = Settings.from_env({"SSL_CERT_FILE": str(tls.ca_file)}, secrets=False)
    proxy = await start_proxy(api_url=tls.gateway.base_url, ssl_cert_file=settings.ssl_cert_file)
    await paid_stream(proxy)
    assert len(tls.gateway.settled) == 2


async def test_an_untrusted_certificate_is_never_paid(start_proxy, tls) -> None:
    proxy = await start_proxy(api_url=tls.gateway.base_url, probe_retries=0)
    reply = await post(proxy, chat(PRICED_MODEL))
    assert reply.status == 502 and reply.code == "gateway_unreachable"
    assert tls.gateway.requests == [] and tls.gateway.payments == []


async def test_through_an_egress_connect_proxy(start_proxy, tls, egress_proxy) -> None:
    proxy = await start_proxy(
        api_url=tls.gateway.base_url,
        ssl_cert_file=str(tls.ca_file),
        https_proxy=egress_proxy.url,
        no_proxy="example.internal,.svc",
    )
    await paid_stream(proxy)
    assert egress_proxy.tunnels and set(egress_proxy.tunnels) == {f"{HOST}:{tls.port}"}
    # The tunnel carries TLS: the proxy in the middle never sees a payment in the clear.
    assert egress_proxy.seen and b"PAYMENT-SIGNATURE" not in egress_proxy.seen.upper()
    assert len(tls.gateway.settled) == 2


async def test_no_proxy_goes_direct(start_proxy, tls, egress_proxy) -> None:
    proxy = await start_proxy(
        api_url=tls.gateway.base_url,
        ssl_cert_file=str(tls.ca_file),
        https_proxy=egress_proxy.url,
        no_proxy=f"other.example,{HOST}",
    )
    await paid_stream(proxy)
    assert egress_proxy.tunnels == []


async def test_the_api_key_rail_goes_through_the_egress_proxy_too(
    run_proxy, tmp_path, egress_proxy
) -> None:
    """The API host is another origin than the gateway: its calls and its catalogue take
    the same egress proxy and CA bundle, whichever client sends them."""
    host = TLSGateway(ApiKeyFakeGateway(), tmp_path)
    await host.start()
    try:
        key = host.gateway.new_key()
        proxy = await run_proxy(
            api_key=key,
            api_key_url=host.gateway.base_url,
            ssl_cert_file=str(host.ca_file),
            https_proxy=egress_proxy.url,
        )
        reply = await post(proxy, chat(PRICED_MODEL, stream=True, max_tokens=32))
        assert reply.status == 200, reply.body
        assert reply.body.endswith(b"data: [DONE]\n\n")
        assert len(host.gateway.charges) == 1
        assert set(egress_proxy.tunnels) == {f"{HOST}:{host.port}"}
        assert egress_proxy.seen and key.encode() not in egress_proxy.seen
    finally:
        await host.close()


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("*", "blockrun.ai", 443, True),
        ("blockrun.ai", "blockrun.ai", 443, True),
        (".blockrun.ai", "sol.blockrun.ai", 443, True),
        ("blockrun.ai", "notblockrun.ai", 443, False),
        ("blockrun.ai:8443", "blockrun.ai", 443, False),
        ("blockrun.ai:443", "blockrun.ai", 443, True),
        (" , localhost", "localhost", 80, True),
        ("[::1]", "::1", 443, True),
        ("[::1]:443", "[::1]", 443, True),
        ("localhost:8443", "localhost", 8443, True),
        ("::1", "::1", 443, True),
        ("", "blockrun.ai", 443, False),
    ],
)
def test_no_proxy_rules(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    assert egress.bypasses(no_proxy, host, port) is bypassed


def test_the_proxy_is_chosen_by_scheme() -> None:
    settings = Settings(https_proxy="proxy:3128", http_proxy="http://plain:3128")
    assert egress.proxy_for(settings, "https://blockrun.ai/api") == "http://proxy:3128"
    assert egress.proxy_for(settings, "http://127.0.0.1:8402/api") == "http://plain:3128"
    assert egress.proxy_for(Settings(), "https://blockrun.ai/api") is None
    assert egress.ssl_context(Settings()) is None  # the system's CAs, built by aiohttp already
