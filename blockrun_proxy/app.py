"""``create_app(settings)``: routes, middlewares, and the shared upstream ClientSession."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from blockrun_proxy.budget import SpendBudget
from blockrun_proxy.chatbody import parse_chat_request
from blockrun_proxy.config import Settings
from blockrun_proxy.errors import (
    BodyTooLarge,
    InvalidRequest,
    NotFound,
    ProxyError,
    Unauthorized,
    error_body,
)
from blockrun_proxy.models import ModelsCache
from blockrun_proxy.payer import Payer
from blockrun_proxy.pipe import PipeStats, UpstreamBroke, pump
from blockrun_proxy.quotes import QuoteBook
from blockrun_proxy.upstream import PAYMENT_RESPONSE, Answer, Gateway
from blockrun_proxy.x402 import PayerPolicy, Signer, usd

log = logging.getLogger("blockrun_proxy")

GATEWAY_KEY = web.AppKey("gateway", Gateway)
MODELS_KEY = web.AppKey("models", ModelsCache)
PAYER_KEY = web.AppKey("payer", Payer)
# Signing up front: .stats has plain int counters (hits, misses, ...) for metrics.
QUOTES_KEY = web.AppKey("quotes", QuoteBook)
SETTINGS_KEY = web.AppKey("settings", Settings)

# Probes answer without the token: the kubelet has none, and they reveal nothing.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
# Upstream response headers that mean the same thing to the client; hop-by-hop
# headers (Connection, Transfer-Encoding, ...) and Content-Length are aiohttp's job.
PASSED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Cache-Control",
    "Retry-After",
    PAYMENT_RESPONSE,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware, token_middleware(settings.token)],
    )
    app[SETTINGS_KEY] = settings
    signer = Signer(settings.wallet_key) if settings.wallet_key else None
    policy = PayerPolicy(
        networks=frozenset(settings.networks),
        max_amount=settings.max_amount,
        gateway_host=settings.gateway_host,
        max_timeout_seconds=settings.max_auth_seconds,
        pay_to=frozenset(p.lower() for p in settings.pay_to),
    )
    budget = (
        SpendBudget(settings.budget_atomic, settings.budget_window_seconds)
        if settings.budget_atomic is not None
        else None
    )
    app[PAYER_KEY] = Payer(signer, policy, budget=budget)
    app[QUOTES_KEY] = QuoteBook(
        trust=settings.quote_trust,
        tolerance_atomic=settings.presign_tolerance_atomic,
        ttl_seconds=settings.quote_ttl_seconds,
        enabled=settings.presign,
    )
    app.cleanup_ctx.append(_client_session)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    return app


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    connector = aiohttp.TCPConnector(
        limit=settings.max_concurrent,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.connect_timeout_seconds,
        sock_read=settings.idle_timeout_seconds,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,  # a byte pipe: the client decodes what it asked for
        skip_auto_headers=("Accept-Encoding",),  # forward the client's own, or none
        headers={"User-Agent": "blockrun-proxy"},
    ) as session:
        gateway = Gateway(
            session,
            settings.api_url,
            app[PAYER_KEY],
            paid_replays=settings.paid_replays,
            probe_retries=settings.probe_retries,
            quotes=app[QUOTES_KEY],
        )
        app[GATEWAY_KEY] = gateway
        app[MODELS_KEY] = ModelsCache(gateway.get_models, settings.models_ttl_seconds)
        yield


# --- middlewares ------------------------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place exceptions become OpenAI-shaped answers; never a traceback to the client."""
    try:
        return await handler(request)
    except ProxyError as exc:
        return _error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return _error_response(
            BodyTooLarge(f"request body exceeds {request.app[SETTINGS_KEY].max_body_bytes} bytes")
        )
    except web.HTTPNotFound:
        return _error_response(NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed:
        return _error_response(
            InvalidRequest(
                f"method {request.method} is not allowed on {request.path}",
                code="method_not_allowed",
            ),
            status=405,
        )
    except web.HTTPException as exc:
        return web.Response(
            status=exc.status,
            content_type="application/json",
            body=error_body(exc.reason, "invalid_request_error", str(exc.status)),
        )
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return web.Response(
            status=500,
            content_type="application/json",
            body=error_body("internal proxy error", "server_error", "internal_error"),
        )


def _error_response(exc: ProxyError, status: int | None = None) -> web.Response:
    return web.Response(
        status=status or exc.status,
        body=exc.to_json(),
        content_type=exc.content_type.split(";")[0],
        headers=exc.headers,
    )


def token_middleware(
    token: str | None,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.path not in PUBLIC_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise Unauthorized("missing or wrong bearer token for this proxy")
        return await handler(request)

    return check_token


# --- handlers ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def list_models(request: web.Request) -> web.Response:
    body, served = await request.app[MODELS_KEY].get()
    return web.Response(
        body=body, content_type="application/json", headers={"x-blockrun-cache": served}
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    started = time.monotonic()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    chat = parse_chat_request(await request.read(), default_max_tokens=settings.default_max_tokens)
    answer = await request.app[GATEWAY_KEY].send_chat(
        chat.body, request.headers, request_id, chat=chat
    )
    stats = PipeStats()
    async with answer.response as upstream:
        response = web.StreamResponse(status=upstream.status, headers=_response_headers(answer))
        response.headers["x-request-id"] = request_id
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            await pump(upstream, response, stats)
        except UpstreamBroke as exc:
            # Headers (and maybe bytes) are out: the only honest signal left is to cut the
            # connection, so the client sees a truncated body, not a clean short one.
            log.warning("upstream broke mid-response after %d bytes: %s", stats.bytes_sent, exc)
            if request.transport is not None:
                request.transport.abort()
    log.debug(
        "chat %s model=%s status=%d bytes=%d %.1fms",
        request_id,
        chat.model,
        upstream.status,
        stats.bytes_sent,
        (time.monotonic() - started) * 1000,
    )
    return response


def _response_headers(answer: Answer) -> dict[str, str]:
    upstream = answer.response.headers
    headers = {name: upstream[name] for name in PASSED_RESPONSE_HEADERS if name in upstream}
    paid = answer.paid_atomic
    if paid is not None:
        cost = usd(paid)
        headers["x-blockrun-cost-usd"] = cost
        headers["x-litellm-response-cost"] = cost
        if answer.settlement is not None and answer.settlement.transaction:
            headers["x-blockrun-settlement"] = answer.settlement.transaction
    return headers
