"""The never-pay-twice fault matrix (PROTOCOL.md section 5), on both payment paths.

"cold": no trusted quote, probe-then-pay (two round trips). "warm": the quote
model is trusted and the first request carries a payment signed up front. Each
test counts the distinct authorizations the gateway received (nonces) and what
they were for, and every client call must have carried at most one nonce
(``assert_one_nonce_per_call``; the ``gateway`` fixture checks it after every test).
Every failure after a payment was sent is answered 424 (see
``assert_failed_after_payment``), so that no client's own retries pay again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from support.calls import PRICED_MODEL, TEST_NETWORK, Reply, chat, post
from support.payments import (
    assert_one_nonce_per_call,
    chat_requests,
    nonces,
    priced,
    warm_body,
    warm_up,
)

from blockrun_proxy.testing import FakeGateway

# The payment rules hold whichever HTTP client talks to the gateway.
pytestmark = pytest.mark.both_clients

PATHS = ["cold", "warm"]


async def ready(start_proxy, path: str, **settings):
    proxy = await start_proxy(**settings)
    if path == "warm":
        await warm_up(proxy)
    return proxy


def body_for(path: str, stream: bool = False):
    """A plain (or streamed) request: one the warm model surely pins, or any."""
    if path == "warm":
        return warm_body(PRICED_MODEL, stream=stream)
    return chat(PRICED_MODEL, max_tokens=64, stream=stream)


def assert_first_request_paid(gateway, before: int, path: str) -> None:
    first = chat_requests(gateway, before)[0]
    assert (first.payment is not None) == (path == "warm"), "presign expectation"


def assert_failed_after_payment(reply: Reply, upstream_status: str) -> dict[str, Any]:
    """The answer to any failure after a payment was sent: a status that no common client
    retries on its own (they retry 408, 409, 429, 5xx), marked not to be retried, saying
    what the gateway did, with an OpenAI-shaped body. Returns the body's error."""
    assert reply.status == 424
    assert reply.headers["x-should-retry"] == "false"
    assert reply.headers["x-blockrun-upstream-status"] == upstream_status
    assert "Retry-After" not in reply.headers  # an invitation to the retry that pays again
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json["error"]
    assert isinstance(error["message"], str) and error["type"] and error["code"]
    return dict(error)


def assert_not_marked_paid(reply: Reply) -> None:
    """An error before any payment keeps its status and carries no after-payment marks:
    retrying it costs nothing."""
    assert reply.status != 424
    assert "x-should-retry" not in reply.headers
    assert "x-blockrun-upstream-status" not in reply.headers


# --- before anything is signed ----------------------------------------------------------------


async def test_5xx_on_the_unpaid_probe_is_retried_unpaid_then_paid_once(proxy, gateway):
    gateway.misbehave.fail_unpaid = 2  # the proxy retries the probe twice by default
    body = chat(PRICED_MODEL, max_tokens=64)
    reply = await post(proxy, body)
    assert reply.status == 200
    assert [r.payment is None for r in chat_requests(gateway)] == [True, True, True, False]
    assert len(nonces(gateway)) == 1
    assert [s.amount for s in gateway.settled] == [priced(gateway, body)]


async def test_5xx_on_every_probe_is_bounded_and_signs_nothing(proxy, gateway):
    gateway.misbehave.fail_unpaid = 10
    reply = await post(proxy, chat(PRICED_MODEL))
    assert reply.status == 503
    assert_not_marked_paid(reply)
    assert len(chat_requests(gateway)) == 3  # first try + 2 retries
    assert gateway.payments == []


# --- after the paid send -----------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_5xx_on_the_paid_send_replays_the_same_signature(start_proxy, gateway, path):
    proxy = await ready(start_proxy, path)
    before, pay_before, paid_before = (
        len(gateway.requests),
        len(gateway.payments),
        len(gateway.settled),
    )
    gateway.misbehave.fail_paid = 2  # within the 2 replays allowed
    body = body_for(path)
    reply = await post(proxy, body)
    assert reply.status == 200
    assert_first_request_paid(gateway, before, path)
    records = gateway.payments[pay_before:]
    assert len(records) == 3  # one authorization, sent three times ...
    assert len({(r.nonce, r.signature) for r in records}) == 1  # ... byte-identical
    assert [s.amount for s in gateway.settled[paid_before:]] == [priced(gateway, body)]


