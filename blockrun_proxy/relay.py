"""The generic signed pipe: one handler for every route of the table (routes.py).

Every signed route goes through the same stages as chat, in this order:

1. admission: a slot from before the body is read until the last byte is relayed;
2. guard: the body within ``--body-timeout``, checked by its route's rule (bodies.py);
3. payment: ``Gateway.send``, with the policy, the budget and one nonce per call
   (``payer.CallPayment``), signed up front from the quote of its price key when the
   quote book can, ``424`` for any failure after a payment was sent;
4. pipe: the gateway's status, headers that mean the same thing to the client, the cost
   headers, and the body bytes unchanged with backpressure (pipe.py).

The middleware (app.py) adds the request id, the browser and token guard, the metrics
and the access line around it. Two routes differ only in how they pay: a job poll
replays its submit's payment (``Gateway.replay``, never a new signature), and the
catalogue is served from its cache. A paid ``202`` job answer is read (it is small) so
its poll can find the payment (jobs.py).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import zlib
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import ClientError, web

from blockrun_proxy import h1
from blockrun_proxy.appkeys import ADMISSION_KEY, CORE_KEY, EXCHANGE_KEY, METRICS_KEY
from blockrun_proxy.bodies import guard_body
from blockrun_proxy.costs import cost_headers, settlement_transaction
from blockrun_proxy.errors import MethodNotAllowed, PaidCallFailed, RequestTimeout
from blockrun_proxy.exchange import CLIENT_CLOSED, Exchange
from blockrun_proxy.jobs import MAX_JOB_ANSWER_BYTES, poll_path, poll_url_of, rewrite_poll_url
from blockrun_proxy.pipe import (
    BodyFilter,
    PipeStats,
    UpstreamBroke,
    coalesce_headers,
    pump,
    pump_filtered,
)
from blockrun_proxy.routes import RELAY_METHODS, Body, Measure, Route, Serve, upstream_path
from blockrun_proxy.upstream import JSON_TYPE, PAYMENT_RESPONSE, Answer, relayed_settlement

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # aiohttp depends on async-timeout below 3.11
    from async_timeout import timeout as deadline

log = logging.getLogger("blockrun_proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Upstream response headers that mean the same thing to the client; hop-by-hop
# headers (Connection, Transfer-Encoding, ...) and Content-Length are aiohttp's job.
# PAYMENT-RESPONSE is passed only when it is a sane header (upstream.relayed_settlement):
# the gateway session reads fields up to 64 KiB, more than clients read, and an answer a
# client cannot read after a paid send is one it retries.
PASSED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Cache-Control", "Retry-After")
# The same goes for the others: a value longer than this (none of theirs is near it) is
# dropped, not passed on to a client that would fail to read the paid answer.
MAX_PASSED_HEADER_CHARS = 1024


def handler_for(route: Route) -> Handler:
    """The aiohttp handler of one route of the table."""
    if route.serve is Serve.CATALOGUE:
        return list_models
    if route.serve is Serve.POLL:

        async def poll_handler(request: web.Request) -> web.StreamResponse:
            return await poll(request, route)

        return poll_handler
    if route.method == "*":

        async def relay_handler(request: web.Request) -> web.StreamResponse:
            if request.method not in RELAY_METHODS:
                raise method_not_allowed(request)
            return await signed(request, route)

        return relay_handler

    # A partial, not a wrapping coroutine: one coroutine frame less held by every open
    # stream (about 0.4 KiB each, tracemalloc over held slow streams) and one less call.
    return partial(signed, route=route)


async def not_allowed_handler(request: web.Request) -> web.StreamResponse:
    raise method_not_allowed(request)


def method_not_allowed(request: web.Request) -> MethodNotAllowed:
    return MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")


async def list_models(request: web.Request) -> web.Response:
    body, served = await request.app[CORE_KEY].models.get()
    return web.Response(
        body=body, content_type="application/json", headers={"x-blockrun-cache": served}
    )


async def signed(request: web.Request, route: Route) -> web.StreamResponse:
    app = request.app
    core = app[CORE_KEY]
    settings = core.settings
    exchange = request[EXCHANGE_KEY]
    # A call holds its slot from before its body is read until its last byte is relayed:
    # the limit then bounds open streams, sockets and buffered bodies (at most
    # max_concurrent bodies of up to max_body_bytes in memory), not just sends. Waiting and
    # refused calls hold only what aiohttp buffers of an unread body (flow-controlled).
    # Reading bodies before taking a slot would let every open connection (up to
    # --max-connections) buffer one; instead a body that stalls gets a 408 after
    # --body-timeout and gives its slot to the next call.
    async with app[ADMISSION_KEY].slot():
        raw: bytes | None = None
        if route.body is not Body.NONE and (route.body is not Body.ANY or request.body_exists):
            raw = await read_body(request, settings.body_timeout_seconds)
        guarded = guard_body(
            route, raw or b"", request.match_info, default_max_tokens=settings.default_max_tokens
        )
        exchange.model = guarded.model
        if route.body is Body.ANY:
            content_type = request.headers.get("Content-Type") if raw is not None else None
        else:
            content_type = JSON_TYPE if raw is not None else None
        gateway = core.gateway
        out = gateway.outgoing(
            request.method,
            upstream_path(request.rel_url.raw_path),
            request.rel_url.raw_query_string,
            guarded.body if raw is not None else None,
            request.headers,
            content_type=content_type,
            route=route.label,
            model=guarded.key_model(route),
            measure=None if route.measure is Measure.NONE else partial(guarded.features, route),
        )
        del raw
        answer = await gateway.send(out, exchange.request_id, on_sent=exchange.payment_sent)
        # The parsed request (every message as Python objects, several times the body's
        # size) is not needed while the answer streams: drop it now, not at the last byte.
        del guarded, out
        paid = answer.paid_atomic
        if paid is not None:
            exchange.cost_atomic = paid
            app[METRICS_KEY].settled(paid)
            exchange.settlement_tx = settlement_transaction(answer)
            reported = answer.settlement.transaction if answer.settlement else None
            if reported is not None and exchange.settlement_tx is None:
                log.warning(
                    "gateway anomaly: its settlement report names no usable transaction "
                    "id; not passed on (request %s)",
                    exchange.request_id,
                )
            if answer.response.status == 202:
                return await job_answer(request, answer)
        return await pipe_answer(request, answer)


async def poll(request: web.Request, route: Route) -> web.StreamResponse:
    """A job's poll: the payment its submit was paid with, if this process (or, with
    Redis, the fleet) holds it."""
    app = request.app
    core = app[CORE_KEY]
    exchange = request[EXCHANGE_KEY]
    async with app[ADMISSION_KEY].slot():
        path = upstream_path(request.rel_url.raw_path)
        gateway = core.gateway
        out = gateway.outgoing(
            "GET",
            path,
            request.rel_url.raw_query_string,
            None,
            request.headers,
            content_type=None,
            route=route.label,
        )
        out.headers["x-request-id"] = exchange.request_id
        answer = await gateway.replay(out, await core.jobs.payment_for(path))
        return await pipe_answer(request, answer)


async def read_body(request: web.Request, timeout: float) -> bytes:
    if request.content.is_eof():
        # The whole body has arrived (as small ones do, with their headers): reading it
        # cannot wait, so no deadline (a Timeout, a timer armed and cancelled) is needed.
        return await request.read()
    try:
        async with deadline(timeout):
            return await request.read()
    except asyncio.TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout:g}s; nothing was sent or paid"
        ) from None


async def job_answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    """A paid ``202``: remember the payment for the job's polls, and make sure the client
    polls through the proxy (jobs.py). Small answers are read whole; anything else is
    piped as it comes."""
    upstream = answer.response
    length = upstream.content_length
    if length is None or length > MAX_JOB_ANSWER_BYTES:
        return await pipe_answer(request, answer)
    try:
        async with upstream:
            body = await upstream.content.read()  # bounded by the Content-Length checked above
    except (ClientError, h1.HTTPError, asyncio.TimeoutError) as exc:
        raise PaidCallFailed(
            "the gateway's job answer broke after the payment was sent; the job may have been "
            "submitted. Not retried.",
            code="paid_call_dropped",
            upstream_status="dropped",
        ) from exc
    exchange = request[EXCHANGE_KEY]
    core = request.app[CORE_KEY]
    headers = response_headers(answer)
    text = _decoded(body, upstream.headers.get("Content-Encoding", ""))
    url = poll_url_of(text) if text is not None else None
    path = poll_path(url, core.gateway.origin) if url is not None else None
    if url is not None and path is None:
        log.warning(
            "a job's poll_url names another host; its polls cannot be paid through the proxy "
            "(request %s)",
            exchange.request_id,
        )
    if path is not None and text is not None and answer.payment is not None:
        await core.jobs.remember(path, answer.payment.header)
        rewritten = rewrite_poll_url(text, url or path, path)
        if rewritten is not text:
            body = rewritten
            headers.pop("Content-Encoding", None)  # sent decoded: it was rewritten
    exchange.bytes_out = len(body)
    return web.Response(status=upstream.status, body=body, headers=headers)


def _decoded(body: bytes, encoding: str) -> bytes | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "deflate"):
        try:
            return zlib.decompressobj(wbits=47).decompress(body, MAX_JOB_ANSWER_BYTES)
        except zlib.error:
            return None
    return None  # br, zstd: not read; the job's polls will not find its payment


async def pipe_answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    """The gateway's answer to the client: status, headers, bytes unchanged."""
    exchange = request[EXCHANGE_KEY]
    metrics = request.app[METRICS_KEY]
    stats = PipeStats()
    async with answer.response as upstream:
        if upstream.status >= 400:
            exchange.upstream_error = f"http_{upstream.status}"
        response = web.StreamResponse(status=upstream.status, headers=response_headers(answer))
        # A filtered body (the API-key rail's redaction) may change length: sent chunked.
        redactor = answer.redactor
        if upstream.content_length is not None and redactor is None:
            response.content_length = upstream.content_length
        coalesce_headers(upstream, response)
        await response.prepare(request)
        metrics.stream_opened()
        try:
            if redactor is None:
                await pump(upstream, response, stats)
            else:
                await pump_filtered(upstream, response, stats, redactor())
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
            metrics.stream_closed(stats.bytes_sent)
            _account(exchange, stats)
    return response


def _account(exchange: Exchange, stats: PipeStats) -> None:
    exchange.bytes_out = stats.bytes_sent
    exchange.first_byte_at = stats.first_byte_at


def response_headers(answer: Answer) -> dict[str, str]:
    upstream = answer.response.headers
    headers = {
        name: value
        for name in PASSED_RESPONSE_HEADERS
        if (value := upstream.get(name)) is not None and len(value) <= MAX_PASSED_HEADER_CHARS
    }
    headers.update(relayed_settlement(upstream.get(PAYMENT_RESPONSE)))
    if answer.redactor is not None:
        # A host that could echo a secret in its body could in a header too.
        headers = {name: _redacted(answer.redactor(), value) for name, value in headers.items()}
    headers.update(cost_headers(answer))
    return headers


def _redacted(redactor: BodyFilter, value: str) -> str:
    raw = value.encode("utf-8", "surrogateescape")
    return (redactor.feed(raw) + redactor.flush()).decode("utf-8", "surrogateescape")
