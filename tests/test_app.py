"""The proxy over real HTTP, in front of the fake gateway: routes, guard, payment, relay."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from support.calls import FRACTIONAL_MODEL, FREE_MODEL, Reply, chat, post

from blockrun_proxy.config import Settings
from blockrun_proxy.x402 import usd


def assert_free_to_retry(resp: Reply) -> None:
    """An error before any payment: its own status, none of the marks of an error after
    a payment (424, x-should-retry: false), since retrying it costs nothing."""
    assert resp.status != 424
    assert "x-should-retry" not in resp.headers
    assert "x-blockrun-upstream-status" not in resp.headers


def error_of(raw: bytes) -> dict:
    error = orjson.loads(raw)["error"]
    assert set(error) >= {"message", "type", "code"}
    return error


async def test_healthz(proxy, gateway):
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/healthz") as resp:
        assert resp.status == 200
    assert gateway.requests == []


async def test_free_model_needs_no_payment(proxy, gateway):
    resp = await post(proxy, chat(FREE_MODEL))
    raw = resp.body
    assert resp.status == 200
    assert orjson.loads(raw)["object"] == "chat.completion"
    assert gateway.payments == []
    assert "x-blockrun-cost-usd" not in resp.headers


@pytest.mark.both_clients
async def test_paid_call_signs_once_and_reports_the_settled_cost(proxy, gateway):
    resp = await post(proxy, chat(FRACTIONAL_MODEL, max_tokens=50))
    raw = resp.body
    assert resp.status == 200, raw
    assert raw == gateway.sent_bodies[-1]
    assert len(gateway.payments) == 1 and gateway.payments[0].accepted
    (settled,) = gateway.settled
    assert settled.amount == gateway.price_for(chat(FRACTIONAL_MODEL, max_tokens=50))
    assert resp.headers["x-blockrun-cost-usd"] == usd(settled.amount)
    assert float(resp.headers["x-litellm-response-cost"]) == settled.amount / 1e6
    assert resp.headers["x-blockrun-settlement"] == settled.transaction


@pytest.mark.both_clients
async def test_paid_stream_relays_the_gateways_bytes_unchanged(proxy, gateway):
    resp = await post(proxy, chat(FRACTIONAL_MODEL, stream=True, max_tokens=64))
    raw = resp.body
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert raw == gateway.sent_bodies[-1]
    assert raw.endswith(b"data: [DONE]\n\n")
    assert len(gateway.payments) == 1
    assert resp.headers["x-blockrun-cost-usd"] == usd(gateway.settled[0].amount)


async def test_default_max_tokens_is_added_and_nothing_else_changes(proxy, gateway):
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "top_p": 0.50}' % (
        FREE_MODEL.encode()
    )
    resp = await post(proxy, raw)
    assert resp.status == 200
    assert gateway.chat_requests[-1].body == raw.replace(b'{"model"', b'{"max_tokens":1024,"model"')


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_a_null_max_tokens_gets_the_default_in_the_forwarded_bytes(proxy, gateway, key):
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "%s": null}' % (
        FRACTIONAL_MODEL.encode(),
        key.encode(),
    )
    resp = await post(proxy, raw)
    assert resp.status == 200
    forwarded = [r.body for r in gateway.chat_requests]
    assert forwarded  # the probe and the paid send carry the same bytes
    for body in forwarded:
        assert body == raw.replace(b'"%s": null' % key.encode(), b'"%s":1024' % key.encode())
    assert gateway.settled[0].amount == gateway.price_for({**chat(FRACTIONAL_MODEL), key: 1024})


async def test_client_authorization_never_goes_upstream_and_request_id_does(start_proxy, gateway):
    proxy = await start_proxy(token="s3cret")
    headers = {"Authorization": "Bearer s3cret", "x-request-id": "req-42"}
    resp = await post(proxy, chat(FREE_MODEL), headers=headers)
    assert resp.status == 200
    assert resp.headers["x-request-id"] == "req-42"
    sent = gateway.chat_requests[-1].headers
    assert "Authorization" not in sent
    assert sent["x-request-id"] == "req-42"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_model"),
        (b'{"model": "m"}', 400, "missing_messages"),
        (b'{"model": "m", "messages": [1, 2]}', 400, "invalid_messages"),
        pytest.param(
            b'{"model": "%s", "messages": [{"role": "user"}]}' % (b"m" * 4096),
            400,
            "invalid_model",
            id="4k-model",
        ),
        (b"x" * (2 * 1024 * 1024), 413, "request_too_large"),
    ],
)
async def test_bad_input_is_answered_without_an_upstream_call(
    start_proxy, gateway, body, status, code
):
    proxy = await start_proxy(max_body_bytes=1024 * 1024)
    resp = await post(proxy, body)
    raw = resp.body
    assert resp.status == status
    assert error_of(raw)["code"] == code
    assert gateway.requests == []


async def test_token_guard(start_proxy, gateway):
    proxy = await start_proxy(token="right")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "right"}):
        resp = await post(proxy, chat(FREE_MODEL), headers=headers)
        raw = resp.body
        assert resp.status == 401
        assert error_of(raw)["type"] == "authentication_error"
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/healthz") as resp:
        assert resp.status == 200
    assert gateway.requests == []


async def test_the_bearer_scheme_is_case_insensitive(start_proxy, gateway):
    proxy = await start_proxy(token="right")
    for scheme in ("bearer", "BEARER", "Bearer"):
        resp = await post(proxy, chat(FREE_MODEL), headers={"Authorization": f"{scheme} right"})
        raw = resp.body
        assert resp.status == 200, raw
    for header in ("Basic right", "Bearerright", "right Bearer"):
        resp = await post(proxy, chat(FREE_MODEL), headers={"Authorization": header})
        assert resp.status == 401


async def raw_exchange(proxy, request: bytes) -> bytes:
    """Bytes on a socket, for what HTTP clients refuse to send."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_a_non_utf8_authorization_header_is_a_401_not_a_500(start_proxy, gateway):
    proxy = await start_proxy(token="right")
    body = orjson.dumps(chat(FREE_MODEL))
    answer = await raw_exchange(
        proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer \xff\xfe\xc3\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    head, _, raw = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer
    assert error_of(raw)["code"] == "invalid_proxy_token"
    assert gateway.requests == []


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::"])
def test_a_short_token_is_refused_for_a_public_bind(host):
    with pytest.raises(ValueError, match="shorter than 16"):
        Settings(host=host, token="x" * 15).check()
    Settings(host=host, token="x" * 16).check()
    Settings(host="127.0.0.1", token="short").check()  # loopback: the token is extra


async def test_unknown_route_is_an_openai_shaped_404(proxy, gateway):
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/nope") as resp:
        assert resp.status == 404
        assert error_of(await resp.read())["code"] == "not_found"
    assert gateway.requests == []


async def test_unknown_v1_paths_are_relayed_unless_routes_is_table(start_proxy):
    # --routes all (the default): the gateway decides what it serves.
    relaying = await start_proxy()
    async with aiohttp.ClientSession() as s, s.get(relaying.base_url + "/nope?x=1") as resp:
        assert resp.status == 404
        assert await resp.read() == b"404: Not Found"  # the gateway's own answer
    # --routes table: only the table's routes; anything else is the proxy's own 404.
    table = await start_proxy(routes="table")
    async with aiohttp.ClientSession() as s, s.get(table.base_url + "/nope") as resp:
        assert resp.status == 404
        assert error_of(await resp.read())["code"] == "not_found"


async def test_without_a_wallet_free_works_and_paid_explains(start_proxy, gateway):
    proxy = await start_proxy(wallet_key=None)
    resp = await post(proxy, chat(FREE_MODEL))
    assert resp.status == 200
    resp = await post(proxy, chat(FRACTIONAL_MODEL))
    raw = resp.body
    assert resp.status == 402
    error = error_of(raw)
    assert error["code"] == "wallet_not_configured"
    assert "BLOCKRUN_WALLET_KEY" in error["message"]
    assert_free_to_retry(resp)
    assert gateway.payments == []


async def test_gateway_unreachable_is_502(start_proxy):
    proxy = await start_proxy(api_url="http://127.0.0.1:9/api", probe_retries=0)
    resp = await post(proxy, chat(FREE_MODEL))
    raw = resp.body
    assert resp.status == 502
    assert error_of(raw)["code"] == "gateway_unreachable"
    assert_free_to_retry(resp)


async def test_gateway_error_before_first_byte_keeps_status_body_and_retry_after(proxy, gateway):
    gateway.misbehave.rate_limit = 1
    gateway.misbehave.retry_after = "7"
    resp = await post(proxy, chat(FREE_MODEL, stream=True))
    raw = resp.body
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert "error" in orjson.loads(raw)
    assert_free_to_retry(resp)


async def test_a_refused_quote_is_a_402_free_to_retry(proxy, gateway):
    gateway.misbehave.price_multiplier = 10_000.0  # over the per-call cap
    resp = await post(proxy, chat(FRACTIONAL_MODEL))
    raw = resp.body
    assert resp.status == 402
    assert error_of(raw)["code"] == "amount_over_cap"
    assert_free_to_retry(resp)
    assert gateway.payments == []


async def test_a_failure_after_payment_is_a_424_that_names_the_gateways_status(
    start_proxy, gateway
):
    proxy = await start_proxy(paid_replays=0)
    gateway.misbehave.fail_after_settle = 1
    resp = await post(proxy, chat(FRACTIONAL_MODEL))
    raw = resp.body
    assert resp.status == 424
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["x-blockrun-upstream-status"] == "500"
    assert error_of(raw)["message"] == "The model failed after the payment was settled"
    assert len(gateway.settled) == 1


async def test_unpaid_probe_5xx_is_retried_without_signing(proxy, gateway):
    gateway.misbehave.fail_unpaid = 2
    resp = await post(proxy, chat(FRACTIONAL_MODEL))
    assert resp.status == 200
    assert len(gateway.payments) == 1


async def test_models_are_cached(proxy, gateway):
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(proxy.base_url + "/models") as resp:
                assert resp.status == 200
                assert orjson.loads(await resp.read())["data"]
    assert gateway.models_calls == 1
