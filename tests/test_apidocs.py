"""GET /openapi.json (OpenAPI 3.1 of the proxy's own routes, from the route table) and
GET /docs (the same, rendered by Swagger UI served from a Python package: no CDN)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from openapi_spec_validator import validate
from support.calls import get

from blockrun_proxy.openapi import PROXY_ERRORS
from blockrun_proxy.routes import RELAY_ROUTES, ROUTES

TOKEN = "docs-token-of-at-least-16"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# Every header the proxy sets on its answers (costs.py, apikey.py, errors.py, app.py).
PROXY_HEADERS = {
    "x-request-id",
    "x-blockrun-cost-usd",
    "x-litellm-response-cost",
    "x-blockrun-settlement",
    "x-blockrun-upstream-status",
    "x-should-retry",
    "x-blockrun-cost-source",
}


async def spec_of(proxy: Any) -> dict[str, Any]:
    reply = await get(proxy, "/openapi.json", headers=BEARER)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    return reply.json


async def test_the_document_is_valid_openapi_3_1_of_every_route(start_proxy) -> None:
    proxy = await start_proxy(token=TOKEN)
    spec = await spec_of(proxy)
    validate(spec)  # raises on anything the 3.1 schema refuses
    assert spec["openapi"] == "3.1.0"
    paths = spec["paths"]
    for route in (*ROUTES, *RELAY_ROUTES):
        assert route.label in paths, route.name
        for method in ("post", "get") if route.method == "*" else (route.method.lower(),):
            operation = paths[route.label][method]
            responses = operation["responses"]
            assert {"200", *PROXY_ERRORS} - {"415"} <= set(responses), route.name
            ok = responses["200"]
            assert "x-blockrun-cost-usd" in ok["headers"] and "x-request-id" in ok["headers"]
            if route.streams:
                assert "text/event-stream" in ok["content"], route.name
    for ops in ("/healthz", "/readyz", "/metrics", "/v1/spend", "/spend", "/docs"):
        assert "get" in paths[ops]
    assert paths["/healthz"]["get"]["security"] == [{}]  # the probes need no token
    assert "audio/*" in paths["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert "202" in paths["/v1/videos/generations"]["post"]["responses"]
    assert set(spec["components"]["headers"]) >= PROXY_HEADERS
    paid_failure = spec["components"]["responses"]["E424"]
    assert {"x-should-retry", "x-blockrun-upstream-status"} <= set(paid_failure["headers"])
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["message", "type", "code"]


async def test_the_document_follows_the_routes_setting(start_proxy) -> None:
    proxy = await start_proxy(routes="table")
    paths = (await spec_of(proxy))["paths"]
    assert "/v1/{path}" not in paths and "/v1/messages" in paths


async def test_every_registered_route_is_documented(start_proxy) -> None:
    """The hand-written operations routes stay equal to what the app serves."""
    proxy = await start_proxy()
    paths = set((await spec_of(proxy))["paths"])
    served = set()
    for resource in proxy.app.router.resources():
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", resource.canonical)
        if path.startswith("/api/") or path.startswith(("/docs/", "/spend/")):
            continue  # the /api aliases and the pages' files
        served.add(path)
    assert served == paths


async def test_the_document_needs_the_token_and_the_page_shell_does_not(start_proxy) -> None:
    proxy = await start_proxy(token=TOKEN)
    assert (await get(proxy, "/openapi.json")).status == 401
    page = await get(proxy, "/docs")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    html = page.body.decode()
    assert "http" not in html.replace("http-equiv", "")  # no CDN, nothing from elsewhere
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        if src.startswith("data:"):
            continue
        asset = await get(proxy, src)
        assert asset.status == 200 and len(asset.body) > 100, src
    bundle = await get(proxy, "/docs/swagger-ui-bundle.js")
    assert bundle.headers["Content-Type"].startswith("text/javascript")
    assert "ETag" in bundle.headers
    for name in ("..%2Fapp.py", "index.j2", "swagger-ui-bundle.js.map"):  # only the page's
        assert (await get(proxy, "/docs/" + name)).status == 401  # not public: the token
        assert (await get(proxy, "/docs/" + name, headers=BEARER)).status == 404


def test_starting_the_proxy_never_imports_the_page_package() -> None:
    code = (
        "import sys, blockrun_proxy.app, blockrun_proxy.cli, blockrun_proxy.server; "
        "assert 'openapi_ui_bundles' not in sys.modules, 'imported at start'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
async def test_a_web_page_cannot_read_either(start_proxy, path) -> None:
    proxy = await start_proxy()
    reply = await get(proxy, path, headers={"Origin": "https://evil.example"})
    assert reply.status == 403