@pytest.mark.parametrize("path", PATHS)
async def test_5xx_after_all_replays_is_surfaced_never_re_signed(start_proxy, gateway, path):
    proxy = await ready(start_proxy, path)
    before, pay_before, paid_before = (
        len(gateway.requests),
        len(gateway.payments),
        len(gateway.settled),
    )
    gateway.misbehave.fail_paid = 10
    gateway.misbehave.retry_after = "7"
    reply = await post(proxy, body_for(path))
    error = assert_failed_after_payment(reply, "503")
    assert error["code"] == "fake_gateway_failure"  # the gateway's OpenAI-shaped body, kept
    assert len(nonces(gateway, pay_before)) == 1
    assert len(gateway.payments) - pay_before == 3
    assert gateway.settled[paid_before:] == []
    assert_first_request_paid(gateway, before, path)


@pytest.mark.parametrize("path", PATHS)
async def test_connection_reset_mid_stream_is_never_re_signed(start_proxy, gateway, path):
    proxy = await ready(start_proxy, path)
    before, pay_before, paid_before = (
        len(gateway.requests),
        len(gateway.payments),
        len(gateway.settled),
    )
    gateway.misbehave.reset_after_events = 3
    body = body_for(path, stream=True)
    reply = await post(proxy, body)
    assert reply.status == 200 and reply.error is not None  # headers out, then cut
    assert len(nonces(gateway, pay_before)) == 1
    assert len(gateway.payments) - pay_before == 1  # bytes reached the client: no replay
    assert [s.amount for s in gateway.settled[paid_before:]] == [priced(gateway, body)]
    assert len(chat_requests(gateway, before)) == (1 if path == "warm" else 2)


@pytest.mark.parametrize("path", PATHS)
async def test_payment_replay_is_surfaced_never_re_signed(start_proxy, gateway, path):
    proxy = await ready(start_proxy, path)
    before, pay_before = len(gateway.requests), len(gateway.payments)
    gateway.misbehave.replay_on_paid = True
    reply = await post(proxy, body_for(path))
    assert assert_failed_after_payment(reply, "409")["code"] == "PAYMENT_REPLAY"
    assert len(nonces(gateway, pay_before)) == 1
    assert len(chat_requests(gateway, before)) == (1 if path == "warm" else 2)


@pytest.mark.parametrize("fresh_challenge", [False, True], ids=["PAYMENT_INVALID", "fresh-402"])
async def test_refused_presign_is_re_signed_once_under_the_same_nonce(
    start_proxy, gateway, fresh_challenge
):
    proxy = await ready(start_proxy, "warm")
    gateway.misbehave.price_multiplier = 1.5  # the learned price is now too low
    gateway.misbehave.fresh_challenge_on_invalid = fresh_challenge
    before, pay_before, paid_before = (
        len(gateway.requests),
        len(gateway.payments),
        len(gateway.settled),
    )
    body = body_for("warm")
    reply = await post(proxy, body)
    assert reply.status == 200
    # presigned (refused, not used) -> re-asked unpaid -> paid the fresh challenge
    assert [r.payment is not None for r in chat_requests(gateway, before)] == [True, False, True]
    records = gateway.payments[pay_before:]
    # Two authorizations, one nonce: whatever the gateway does with the refused one, at
    # most one of the two can ever settle.
    assert len(nonces(gateway, pay_before)) == 1
    assert records[0].signature != records[1].signature
    assert [r.accepted for r in records] == [False, True]
    assert records[0].amount < records[1].amount == priced(gateway, body)
    assert [s.amount for s in gateway.settled[paid_before:]] == [priced(gateway, body)]


