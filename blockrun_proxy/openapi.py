"""The proxy's own API as an OpenAPI 3.1 document, built from the route table.

Every row of ``routes.ROUTES`` (and the relay rows when ``--routes all``) becomes an
operation: its body guard says what request it takes, its ``streams`` flag whether it may
answer ``text/event-stream``, its ``Units``/``Measure`` nothing the client sees. The
operations routes (probes, metrics, spend, these docs) are listed here by hand; a test
keeps the list equal to what ``create_app`` registers.

What every paid answer carries (the cost and request-id headers) and every error the proxy
answers itself (the OpenAI-shaped ``{"error": {"message", "type", "code"}}`` with its
status: 402 refused or unpayable, 403 a browser or a foreign ``Host``, 408 a late body,
413 too large, 415 not JSON, 424 failed after payment, 429 overloaded, 502 unreachable or
unreadable gateway, 503 draining or a shared budget store down, 504 gateway timeout) are
shared components. Errors the gateway answers before any payment pass through in the
gateway's own envelope; the schema says so.

Pure and cheap: no I/O, built once per app on first request (apidocs.py serves it).
"""

from __future__ import annotations

from typing import Any

from blockrun_proxy.routes import API_PREFIX, RELAY_METHODS, RELAY_ROUTES, ROUTES, Body, Route

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
SSE = "text/event-stream"
ERROR_REF = "#/components/schemas/Error"
# Statuses the proxy answers itself, and what each means on any route (errors.py).
PROXY_ERRORS: dict[str, str] = {
    "400": "The request breaks the route's rules (invalid JSON, no model, Anthropic without "
    "`max_tokens`...): nothing was sent upstream or paid.",
    "401": "Missing or wrong bearer token (`BLOCKRUN_PROXY_TOKEN`).",
    "402": "Nothing was paid: the gateway's price was refused by the payer policy (over "
    "`--max-price-usd`, over the budget, a network, asset or `payTo` not allowed...), no "
    "wallet is configured, or a payment signed up front was refused as not used. `code` "
    "names the reason.",
    "403": "A web page (`Origin`, `Sec-Fetch-Site: cross-site`) or a `Host` the proxy does "
    "not answer to: refused before the token is looked at.",
    "408": "The request body did not arrive within `--body-timeout`; nothing was sent.",
    "413": "The request body is over the size limit.",
    "415": "A POST that is not `Content-Type: application/json`.",
    "424": "The call failed after its payment was sent: it may have been charged, and "
    "retrying it is a new paid call. `x-should-retry: false`; `x-blockrun-upstream-status` "
    "says what the gateway did.",
    "429": "The proxy's own limit (`--max-concurrent`, `--max-queue`): nothing was sent or "
    "paid, retry after `Retry-After`. (A gateway's 429 before payment passes through too.)",
    "502": "The gateway could not be reached, redirected, or sent an answer the proxy "
    "could not read, before anything was paid.",
    "503": "The proxy is draining, or the shared budget store (Redis) did not answer: "
    "nothing was signed. Retry after `Retry-After`.",
    "504": "The gateway did not answer within `--upstream-idle-timeout` before any payment "
    "was sent.",
}
# Tags per route name: the families of docs/PROTOCOL.md section 9.
TAGS: dict[str, str] = {
    "chat": "OpenAI chat",
    "models": "OpenAI chat",
    "messages": "Anthropic Messages",
    "count_tokens": "Anthropic Messages",
    "gemini": "Gemini",
    "gemini_stream": "Gemini",
    "images": "Images",
    "image2image": "Images",
    "speech": "Audio",
    "sound_effects": "Audio",
    "music": "Jobs",
    "videos": "Jobs",
    "job_poll": "Jobs",
    "search": "Search",
    "exa": "Search",
    "relay": "Relayed",
    "relay_beta": "Relayed",
}
# Routes that may answer 202 with a job to poll (PROTOCOL.md 9.6).
JOB_ROUTES = frozenset({"images", "image2image", "music", "videos", "job_poll"})
# Routes whose answer may be binary: speech is BlockRun's JSON today, audio if ever sent.
BINARY_ROUTES = {"speech": "audio/*", "sound_effects": "audio/*"}
# Path parameter descriptions; a template's {name} that is not here is "a path segment".
PATH_PARAMS: dict[str, str] = {
    "model": "The model, as the SDK builds it (`gemini-2.5-flash`, `models/...`, "
    "`google/...`); may contain `/`.",
    "kind": "`videos`, `images` or `audio`.",
    "job_id": "The job id from the submit's `poll_url` (percent-encoded as there).",
    "endpoint": "`search`, `find-similar`, `answer` or `contents`.",
    "path": "The rest of the path, relayed as it is (may contain `/`).",
}
# Request bodies by guard: the fields the proxy itself checks (the gateway checks the rest).
_REQUEST_SCHEMAS: dict[Body, dict[str, Any]] = {
    Body.CHAT: {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "maxLength": 256},
            "messages": {"type": "array", "minItems": 1},
            "max_tokens": {
                "type": ["integer", "null"],
                "description": "Added (`--default-max-tokens`) when neither this nor "
                "`max_completion_tokens` is set: the gateway prices the reservation.",
            },
            "max_completion_tokens": {"type": ["integer", "null"]},
            "stream": {"type": "boolean"},
        },
    },
    Body.ANTHROPIC: {
        "type": "object",
        "required": ["model", "messages", "max_tokens"],
        "properties": {
            "model": {"type": "string", "maxLength": 256},
            "messages": {"type": "array", "minItems": 1},
            "max_tokens": {"type": "integer", "minimum": 1, "description": "Never added."},
            "system": {"type": ["string", "array"]},
            "stream": {"type": "boolean"},
        },
    },
    Body.GEMINI: {
        "type": "object",
        "properties": {
            "contents": {"type": "array"},
            "systemInstruction": {"type": "object"},
            "generationConfig": {
                "type": "object",
                "properties": {"maxOutputTokens": {"type": "integer", "minimum": 1}},
            },
        },
    },
    Body.JSON: {"type": "object"},
}


