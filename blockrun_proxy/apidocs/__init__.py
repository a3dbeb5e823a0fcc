"""``GET /openapi.json`` (behind the token) and ``GET /docs``, the same rendered.

The document is built from the route table (openapi.py) on the first request, off the
event loop, and kept. The page is Swagger UI 5 (it renders OpenAPI 3.1) from the
``openapi-ui-bundles`` package (Apache-2.0, no dependencies, about 3.5 MB), served by the
proxy itself: no CDN, nothing fetched from elsewhere, a Content-Security-Policy that allows
only this origin. The package is found on the first request for its files, in a thread:
importing it at start would cost every start for a page most never open.

Like the spend page's, the page's shell (its HTML, scripts and styles) holds no data and is
served without the token: a browser cannot attach a bearer token to a navigation. Its
script reads ``/openapi.json`` with the token from the URL fragment (``/docs#token=...``)
or a form, kept in the tab's ``sessionStorage``. The page is read only ("Try it out" is
off): the proxy refuses a POST that carries an ``Origin``, as every browser's does.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

import orjson
from aiohttp import web

from blockrun_proxy import openapi
from blockrun_proxy.errors import NotFound

DOCS_PATH = "/docs"
SPEC_PATH = "/openapi.json"
OWN_ASSETS = {"docs.js": "text/javascript", "docs.css": "text/css"}
# The files of Swagger UI the page loads (the bundle carries its own presets).
VENDOR_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
DOCS_PATHS = frozenset(
    {DOCS_PATH, *(f"{DOCS_PATH}/{name}" for name in (*OWN_ASSETS, *VENDOR_ASSETS))}
)
# The page loads only this origin's scripts and styles and talks only to it; it may not be
# framed (clickjacking) or send a referrer. Swagger UI sets element styles from script,
# which a CSP does not govern; it needs no inline script and no eval.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; font-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NO_STORE = {"Cache-Control": "no-store"}
# Swagger UI's files change only with the package: revalidated (ETag), not re-sent.
REVALIDATE = {"Cache-Control": "no-cache"}


class ApiDocs:
    """The document and the page's files, each read or built once, off the loop."""

    def __init__(self, *, relay: bool) -> None:
        self._relay = relay
        self._spec: bytes | None = None
        self._files: dict[str, bytes] | None = None
        self._vendor: Path | None = None

    async def spec(self) -> bytes:
        if self._spec is None:
            self._spec = await asyncio.to_thread(self._build)
        return self._spec

    def _build(self) -> bytes:
        return orjson.dumps(openapi.build(relay=self._relay))

    async def own(self, name: str) -> bytes:
        if self._files is None:
            self._files = await asyncio.to_thread(_read_own)
        return self._files[name]

    async def vendor(self, name: str) -> Path:
        if self._vendor is None:
            self._vendor = await asyncio.to_thread(_vendor_dir)
        return self._vendor / name


APIDOCS_KEY = web.AppKey("apidocs", ApiDocs)


def _read_own() -> dict[str, bytes]:
    root = resources.files("blockrun_proxy.apidocs") / "static"
    return {name: (root / name).read_bytes() for name in ("index.html", *OWN_ASSETS)}


def _vendor_dir() -> Path:
    try:
        from openapi_ui_bundles import swagger_ui
    except ImportError:
        raise NotFound(
            "the API page's files are not installed (pip install openapi-ui-bundles); "
            f"the document itself is at {SPEC_PATH}"
        ) from None
    return Path(swagger_ui.static_path)


async def spec_json(request: web.Request) -> web.Response:
    body = await request.app[APIDOCS_KEY].spec()
    return web.Response(body=body, content_type="application/json", headers=NO_STORE)


async def page(request: web.Request) -> web.Response:
    body = await request.app[APIDOCS_KEY].own("index.html")
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={**PAGE_HEADERS, **NO_STORE},
    )


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    docs = request.app[APIDOCS_KEY]
    if name in OWN_ASSETS:
        return web.Response(
            body=await docs.own(name),
            content_type=OWN_ASSETS[name],
            charset="utf-8",
            headers={**PAGE_HEADERS, **NO_STORE},
        )
    if name in VENDOR_ASSETS:
        # Sent from the file (sendfile, or chunks in a thread), with an ETag.
        headers = {**PAGE_HEADERS, **REVALIDATE, "Content-Type": VENDOR_ASSETS[name]}
        return web.FileResponse(await docs.vendor(name), headers=headers)
    raise NotFound(f"no file {name!r} on the API page")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(SPEC_PATH, spec_json)
    router.add_get(DOCS_PATH, page)
    router.add_get(DOCS_PATH + "/{name}", asset)
