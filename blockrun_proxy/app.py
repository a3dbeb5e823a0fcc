"""``create_app(settings)``: routes, middlewares, and the shared upstream ClientSession."""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from blockrun_proxy import logs
from blockrun_proxy.budget import BudgetUsage
from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.chatbody import parse_chat_request
from blockrun_proxy.config import Settings
from blockrun_proxy.costs import cost_headers
from blockrun_proxy.errors import (
    BodyTooLarge,
    InvalidRequest,
    NotFound,
    ProxyError,
    RequestTimeout,
    ShuttingDown,
    Unauthorized,
    UpstreamError,
    error_body,
)
from blockrun_proxy.exchange import CLIENT_CLOSED, Exchange, request_id_from
from blockrun_proxy.guard import Guard
from blockrun_proxy.limits import Admission, Limits
from blockrun_proxy.metrics import Metrics
from blockrun_proxy.models import ModelsCache
from blockrun_proxy.payer import Payer, payer_for
from blockrun_proxy.pipe import PipeStats, UpstreamBroke, coalesce_headers, pump
from blockrun_proxy.quote_store import QuoteStore, RedisQuoteStore
from blockrun_proxy.quotes import QuoteBook
from blockrun_proxy.quotes.keeper import QuoteKeeper
from blockrun_proxy.quotes.store import QuoteFile
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.ledger import open_ledger, replica_name
from blockrun_proxy.spend.recorder import Recorder
from blockrun_proxy.spend.routes import PAGE_PATHS, SPEND_KEY, BalanceSlot, SpendView
from blockrun_proxy.spend.routes import add_routes as add_spend_routes
from blockrun_proxy.upstream import GATEWAY_MAX_FIELD_SIZE, PAYMENT_RESPONSE, Answer, Gateway
from blockrun_proxy.x402 import usd

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # aiohttp depends on async-timeout below 3.11
    from async_timeout import timeout as deadline

log = logging.getLogger("blockrun_proxy")

ADMISSION_KEY = web.AppKey("admission", Admission)
GATEWAY_KEY = web.AppKey("gateway", Gateway)
GUARD_KEY = web.AppKey("guard", Guard)
LIMITS_KEY = web.AppKey("limits", Limits)
METRICS_KEY = web.AppKey("metrics", Metrics)
MODELS_KEY = web.AppKey("models", ModelsCache)
PAYER_KEY = web.AppKey("payer", Payer)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
# Signing up front: .stats has plain int counters (hits, misses, ...) for metrics.
QUOTES_KEY = web.AppKey("quotes", QuoteBook)
SETTINGS_KEY = web.AppKey("settings", Settings)
KEEPER_KEY = web.AppKey("quote_keeper", QuoteKeeper)
# The fleet store (--redis-url) and what lives in it: the shared budget (with a budget
# set) and the learned quotes. Absent without Redis.
REDIS_KEY = web.AppKey("redis", RedisLink)
BUDGET_STORE_KEY = web.AppKey("budget_store", RedisBudgetStore)
QUOTE_STORE_KEY = web.AppKey("quote_store", QuoteStore)
# The spend ledger's writer (always present: Redis, a SQLite file, or memory).
RECORDER_KEY = web.AppKey("recorder", Recorder)
# The wallet balance, for /readyz and the spend page: "unknown" until a reader (the
# --rpc-url BalanceWatcher, started after the port is open) is plugged into the slot.
BALANCE_KEY = web.AppKey("balance", BalanceSlot)
EXCHANGE_KEY = web.RequestKey("exchange", Exchange)

