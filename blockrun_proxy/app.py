"""``create_app(settings)``: the routes of the table, the one middleware, the payment core.

The payment core (core.py: session, payer, quote book, budget, gateway, models cache, job
book) is opened when the app starts and held under one key, ``CORE_KEY``. The routes are
registered from the route table (routes.py); every signed one is served by the generic
signed pipe (relay.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from blockrun_proxy import apidocs, logs
from blockrun_proxy.appkeys import (
    ADMISSION_KEY,
    BALANCE_KEY,
    CORE_KEY,
    EXCHANGE_KEY,
    GUARD_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    SETTINGS_KEY,
)
from blockrun_proxy.budget import BudgetUsage
from blockrun_proxy.config import Settings
from blockrun_proxy.core import PaymentCore, open_core, shared_budget
from blockrun_proxy.errors import (
    BodyTooLarge,
    MethodNotAllowed,
    NotFound,
    PaidCallFailed,
    ProxyError,
    ShuttingDown,
    Unauthorized,
    UpstreamError,
    error_body,
)
from blockrun_proxy.exchange import CLIENT_CLOSED, Exchange, request_id_from
from blockrun_proxy.guard import Guard
from blockrun_proxy.limits import Admission, Limits
from blockrun_proxy.metrics import Metrics
from blockrun_proxy.relay import Handler, handler_for, not_allowed_handler
from blockrun_proxy.routes import RELAY_ROUTES, ROUTES, Route, label_of
from blockrun_proxy.spend.routes import PAGE_PATHS, SPEND_KEY, BalanceSlot, SpendView
from blockrun_proxy.spend.routes import add_routes as add_spend_routes
from blockrun_proxy.x402 import usd

__all__ = [
    "ADMISSION_KEY",
    "BALANCE_KEY",
    "CORE_KEY",
    "EXCHANGE_KEY",
    "GUARD_KEY",
    "LIMITS_KEY",
    "METRICS_KEY",
    "SETTINGS_KEY",
    "create_app",
]

log = logging.getLogger("blockrun_proxy")

# Probes answer without the token or the Host/Origin checks: the kubelet has no token and
# calls them by pod IP, and they spend nothing and reveal only whether the process is up.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Answered without the token (the Host/Origin guard still applies): the probes, and the
# spend and API pages' shells (HTML, scripts, styles), which hold no data: their scripts
# read /v1/spend and /openapi.json with the token (spend/routes.py, apidocs/).
PUBLIC_PATHS = PROBE_PATHS | PAGE_PATHS | apidocs.DOCS_PATHS
# Still answered while draining: probes say what is going on, and a last scrape is useful.
OPS_PATHS = PROBE_PATHS | {"/metrics"}
# How long GET /v1/spend waits for the records still queued to reach the ledger.
SPEND_SETTLE_SECONDS = 0.5
# The route label of requests that matched no route (bounded metric cardinality).
UNMATCHED_ROUTE = "other"

ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


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
    metrics.watch(metrics.log_lines_dropped, logs.dropped_lines)
    app[LIMITS_KEY] = limits
    app[METRICS_KEY] = metrics
    admission = app[ADMISSION_KEY] = Admission.from_limits(limits)
    admission.on_change = metrics.watch_admission(admission)
    # The wallet balance, for /readyz and the spend page: "unknown" until a reader (the
    # --rpc-url BalanceWatcher, started after the port is open) is plugged into the slot.
    app[BALANCE_KEY] = BalanceSlot()
    app[apidocs.APIDOCS_KEY] = apidocs.ApiDocs(relay=settings.routes == "all")
    app.cleanup_ctx.append(_payment_core)
    app.on_response_prepare.append(response_stamper(guard, admission))
    add_routes(app.router, ROUTES)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    add_spend_routes(app.router)
    apidocs.add_routes(app.router)
    if settings.routes == "all":
        add_routes(app.router, RELAY_ROUTES)  # last: every route above matches first
    return app


def add_routes(router: web.UrlDispatcher, routes: tuple[Route, ...]) -> None:
    """Rows of the route table, each also under ``/api``; other methods on a row's path
    get 405. The relay rows (``--routes all``) match any method and path under theirs, so
    they are registered after every other route."""
    for route in routes:
        handler = handler_for(route)
        for path in route.paths:
            router.add_route(route.method, path, handler)
            if route.method != "*":
                router.add_route("*", path, not_allowed_handler)


async def _payment_core(app: web.Application) -> AsyncIterator[None]:
    """The payment core (core.py), opened when the app starts and closed after the drain:
    every finished request has queued its spend record by then."""
    async with open_core(app[SETTINGS_KEY], limits=app[LIMITS_KEY]) as core:
        app[CORE_KEY] = core
        metrics = app[METRICS_KEY]
        metrics.watch_payer(core.payer)
        metrics.watch_quotes(lambda: core.quotes.stats)
        if core.keeper is not None and core.keeper.store is not None:
            metrics.watch_quote_store(core.keeper)
        metrics.watch_payment_refusals(lambda: core.gateway.payment_refusals)
        if shared_budget(core.budget):
            metrics.watch_budget_store(core.budget.stats)
        recorder = core.recorder
        if recorder is not None:
            metrics.watch(metrics.ledger_records_dropped, lambda: recorder.dropped)
            app[SPEND_KEY] = _spend_view(app, core)
        yield


def _spend_view(app: web.Application, core: PaymentCore) -> SpendView:
    """What ``GET /v1/spend`` and the spend page show (spend/routes.py)."""
    recorder = core.recorder
    assert recorder is not None
    budget = core.budget
    balance = app[BALANCE_KEY]

    async def budget_usage() -> BudgetUsage | None:
        return None if budget is None else await budget.usage()

    link = core.link
    return SpendView(
        recorder.ledger,
        budget=budget_usage,
        budget_shared=shared_budget(budget),
        address=lambda: core.payer.address,
        balance=lambda: balance,
        dropped=lambda: recorder.dropped,
        store_state=link.describe if link is not None else lambda: None,
        # The call that just finished shows, unless the ledger is stuck (then: bounded).
        settle=lambda: recorder.flush(SPEND_SETTLE_SECONDS),
    )


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
            label_of(resource.canonical) if resource is not None else UNMATCHED_ROUTE,
        )
        request[EXCHANGE_KEY] = exchange
        app = request.app
        admission = app[ADMISSION_KEY]
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
            app[METRICS_KEY].observe(exchange, now=now)
            core = app.get(CORE_KEY)
            if core is not None:
                for observe in core.observers:
                    observe(exchange)

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
            request, MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
        )
    if isinstance(exc, web.HTTPException):
        return web.Response(
            status=exc.status,
            content_type="application/json",
            body=error_body(exc.reason, "invalid_request_error", str(exc.status)),
        )
    exchange = request[EXCHANGE_KEY]
    log.error(
        "unexpected error on %s %s (request %s)",
        request.method,
        request.path,
        exchange.request_id,
        exc_info=exc,
    )
    if exchange.signed_atomic is not None:
        # A bug after the payment was sent is still a failure after payment: a 500 is
        # what SDKs retry on their own, and each retry is a new paid call.
        return _error_response(
            request,
            PaidCallFailed(
                "internal proxy error after the payment was sent; it may have been "
                "charged. Not retried.",
                upstream_status="unknown",
            ),
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


def response_stamper(guard: Guard, admission: Admission) -> ResponseHook:
    """What runs just before any response's headers go out: one place for what all share.
    The guard and admission are bound once (not looked up in the app per response), and
    without --cors-origins no CORS headers are computed."""
    cors = bool(guard.cors_origins)

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        exchange = request.get(EXCHANGE_KEY)
        if exchange is not None:
            headers["x-request-id"] = exchange.request_id
        if cors:
            headers.update(guard.cors_headers(request.headers))
        if admission.draining:
            # Tell keep-alive clients to reconnect (to a process that is not leaving). The
            # header is set by hand: aiohttp computed the Connection header before this
            # hook, and a close the client was not told about makes it reuse a dying
            # connection.
            response.force_close()
            headers["Connection"] = "close"

    return stamp


# --- handlers ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers. No upstream call, no state: cheap enough for any period."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the upstream session is up, the proxy is not draining, and the learned
    quotes' load at start has ended (loaded, or given up: bounded).

    No wallet is not "unready": free models still work; the answer says so.
    """
    app = request.app
    core = app.get(CORE_KEY)
    session_up = core is not None and not core.session.closed
    draining = app[ADMISSION_KEY].draining
    keeper = core.keeper if core is not None else None
    # The learned quotes' one load at start (bounded): until it has ended a new replica
    # would probe calls it could sign up front, so it is not ready yet.
    quotes_loaded = keeper is None or keeper.loaded.is_set()
    ready = session_up and not draining and quotes_loaded
    body: dict[str, object] = {
        "ready": ready,
        "draining": draining,
        "upstream_session": session_up,
        "wallet": _wallet_state(core),
    }
    if core is not None and core.payer.can_sign:
        balance = app[BALANCE_KEY]
        latest = balance.latest()
        body["balance_usd"] = "unknown" if latest is None else usd(latest[0])
        if core.settings.low_balance_usd is not None:
            # Informational, like the balance: a low wallet still serves free models and
            # what it can pay for, so it does not make the proxy unready.
            body["balance_low"] = balance.low()
    if keeper is not None and keeper.store is not None:
        body["quotes"] = keeper.status
    if core is not None and core.link is not None:
        # From the last call's outcome, never a Redis call per probe. Redis being away
        # does not make the proxy unready: free models work, and every replica shares
        # the same Redis, so taking them all out of service would help nobody.
        body["fleet_store"] = core.link.describe()
    return web.json_response(body, status=200 if ready else 503)


def _wallet_state(core: PaymentCore | None) -> str:
    if core is not None and core.rail == "apikey":
        return "api key: prepaid credit"
    return "loaded" if core is not None and core.payer.address else "none: free models only"


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": content_type})
