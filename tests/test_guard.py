"""Web pages cannot spend the wallet: the browser-shaped requests of issue 9 (finding 1),
each refused before anything reaches the gateway, and the plain clients still served."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from support.calls import FRACTIONAL_MODEL, JSON

from blockrun_proxy.config import Settings
from blockrun_proxy.guard import Guard, host_name

BODY = orjson.dumps(
    {
        "model": FRACTIONAL_MODEL,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "spend it"}],
    }
)
EVIL = "https://evil.example"
APP = "http://localhost:3000"


async def send(
    proxy, method: str, path: str, headers: dict[str, str], body: bytes | None = BODY
) -> tuple[aiohttp.ClientResponse, bytes]:
    # skip_auto_headers: nothing but what the test names (aiohttp would add a Content-Type).
    async with (
        aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session,
        session.request(method, proxy.url + path, data=body, headers=headers) as resp,
    ):
        return resp, await resp.read()


def error_code(raw: bytes) -> str:
    error = orjson.loads(raw)["error"]
    assert set(error) >= {"message", "type", "code"}
    return str(error["code"])


# What a page on evil.example gets its visitor's browser to send to 127.0.0.1:4001.
BROWSER_SHAPED = [
    pytest.param(
        "POST",
        {"Content-Type": "text/plain", "Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
        403,
        "origin_not_allowed",
        id="text-plain-simple-request",
    ),
    pytest.param(
        "POST",
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL},
        403,
        "origin_not_allowed",
        id="cross-site-form",
    ),
    pytest.param(
        "POST",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
        id="form-without-origin",
    ),
    pytest.param(
        "POST", {"Content-Type": "text/plain"}, 415, "unsupported_media_type", id="text-plain"
    ),
    pytest.param("POST", {}, 415, "unsupported_media_type", id="no-content-type"),
    pytest.param(
        "POST",
        {**JSON, "Sec-Fetch-Site": "cross-site"},
        403,
        "cross_site_request",
        id="cross-site-fetch-metadata",
    ),
    pytest.param(
        "POST", {**JSON, "Host": "evil.example:4001"}, 403, "host_not_allowed", id="dns-rebinding"
    ),
    pytest.param(
        "POST",
        {**JSON, "Host": "evil.example:4001", "Origin": "http://evil.example:4001"},
        403,
        "host_not_allowed",
        id="dns-rebinding-same-origin",
    ),
    pytest.param(
        "OPTIONS",
        {
            "Origin": EVIL,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        403,
        "origin_not_allowed",
        id="preflight-without-cors",
    ),
    pytest.param("POST", {**JSON, "Origin": "null"}, 403, "origin_not_allowed", id="null-origin"),
]


@pytest.mark.parametrize(("method", "headers", "status", "code"), BROWSER_SHAPED)
async def test_browser_shaped_requests_reach_nothing_and_pay_nothing(
    proxy, gateway, method, headers, status, code
):
    resp, raw = await send(proxy, method, "/v1/chat/completions", headers)
    assert resp.status == status, raw
    assert resp.headers["Content-Type"].startswith("application/json")
    assert error_code(raw) == code
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert gateway.requests == []
    assert gateway.payments == []


@pytest.mark.parametrize(("method", "headers", "status", "code"), BROWSER_SHAPED)
async def test_with_a_token_the_source_checks_still_come_first(
    start_proxy, gateway, method, headers, status, code
):
    proxy = await start_proxy(token="t" * 32)
    resp, raw = await send(proxy, method, "/v1/chat/completions", headers)
    # A page is told 403 before any token question; a wrong body type without the token
    # is simply unauthorized.
    assert (resp.status, error_code(raw)) == (
        (status, code) if status == 403 else (401, "invalid_proxy_token")
    )
    assert gateway.requests == []


async def test_other_routes_refuse_foreign_origins_and_hosts_too(proxy, gateway):
    for headers in ({"Origin": EVIL}, {"Host": "evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        for path in ("/v1/models", "/metrics"):
            resp, _ = await send(proxy, "GET", path, headers, body=None)
            assert resp.status == 403, (path, headers)
    assert gateway.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        # curl -H 'Content-Type: application/json' -d @body http://127.0.0.1:4001/...
        {"User-Agent": "curl/8.5.0", "Accept": "*/*", **JSON},
        {**JSON, "Host": "localhost:4001"},
        {**JSON, "Host": "LOCALHOST"},
        {**JSON, "Host": "127.0.0.2:4001"},
        {**JSON, "Host": "[::1]:4001"},
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "Application/JSON"},
        {**JSON, "Sec-Fetch-Site": "none"},  # typed into the address bar: not a page
    ],
)
async def test_plain_clients_are_served(proxy, gateway, headers):
    resp, raw = await send(proxy, "POST", "/v1/chat/completions", headers)
    assert resp.status == 200, raw
    assert len(gateway.settled) == 1


async def test_probes_answer_any_host_for_the_kubelet(proxy, gateway):
    # The kubelet calls the pod IP; a probe spends nothing and reveals only liveness.
    for path in ("/healthz", "/readyz"):
        resp, _ = await send(proxy, "GET", path, {"Host": "10.1.2.3:4001"}, body=None)
        assert resp.status == 200


async def test_allowed_hosts_adds_names(start_proxy, gateway):
    proxy = await start_proxy(allowed_hosts=("proxy.internal",))
    resp, _ = await send(proxy, "POST", "/v1/chat/completions", {**JSON, "Host": "proxy.internal"})
    assert resp.status == 200
    resp, _ = await send(proxy, "POST", "/v1/chat/completions", {**JSON, "Host": "other.internal"})
    assert resp.status == 403


# --------------------------------------------------------------------------- CORS opt-in


async def test_cors_origins_get_a_proper_preflight_and_readable_answers(start_proxy, gateway):
    proxy = await start_proxy(cors_origins=(APP,), token="t" * 32)
    preflight = {
        "Origin": APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
    }
    resp, raw = await send(proxy, "OPTIONS", "/v1/chat/completions", preflight, body=None)
    assert resp.status == 204, raw
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert resp.headers["Vary"] == "Origin"
    assert int(resp.headers["Access-Control-Max-Age"]) > 0

    # The real call from that page: its browser says cross-site, the origin is listed.
    headers = {
        **JSON,
        "Origin": APP,
        "Sec-Fetch-Site": "same-site",
        "Authorization": "Bearer " + "t" * 32,
    }
    resp, raw = await send(proxy, "POST", "/v1/chat/completions", headers)
    assert resp.status == 200, raw
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert "x-blockrun-cost-usd" in resp.headers["Access-Control-Expose-Headers"]
    assert len(gateway.settled) == 1

    # Any other origin is still refused, preflight or not.
    for method, headers in (
        ("OPTIONS", {**preflight, "Origin": EVIL}),
        ("POST", {**JSON, "Origin": EVIL, "Authorization": "Bearer " + "t" * 32}),
    ):
        resp, raw = await send(proxy, method, "/v1/chat/completions", headers)
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert len(gateway.chat_requests) == 2  # the listed origin's one call: probe and paid send


@pytest.mark.parametrize("origin", ["*", "null", "app.example", "https://app.example/path"])
def test_a_wildcard_or_malformed_cors_origin_is_refused_at_start(origin):
    with pytest.raises(ValueError, match="cors-origins"):
        Settings(cors_origins=(origin,)).check()


# --------------------------------------------------------------------------- the Host rule


@pytest.mark.parametrize(
    ("settings", "host", "allowed"),
    [
        (Settings(), "127.0.0.1", True),
        (Settings(), "localhost", True),
        (Settings(), "::1", True),
        (Settings(), "10.0.0.5", False),
        (Settings(), "evil.example", False),
        (Settings(host="10.0.0.5", allow_public=True), "10.0.0.5", True),
        (Settings(host="10.0.0.5", allow_public=True), "10.0.0.6", False),
        # A wildcard bind without a token: an IP literal addressed this machine directly
        # (rebinding needs a DNS name); a name must be listed.
        (Settings(host="0.0.0.0", allow_public=True), "10.0.0.5", True),
        (Settings(host="::", allow_public=True), "fd00::5", True),
        (Settings(host="0.0.0.0", allow_public=True), "svc.cluster.local", False),
        (
            Settings(host="0.0.0.0", allow_public=True, allowed_hosts=("svc.cluster.local",)),
            "svc.cluster.local",
            True,
        ),
        (Settings(allowed_hosts=("*",)), "anything.example", True),
    ],
)
def test_host_rule(settings, host, allowed):
    guard = Guard.from_settings(settings)
    assert (not guard.check_host or guard.host_allowed(host)) is allowed


def test_a_public_bind_with_a_token_leaves_the_host_to_the_token():
    assert not Guard.from_settings(Settings(host="0.0.0.0", token="t" * 16)).check_host
    assert Guard.from_settings(Settings(host="127.0.0.1", token="t" * 16)).check_host


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:4001", "127.0.0.1"),
        ("[::1]:4001", "::1"),
        ("[::1]", "::1"),
        ("LocalHost.:4001", "localhost"),
        ("evil.example", "evil.example"),
    ],
)
def test_host_name(header, name):
    assert host_name(header) == name