def build(*, relay: bool) -> dict[str, Any]:
    """The OpenAPI document; ``relay``: ``--routes all`` (paths outside the table)."""
    paths: dict[str, Any] = {}
    for route in (*ROUTES, *(RELAY_ROUTES if relay else ())):
        item = paths.setdefault(route.label, {})
        methods = sorted(RELAY_METHODS) if route.method == "*" else [route.method]
        for method in methods:
            item[method.lower()] = _operation(route, method)
    paths.update(_ops_paths())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "blockrun-proxy",
            "version": _version(),
            "summary": "A sidecar that pays BlockRun's x402 gateway per call.",
            "description": (
                "Every route of BlockRun's gateway, each call paid with an x402 USDC "
                "micropayment signed by the proxy (the wallet key never leaves it). "
                f"Every `/v1/...` path is also served under `{API_PREFIX}` "
                f"(`{API_PREFIX}/v1/...`), the prefix of a job's `poll_url`. Request "
                "bodies go upstream byte for byte (chat may get `max_tokens`); answers "
                "come back as the gateway sent them, with the cost headers added."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": name} for name in dict.fromkeys([*TAGS.values(), "Operations"])],
        "paths": paths,
        "components": _components(),
        "security": [{}, {"proxyToken": []}],
    }


def _operation(route: Route, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.name if route.method != "*" else f"{route.name}_{method.lower()}",
        "summary": route.summary.replace("`", ""),  # plain text; the description is Markdown
        "description": route.summary + (f". Clients: {route.client}." if route.client else "."),
        "tags": [TAGS.get(route.name, "Relayed")],
        "responses": _responses(route, method),
    }
    parameters = [_path_parameter(name) for name in _names(route.label)]
    if route.name == "gemini_stream":
        parameters.append(
            {
                "name": "alt",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["sse"]},
                "description": "Kept and forwarded; google-genai sends `alt=sse`.",
            }
        )
    if parameters:
        operation["parameters"] = parameters
    body = _request_body(route, method)
    if body is not None:
        operation["requestBody"] = body
    return operation


def _request_body(route: Route, method: str) -> dict[str, Any] | None:
    if route.body is Body.NONE or method in ("GET", "DELETE"):
        return None
    if route.body is Body.ANY:
        return {"required": False, "content": {"*/*": {"schema": {}}}}
    return {"required": True, "content": {JSON: {"schema": _REQUEST_SCHEMAS[route.body]}}}


def _responses(route: Route, method: str) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": {}}}
    if route.streams:
        content[SSE] = {"schema": {"type": "string"}}
    if route.name in BINARY_ROUTES:
        content[BINARY_ROUTES[route.name]] = {"schema": {"type": "string"}}
    if route.body is Body.ANY:
        content = {"*/*": {"schema": {}}}
    ok = {
        "description": "The gateway's answer, its bytes unchanged.",
        "headers": _ok_headers(),
        "content": content,
    }
    responses: dict[str, Any] = {"200": ok}
    if route.name in JOB_ROUTES:
        responses["202"] = {
            "description": "A job: `{id, status, poll_url, ...}`. Poll `poll_url` through "
            "the proxy (GET), which replays the submit's payment; a poll costs nothing more.",
            "headers": _ok_headers(),
            "content": {JSON: {"schema": {"type": "object"}}},
        }
    for status in PROXY_ERRORS:
        if status == "415" and method != "POST":
            continue
        responses[status] = {"$ref": f"#/components/responses/E{status}"}
    return responses