# Probes answer without the token or the Host/Origin checks: the kubelet has no token and
# calls them by pod IP, and they spend nothing and reveal only whether the process is up.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Answered without the token (the Host/Origin guard still applies): the probes, and the
# spend page's shell (HTML, script, style), which holds no data: its script reads
# /v1/spend with the token (spend/routes.py).
PUBLIC_PATHS = PROBE_PATHS | PAGE_PATHS
# Still answered while draining: probes say what is going on, and a last scrape is useful.
OPS_PATHS = PROBE_PATHS | {"/metrics"}
# How long GET /v1/spend waits for the records still queued to reach the ledger.
SPEND_SETTLE_SECONDS = 0.5
# The route label of requests that matched no route (bounded metric cardinality).
UNMATCHED_ROUTE = "other"
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
    guard = Guard.from_settings(settings)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # One middleware, not four: each layer is a coroutine frame and a partial call on
        # every request, and the order (observe, answer errors, token, drain) is one
        # function's control flow anyway.
        middlewares=[front_middleware(guard, settings.token)],
    )
    app[SETTINGS_KEY] = settings
    app[GUARD_KEY] = guard
    limits = Limits.from_settings(settings)
    metrics = Metrics(multiprocess_dir=settings.metrics_dir)
    metrics.max_concurrent.set(limits.max_concurrent)
    metrics.watch(metrics.log_lines_dropped, logs.dropped_lines)
    app[LIMITS_KEY] = limits
    app[METRICS_KEY] = metrics
    app[ADMISSION_KEY] = Admission.from_limits(limits, on_change=metrics.admission_changed)
    # --redis-url: the fleet store (budget, ledger, quotes); the payer reserves there.
    link = RedisLink.from_settings(settings)
    shared_budget = _shared_budget(settings, link)
    app[PAYER_KEY] = payer_for(settings, budget=shared_budget)
    metrics.watch_payer(app[PAYER_KEY])
    app[QUOTES_KEY] = QuoteBook(
        trust=settings.quote_trust,
        tolerance_atomic=settings.presign_tolerance_atomic,
        ttl_seconds=settings.quote_ttl_seconds,
        enabled=settings.presign,
    )
    metrics.watch_quotes(lambda: app[QUOTES_KEY].stats)
    _add_fleet_stores(app, settings, metrics, link, shared_budget)
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_quote_keeper)
    app.on_response_prepare.append(_stamp_response)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    add_spend_routes(app.router)
    return app


def _shared_budget(settings: Settings, link: RedisLink | None) -> RedisBudgetStore | None:
    if link is None or settings.budget_atomic is None:
        return None
    return RedisBudgetStore(
        link,
        settings.budget_atomic,
        settings.budget_window_seconds,
        fail_open=settings.budget_fail_open,
    )


def _add_fleet_stores(
    app: web.Application,
    settings: Settings,
    metrics: Metrics,
    link: RedisLink | None,
    shared_budget: RedisBudgetStore | None,
) -> None:
    """The Redis link (if any) and what lives in it, the spend ledger and its page."""
    payer = app[PAYER_KEY]
    if link is not None:
        app[REDIS_KEY] = link
        app[QUOTE_STORE_KEY] = RedisQuoteStore(link)
    if shared_budget is not None:
        app[BUDGET_STORE_KEY] = shared_budget
        metrics.watch_budget_store(shared_budget.stats)
    recorder = Recorder(open_ledger(settings, link), replica=replica_name())
    app[RECORDER_KEY] = recorder
    metrics.watch(metrics.ledger_records_dropped, lambda: recorder.dropped)
    balance = app[BALANCE_KEY] = BalanceSlot()

    async def budget_usage() -> BudgetUsage | None:
        return None if payer.budget is None else await payer.budget.usage()

    app[SPEND_KEY] = SpendView(
        recorder.ledger,
        budget=budget_usage,
        budget_shared=shared_budget is not None,
        address=lambda: payer.address,
        balance=lambda: balance,
        dropped=lambda: recorder.dropped,
        store_state=link.describe if link is not None else lambda: None,
        # The call that just finished shows, unless the ledger is stuck (then: bounded).
        settle=lambda: recorder.flush(SPEND_SETTLE_SECONDS),
    )
    app.cleanup_ctx.append(_fleet_lifecycle)