class SkewedClock:
    """The gateway's clock; jumping it ahead makes every authorization look expired."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew


async def test_a_refused_fresh_payment_is_surfaced_without_a_third_signature(start_proxy):
    clock = SkewedClock()
    async with FakeGateway(network=TEST_NETWORK, clock=clock) as gateway:
        proxy = await start_proxy(api_url=gateway.base_url)
        await warm_up(proxy)
        clock.skew = 10_000.0
        before, pay_before = len(gateway.requests), len(gateway.payments)
        reply = await post(proxy, body_for("warm"))
        assert reply.status == 402 and reply.code == "payment_not_accepted"
        assert_not_marked_paid(reply)  # both refused as not used: nothing was charged
        assert [r.payment is not None for r in chat_requests(gateway, before)] == [
            True,
            False,
            True,
        ]
        assert len(nonces(gateway, pay_before)) == 1  # re-signed under the first one's nonce
        assert not any(r.accepted for r in gateway.payments[pay_before:])
        assert_one_nonce_per_call(gateway)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What a paid request meets after the fake has handled it (and, the first time, settled it).
AfterPaid = Callable[[web.Request, web.StreamResponse], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def when_paid(after: AfterPaid) -> AsyncIterator[tuple[FakeGateway, dict[str, bool]]]:
    """A fake gateway whose answers to paid requests, while ``switch["on"]``, go through
    ``after`` once the fake has handled them: charged, then whatever ``after`` does."""
    gateway = FakeGateway(network=TEST_NETWORK)
    switch = {"on": False}

    @web.middleware
    async def intercept(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if switch["on"] and "PAYMENT-SIGNATURE" in request.headers:
            return await after(request, response)
        return response

    gateway.app.middlewares.append(intercept)
    async with gateway:
        yield gateway, switch
    assert_one_nonce_per_call(gateway)


def slow_when_paid(seconds: float) -> contextlib.AbstractAsyncContextManager[Any]:
    """Settles, then sits on the answer for ``seconds``: the client hears nothing in time."""

    async def sit(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return response

    return when_paid(sit)


async def drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Settles (the first time), then cuts the connection before any answer."""
    assert request.transport is not None
    request.transport.abort()
    return response


def received_nonces(gateway: FakeGateway, since: int) -> list[str]:
    """Authorizations the gateway received, settled or not (from the request log)."""
    return [
        r.payment["payload"]["authorization"]["nonce"]
        for r in chat_requests(gateway, since)
        if r.payment is not None
    ]


@pytest.mark.parametrize("path", PATHS)
async def test_gateway_timeout_after_the_paid_send_is_surfaced_not_re_signed(start_proxy, path):
    async with slow_when_paid(5.0) as (gateway, switch):
        proxy = await start_proxy(api_url=gateway.base_url, idle_timeout_seconds=0.3)
        if path == "warm":
            await warm_up(proxy)
        switch["on"] = True
        before, paid_before = len(gateway.requests), len(gateway.settled)
        body = body_for(path)
        reply = await post(proxy, body)
        error = assert_failed_after_payment(reply, "timeout")
        assert error["code"] == "paid_call_timeout"
        assert "may have been charged" in error["message"]
        assert_first_request_paid(gateway, before, path)
        # It was charged once; one authorization reached the gateway and the proxy,
        # having answered the client, can sign nothing more for this call.
        assert [s.amount for s in gateway.settled[paid_before:]] == [priced(gateway, body)]
        assert len(received_nonces(gateway, before)) == 1
        assert len(chat_requests(gateway, before)) == (1 if path == "warm" else 2)


@pytest.mark.parametrize("path", PATHS)
async def test_dropped_connections_after_the_paid_send_are_surfaced_not_re_signed(
    start_proxy, path
):
    async with when_paid(drop) as (gateway, switch):
        proxy = await start_proxy(api_url=gateway.base_url)
        if path == "warm":
            await warm_up(proxy)
        switch["on"] = True
        before, paid_before = len(gateway.requests), len(gateway.settled)
        body = body_for(path)
        reply = await post(proxy, body)
        error = assert_failed_after_payment(reply, "dropped")
        assert error["code"] == "paid_call_dropped"
        assert "may have been charged" in error["message"]
        assert_first_request_paid(gateway, before, path)
        # The first send was settled; the replays of the same authorization were dropped too.
        assert [s.amount for s in gateway.settled[paid_before:]] == [priced(gateway, body)]
        assert received_nonces(gateway, before) == received_nonces(gateway, before)[:1] * 3