def _ok_headers() -> dict[str, Any]:
    names = (
        "x-request-id",
        "x-blockrun-cost-usd",
        "x-litellm-response-cost",
        "x-blockrun-settlement",
        "x-blockrun-cost-source",
        "PAYMENT-RESPONSE",
    )
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _path_parameter(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": PATH_PARAMS.get(name, "A path segment."),
    }


def _names(label: str) -> list[str]:
    names = []
    rest = label
    while "{" in rest:
        start = rest.index("{")
        end = rest.index("}", start)
        names.append(rest[start + 1 : end])
        rest = rest[end + 1 :]
    return names


def _components() -> dict[str, Any]:
    header = _header_schema
    return {
        "securitySchemes": {
            "proxyToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "`BLOCKRUN_PROXY_TOKEN`, when the proxy has one: needed on "
                "every route but the probes and the pages' shells. Never forwarded.",
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "code": {"type": ["string", "null"]},
                            "param": {"type": ["string", "null"]},
                            "gateway": {
                                "type": "object",
                                "description": "On a 424: the gateway's own JSON answer.",
                            },
                        },
                    }
                },
                "description": "The proxy's own errors. An error the gateway answered before "
                "any payment passes through as it came, in the route's own envelope "
                "(OpenAI, Anthropic, Google or BlockRun's).",
            }
        },
        "headers": {
            "x-request-id": header(
                "The client's `x-request-id` (1-128 of `A-Za-z0-9._:/+=@-`), else a new one; "
                "forwarded to the gateway and logged."
            ),
            "x-blockrun-cost-usd": header(
                "What the call cost, USD with 6 decimals: the amount signed (paid answers only)."
            ),
            "x-litellm-response-cost": header(
                "The same, as LiteLLM reads it; `0.000000` on an unpaid answer."
            ),
            "x-blockrun-settlement": header("The settlement transaction, when reported."),
            "x-blockrun-cost-source": header(
                "With `BLOCKRUN_API_KEY` (prepaid credit): `none`, the host reports no cost."
            ),
            "PAYMENT-RESPONSE": header("The gateway's x402 settlement header, passed on."),
            "x-should-retry": header("`false`: retrying would be a new paid call."),
            "x-blockrun-upstream-status": header(
                "What the gateway did: its status, or `timeout`, `dropped`, `unreachable`."
            ),
            "Retry-After": header("Seconds to wait before retrying."),
        },
        "responses": {
            f"E{status}": _error_response(status, text) for status, text in PROXY_ERRORS.items()
        },
    }


def _header_schema(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


def _error_response(status: str, description: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"x-request-id": {"$ref": "#/components/headers/x-request-id"}}
    if status == "424":
        for name in ("x-should-retry", "x-blockrun-upstream-status"):
            headers[name] = {"$ref": f"#/components/headers/{name}"}
    if status in ("429", "503"):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return {
        "description": description,
        "headers": headers,
        "content": {JSON: {"schema": {"$ref": ERROR_REF}}},
    }


def _ops_paths() -> dict[str, Any]:
    """The operations routes (app.py, spend/, apidocs.py): ``token`` whether they need it,
    ``guarded`` whether the browser and ``Host`` guard applies (not to the probes)."""

    def get(
        op_id: str, summary: str, media: str, *, token: bool = True, guarded: bool = True
    ) -> dict[str, Any]:
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "headers": {"x-request-id": {"$ref": "#/components/headers/x-request-id"}},
                "content": {media: {"schema": {}}},
            }
        }
        if token:
            responses["401"] = {"$ref": "#/components/responses/E401"}
        if guarded:
            responses["403"] = {"$ref": "#/components/responses/E403"}
        operation: dict[str, Any] = {"operationId": op_id, "summary": summary}
        operation["tags"] = ["Operations"]
        if not token:
            operation["security"] = [{}]
        return {"get": {**operation, "responses": responses}}

    readyz = get("readyz", "Readiness", JSON, token=False, guarded=False)
    readyz["get"]["responses"]["503"] = {
        "description": "Not ready: draining, or the upstream session is not up yet",
        "content": {JSON: {"schema": {"type": "object"}}},
    }
    return {
        "/healthz": get("healthz", "Liveness", JSON, token=False, guarded=False),
        "/readyz": readyz,
        "/metrics": get("metrics", "Prometheus metrics", "text/plain"),
        "/v1/spend": get("spend", "The spend ledger as JSON (micro-USDC)", JSON),
        "/spend": get("spend_page", "The spend page; its data needs the token", "text/html",
                      token=False),
        "/openapi.json": get("openapi", "This document", JSON),
        "/docs": get("docs", "This document, rendered; its data needs the token", "text/html",
                     token=False),
    }  # fmt: skip


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("blockrun-proxy")
    except metadata.PackageNotFoundError:
        return "0"