async def _fleet_lifecycle(app: web.Application) -> AsyncIterator[None]:
    recorder = app[RECORDER_KEY]
    recorder.start()
    yield
    # After the drain: every finished request has queued its record by now.
    await recorder.aclose()
    store = app.get(BUDGET_STORE_KEY)
    if store is not None:
        await store.aclose()
    link = app.get(REDIS_KEY)
    if link is not None:
        await link.aclose()


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    connector = aiohttp.TCPConnector(
        limit=app[LIMITS_KEY].pool_size,
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
        # The gateway sets no cookies the proxy should keep, and one jar shared by every
        # client of the proxy would leak one client's cookies to another's calls.
        cookie_jar=aiohttp.DummyCookieJar(),
        max_field_size=GATEWAY_MAX_FIELD_SIZE,
    ) as session:
        app[SESSION_KEY] = session
        gateway = Gateway(
            session,
            settings.api_url,
            app[PAYER_KEY],
            paid_replays=settings.paid_replays,
            probe_retries=settings.probe_retries,
            quotes=app[QUOTES_KEY],
        )
        app[GATEWAY_KEY] = gateway
        app[METRICS_KEY].watch_payment_refusals(lambda: gateway.payment_refusals)
        app[MODELS_KEY] = ModelsCache(gateway.get_models, settings.models_ttl_seconds)
        yield


async def _quote_keeper(app: web.Application) -> AsyncIterator[None]:
    """Feed the quote book the catalogue's prices and keep it across restarts."""
    settings = app[SETTINGS_KEY]

    async def fetch_catalogue() -> bytes:
        body, _ = await app[MODELS_KEY].get()
        return body

    store = None if settings.state_dir is None else QuoteFile(settings.state_dir, settings.api_url)
    keeper = QuoteKeeper(app[QUOTES_KEY], fetch_catalogue=fetch_catalogue, store=store)
    app[KEEPER_KEY] = keeper
    await keeper.start()
    yield
    await keeper.close()


# --- the middleware ---------------------------------------------------------------------------


def front_middleware(guard: Guard, token: str | None) -> Middleware:
    """Everything every request goes through, in this order:

    1. observe: an ``Exchange`` (request id, route), and once the answer is done one
       access line and the request metrics (aiohttp's own access log stays off: this
       line knows the model, the cost and the time to first byte, which aiohttp cannot);
    2. errors: the one place exceptions become OpenAI-shaped answers, never a traceback;
    3. source: Host, Origin, Sec-Fetch-Site (guard.py), then CORS preflights, all before
       the token, which a preflight never carries; the probes skip 3 to 5;
    4. token: the bearer token (not on the spend page's shell, which holds no data);
    5. body type: every POST is a paid route and must be JSON;
    6. drain: while draining, new work gets 503; probes and /metrics still answer.
    """
    expected = token.encode() if token else None

    @web.middleware
    async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        exchange = Exchange(
            request_id_from(request.headers.get("x-request-id")),
            request.method,
            resource.canonical if resource is not None else UNMATCHED_ROUTE,
        )
        request[EXCHANGE_KEY] = exchange
        admission = request.app[ADMISSION_KEY]
        admission.request_started()
        try:
            try:
                path = request.path
                if path in PROBE_PATHS:
                    response = await handler(request)
                else:
                    guard.check_source(request)
                    if guard.is_preflight(request):
                        response = guard.preflight(request)
                    else:
                        if expected is not None and path not in PUBLIC_PATHS:
                            _check_token(request.headers.get("Authorization"), expected)
                        if request.method == "POST":
                            guard.check_body_type(request)
                        if admission.draining and path not in OPS_PATHS:
                            raise ShuttingDown(
                                "the proxy is shutting down; send this request elsewhere"
                            )
                        response = await handler(request)
            except Exception as exc:
                response = _answer_error(request, exc)
            exchange.status = exchange.status or response.status
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                exchange.bytes_out = len(response.body)
            return response
        except asyncio.CancelledError:
            exchange.status = CLIENT_CLOSED
            raise
        except BaseException:  # every Exception was answered above; this is a bug
            exchange.status = 500
            raise
        finally:
            admission.request_finished()
            now = time.monotonic()
            logs.log_access(exchange, now=now)
            request.app[METRICS_KEY].observe(exchange, now=now)
            request.app[RECORDER_KEY].observe(exchange)  # queued, never awaited

    return front


