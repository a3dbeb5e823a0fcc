"""https:// with a certificate the test makes, and an egress proxy as ``egress.proxy_for``
decides it (HTTPS_PROXY/HTTP_PROXY/NO_PROXY): CONNECT tunnels for https, absolute-form
requests for http."""

from __future__ import annotations

import ssl
from functools import partial

import pytest
import trustme
from support.connect_proxy import ConnectProxy
from support.scripted import ScriptedServer, chunked, ok

from blockrun_proxy import egress, h1
from blockrun_proxy.config import Settings
from blockrun_proxy.h1.route import Proxy, ProxyFor, origin_url


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = await ScriptedServer(lambda r: chunked(b"secret ", b"answer")).start(context)
    yield server
    await server.close()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def proxies(**settings: str) -> ProxyFor:
    """What the core gives the client: egress's decision for these settings."""
    return partial(egress.proxy_for, Settings(**settings))


async def test_https_verifies_the_server_and_relays_the_body(ca, tls_server):
    async with h1.Client(ssl_context=trusting(ca)) as client:
        for _ in range(3):
            response = await client.request(
                "POST", f"https://localhost:{tls_server.port}/v1", body=b"x"
            )
            assert await response.read() == b"secret answer"
    assert tls_server.connections == 1  # keep-alive over TLS too


async def test_https_refuses_an_untrusted_certificate(tls_server):
    async with h1.Client() as client:  # the default CA store does not know the test's CA
        with pytest.raises(h1.ConnectError):
            await client.request("GET", f"https://localhost:{tls_server.port}/")
    assert not tls_server.requests


async def test_https_names_the_host_by_sni_and_refuses_another_hosts_certificate(ca):
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(context)  # trusted CA, wrong name
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = await ScriptedServer(lambda r: ok()).start(context)
    async with h1.Client(ssl_context=trusting(ca)) as client:
        with pytest.raises(h1.ConnectError, match="Hostname mismatch"):
            await client.request("POST", f"https://localhost:{server.port}/", body=b"{}")
    assert names == ["localhost"]
    assert not server.requests
    await server.close()


async def test_https_through_a_connect_proxy_with_credentials(ca, tls_server):
    proxy = ConnectProxy()
    await proxy.start()
    host_port = proxy.url.removeprefix("http://")
    client = h1.Client(
        ssl_context=trusting(ca), proxy_for=proxies(https_proxy=f"http://user:p%40ss@{host_port}")
    )
    async with client:
        for _ in range(2):
            response = await client.request("GET", f"https://localhost:{tls_server.port}/v1/models")
            assert await response.read() == b"secret answer"
    assert proxy.lines == [f"CONNECT localhost:{tls_server.port} HTTP/1.1"]  # one tunnel, reused
    assert proxy.authorizations == ["Basic dXNlcjpwQHNz"]  # user:p@ss
    assert tls_server.requests[0].line == "GET /v1/models HTTP/1.1"
    await proxy.close()


async def test_a_refused_tunnel_is_a_connect_error(ca, tls_server):
    proxy = ConnectProxy(refuse=True)
    await proxy.start()
    async with h1.Client(ssl_context=trusting(ca), proxy_for=proxies(https_proxy=proxy.url)) as c:
        with pytest.raises(h1.ConnectError, match="refused the tunnel"):
            await c.request("GET", f"https://localhost:{tls_server.port}/")
    await proxy.close()


async def test_no_proxy_connects_directly(ca, tls_server):
    proxy = ConnectProxy()
    await proxy.start()
    proxy_for = proxies(https_proxy=proxy.url, no_proxy="example.org, localhost")
    async with h1.Client(ssl_context=trusting(ca), proxy_for=proxy_for) as client:
        response = await client.request("GET", f"https://localhost:{tls_server.port}/")
        assert await response.read() == b"secret answer"
    assert proxy.lines == []
    await proxy.close()


async def test_http_through_a_proxy_sends_the_absolute_url():
    proxy = ConnectProxy(plain=lambda line, headers, body: ok(b"via proxy"))
    await proxy.start()
    async with h1.Client(proxy_for=proxies(http_proxy=proxy.url)) as client:
        response = await client.request(
            "POST", "http://gateway.invalid:8080/api/v1/x?y=1", body=b"{}"
        )
        assert await response.read() == b"via proxy"
    assert proxy.lines == ["POST http://gateway.invalid:8080/api/v1/x?y=1 HTTP/1.1"]
    await proxy.close()


def test_the_client_asks_for_the_proxy_of_each_origin_once():
    asked: list[str] = []

    def proxy_for(origin: str) -> str | None:
        asked.append(origin)
        return "proxy.internal:3128"

    client = h1.Client(proxy_for=proxy_for)
    origin = ("https", "::1", 8443)
    assert client._proxy(origin) == Proxy("proxy.internal", 3128, None)
    assert client._proxy(origin) == Proxy("proxy.internal", 3128, None)
    assert asked == ["https://[::1]:8443"] == [origin_url(*origin)]


def test_proxy_urls():
    assert Proxy.parse("proxy.internal:3128") == Proxy("proxy.internal", 3128, None)
    with pytest.raises(ValueError, match="only http://"):
        Proxy.parse("socks5://proxy:1080")


async def test_a_proxy_it_cannot_use_is_a_connect_error_before_anything_is_sent():
    async with h1.Client(proxy_for=proxies(https_proxy="socks5://proxy:1080")) as client:
        with pytest.raises(h1.ConnectError, match="only http://"):
            await client.request("POST", "https://gateway.invalid/api", body=b"{}")


async def test_a_context_factory_is_called_at_the_first_https_connection_only(ca, tls_server):
    """The proxy's CA bundle (SSL_CERT_FILE) is loaded when the gateway is first reached
    over TLS, not when the client is built: that load is startup time."""
    built: list[ssl.SSLContext] = []

    def build() -> ssl.SSLContext:
        built.append(trusting(ca))
        return built[-1]

    async with h1.Client(ssl_context=build) as client:
        assert built == []
        for _ in range(2):
            response = await client.request(
                "POST", f"https://localhost:{tls_server.port}/v1", body=b"x"
            )
            assert await response.read() == b"secret answer"
    assert len(built) == 1


def test_the_configured_ca_bundle_is_built_when_first_needed(ca, tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    assert egress.ssl_context_factory(Settings()) is None
    factory = egress.ssl_context_factory(Settings(ssl_cert_file=str(bundle)))
    assert factory is not None
    context = factory()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