async def test_a_replay_that_cannot_connect_after_a_delivered_send_is_a_paid_failure(
    start_proxy,
):
    # The first paid send reaches the gateway (settled, then cut); the gateway then stops
    # listening, so the replays cannot even connect. "Unreachable" must not read as
    # "nothing was sent": the call may have been charged, and a client retry pays again.
    gateway = FakeGateway(network=TEST_NETWORK)
    runner = web.AppRunner(gateway.app, shutdown_timeout=1.0)

    async def vanish(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        for site in list(runner.sites):
            await site.stop()
        assert runner.server is not None
        for connection in runner.server.connections:  # idle keep-alive ones too
            connection.force_close()
        return await drop(request, response)

    @web.middleware
    async def intercept(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if "PAYMENT-SIGNATURE" in request.headers:
            return await vanish(request, response)
        return response

    gateway.app.middlewares.append(intercept)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        proxy = await start_proxy(api_url=f"http://127.0.0.1:{port}/api")
        body = body_for("cold")
        reply = await post(proxy, body)
        error = assert_failed_after_payment(reply, "dropped")
        assert error["code"] == "paid_call_unreachable"
        assert "may have been charged" in error["message"]
        assert [s.amount for s in gateway.settled] == [priced(gateway, body)]
        assert len(received_nonces(gateway, 0)) == 1  # only the first send got through
        assert_one_nonce_per_call(gateway)
    finally:
        await runner.cleanup()


# Gateway error bodies after payment that are not OpenAI-shaped: they are wrapped into one.
NOT_OPENAI_SHAPED = [
    (502, "text/html", b"<html>502 Bad Gateway</html>", "paid_call_failed", None),
    (
        409,
        "application/json",
        b'{"recoverable": true, "poll_url": "/v1/jobs/j-1", "job_id": "j-1"}',
        "payment_replay",
        {"recoverable": True, "poll_url": "/v1/jobs/j-1", "job_id": "j-1"},
    ),
]


@pytest.mark.parametrize(
    ("status", "content_type", "raw", "code", "kept"), NOT_OPENAI_SHAPED, ids=["html", "served"]
)
async def test_a_gateway_error_body_after_payment_that_is_not_openai_shaped_is_wrapped(
    start_proxy, status, content_type, raw, code, kept
):
    async def replace(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        return web.Response(status=status, body=raw, content_type=content_type)

    async with when_paid(replace) as (gateway, switch):
        proxy = await start_proxy(api_url=gateway.base_url)
        switch["on"] = True
        reply = await post(proxy, body_for("cold"))
        error = assert_failed_after_payment(reply, str(status))
        assert error["code"] == code and error["type"] == "upstream_error"
        assert error["message"] == (
            f"the gateway failed after the payment was sent (status {status}); "
            "it may have been charged. Not retried."
        )
        # A JSON object the gateway sent is kept: here it says where the paid result is.
        assert error.get("gateway") == kept
        sent = received_nonces(gateway, 0)
        assert len(set(sent)) == 1  # one authorization ...
        assert len(sent) == (3 if status >= 500 else 1)  # ... replayed twice after a 5xx
        assert len(gateway.settled) == 1


async def test_an_unreadable_answer_to_the_paid_send_is_a_424_not_replayed(start_proxy):
    async def oversized(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        return web.Response(status=402, headers={"PAYMENT-REQUIRED": "A" * 100_000})

    async with when_paid(oversized) as (gateway, switch):
        proxy = await start_proxy(api_url=gateway.base_url)
        switch["on"] = True
        reply = await post(proxy, body_for("cold"))
        error = assert_failed_after_payment(reply, "malformed")
        assert error["code"] == "bad_payment_requirement"
        assert len(received_nonces(gateway, 0)) == 1  # one send: the gateway did answer


@pytest.mark.parametrize("path", PATHS)
async def test_concurrent_identical_requests_each_get_their_own_nonce(start_proxy, gateway, path):
    proxy = await ready(start_proxy, path)
    pay_before, paid_before = len(gateway.payments), len(gateway.settled)
    body = body_for(path)
    replies = await asyncio.gather(*(post(proxy, body) for _ in range(8)))
    assert [r.status for r in replies] == [200] * 8
    assert len(nonces(gateway, pay_before)) == 8
    assert len(gateway.payments) - pay_before == 8
    assert [s.amount for s in gateway.settled[paid_before:]] == [priced(gateway, body)] * 8