def _check_token(header: str | None, expected: bytes) -> None:
    """``Authorization: Bearer <token>``; the scheme is case-insensitive (RFC 9110)."""
    scheme, _, given = (header or "").strip().partition(" ")
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encode them back the same
    # way, so a byte that is not UTF-8 is a wrong token (401), not an encoding error (500).
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    # compare_digest runs even for a wrong scheme: the answer's timing says nothing.
    matches = hmac.compare_digest(given_bytes, expected)
    if not (matches and scheme.lower() == "bearer"):
        raise Unauthorized("missing or wrong bearer token for this proxy")


def _answer_error(request: web.Request, exc: Exception) -> web.Response:
    """The OpenAI-shaped answer for an exception a handler (or the guard) raised."""
    if isinstance(exc, ProxyError):
        return _error_response(request, exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _error_response(
            request,
            BodyTooLarge(f"request body exceeds {request.app[SETTINGS_KEY].max_body_bytes} bytes"),
        )
    if isinstance(exc, web.HTTPNotFound):
        return _error_response(request, NotFound(f"no route {request.method} {request.path}"))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return _error_response(
            request,
            InvalidRequest(
                f"method {request.method} is not allowed on {request.path}",
                code="method_not_allowed",
            ),
            status=405,
        )
    if isinstance(exc, web.HTTPException):
        return web.Response(
            status=exc.status,
            content_type="application/json",
            body=error_body(exc.reason, "invalid_request_error", str(exc.status)),
        )
    log.error(
        "unexpected error on %s %s (request %s)",
        request.method,
        request.path,
        request[EXCHANGE_KEY].request_id,
        exc_info=exc,
    )
    return web.Response(
        status=500,
        content_type="application/json",
        body=error_body("internal proxy error", "server_error", "internal_error"),
    )


def _error_response(
    request: web.Request, exc: ProxyError, status: int | None = None
) -> web.Response:
    # The gateway's failures and the proxy's own refusals are counted apart: the first
    # page someone about the gateway, the second about the proxy's settings or clients.
    # Failures after a payment (PaidCallFailed, GatewayAnswer) are UpstreamErrors too:
    # their 424 status is for clients' retry loops, their code says what the gateway did.
    exchange = request[EXCHANGE_KEY]
    if isinstance(exc, UpstreamError):
        exchange.upstream_error = exc.code
    else:
        exchange.refusal = exc.code
    return web.Response(
        status=status or exc.status,
        body=exc.to_json(),
        content_type=exc.content_type.split(";")[0],
        headers=exc.headers,
    )


async def _stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """Runs just before any response's headers go out: one place for what all share."""
    exchange = request.get(EXCHANGE_KEY)
    if exchange is not None:
        response.headers["x-request-id"] = exchange.request_id
    response.headers.update(request.app[GUARD_KEY].cors_headers(request.headers))
    if request.app[ADMISSION_KEY].draining:
        # Tell keep-alive clients to reconnect (to a process that is not leaving). The
        # header is set by hand: aiohttp computed the Connection header before this hook,
        # and a close the client was not told about makes it reuse a dying connection.
        response.force_close()
        response.headers["Connection"] = "close"


# --- handlers ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers. No upstream call, no state: cheap enough for any period."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the upstream session is up and the proxy is not draining.

    No wallet is not "unready": free models still work; the answer says so.
    """
    app = request.app
    session = app.get(SESSION_KEY)
    session_up = session is not None and not session.closed
    draining = app[ADMISSION_KEY].draining
    ready = session_up and not draining
    body: dict[str, object] = {
        "ready": ready,
        "draining": draining,
        "upstream_session": session_up,
        "wallet": "loaded" if app[PAYER_KEY].address else "none: free models only",
    }
    if app[PAYER_KEY].can_sign:
        latest = app[BALANCE_KEY].latest()
        body["balance_usd"] = "unknown" if latest is None else usd(latest[0])
    link = app.get(REDIS_KEY)
    if link is not None:
        # From the last call's outcome, never a Redis call per probe. Redis being away
        # does not make the proxy unready: free models work, and every replica shares
        # the same Redis, so taking them all out of service would help nobody.
        body["fleet_store"] = link.describe()
    return web.json_response(body, status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def list_models(request: web.Request) -> web.Response:
    body, served = await request.app[MODELS_KEY].get()
    return web.Response(
        body=body, content_type="application/json", headers={"x-blockrun-cache": served}
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    exchange = request[EXCHANGE_KEY]
    metrics = app[METRICS_KEY]
    # A call holds its slot from before its body is read until its last byte is relayed:
    # the limit then bounds open streams, sockets and buffered bodies (at most
    # max_concurrent bodies of up to max_body_bytes in memory), not just sends. Waiting and
    # refused calls hold only what aiohttp buffers of an unread body (flow-controlled).
    # Reading bodies before taking a slot would let every open connection (up to
    # --max-connections) buffer one; instead a body that stalls gets a 408 after
    # --body-timeout and gives its slot to the next call.
    settings = app[SETTINGS_KEY]
    async with app[ADMISSION_KEY].slot():
        chat = parse_chat_request(
            await _read_body(request, settings.body_timeout_seconds),
            default_max_tokens=settings.default_max_tokens,
        )
        exchange.model = chat.model
        answer = await app[GATEWAY_KEY].send_chat(
            chat.body,
            request.headers,
            exchange.request_id,
            chat=chat,
            on_sent=exchange.payment_sent,
        )
        # The parsed request (every message as Python objects, several times the body's
        # size) is not needed while the answer streams: drop it now, not at the last byte.
        del chat
        paid = answer.paid_atomic
        if paid is not None:
            exchange.cost_atomic = paid
            metrics.settled(paid)
            if answer.settlement is not None:
                exchange.settlement_tx = answer.settlement.transaction
        stats = PipeStats()
        async with answer.response as upstream:
            if upstream.status >= 400:
                exchange.upstream_error = f"http_{upstream.status}"
            response = web.StreamResponse(status=upstream.status, headers=_response_headers(answer))
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            coalesce_headers(upstream, response)
            await response.prepare(request)
            metrics.open_streams.inc()
            try:
                await pump(upstream, response, stats)
            except UpstreamBroke as exc:
                # Headers (and maybe bytes) are out: the only honest signal left is to cut
                # the connection, so the client sees a truncated body, not a clean short one.
                exchange.upstream_error = "stream_broken"
                log.warning(
                    "upstream broke mid-response after %d bytes: %s (request %s)",
                    stats.bytes_sent,
                    exc,
                    exchange.request_id,
                )
                if request.transport is not None:
                    request.transport.abort()
            except ConnectionResetError:
                # The client hung up while we wrote (aiohttp's ClientConnectionResetError):
                # nobody is left to answer, and leaving this block closes the upstream.
                exchange.status = CLIENT_CLOSED
            finally:
                metrics.open_streams.dec()
                metrics.relayed_bytes.inc(stats.bytes_sent)
                exchange.bytes_out = stats.bytes_sent
                exchange.first_byte_at = stats.first_byte_at
    return response


async def _read_body(request: web.Request, timeout: float) -> bytes:
    try:
        async with deadline(timeout):
            return await request.read()
    except asyncio.TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout:g}s; nothing was sent or paid"
        ) from None


def _response_headers(answer: Answer) -> dict[str, str]:
    upstream = answer.response.headers
    headers = {name: upstream[name] for name in PASSED_RESPONSE_HEADERS if name in upstream}
    headers.update(cost_headers(answer))
    return headers
