"""The API-key rail through the proxy, against the fake API host: every call sent once
with the key and nothing x402, a 402 is "no credit" and never signed, a bad key is the
operator's problem, failures after the send are 424s, no cost is invented, and the key
never reaches a client, a log line or a metric."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from support.calls import PRICED_MODEL, chat, get, post
from support.gateway_client import ANTHROPIC_BODY, GEMINI_BODY
from support.scripted import ScriptedServer

from blockrun_proxy.apikey import COST_SOURCE_HEADER
from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.config import API_KEY_PREFIX
from blockrun_proxy.costs import COST_HEADER, LITELLM_COST_HEADER
from blockrun_proxy.testing import ApiKeyFakeGateway
from blockrun_proxy.x402.svm._base58 import b58encode

# Every gateway call of this rail goes through the chosen upstream client: run on both.
pytestmark = pytest.mark.both_clients

VIDEO = {"model": "xai/grok-imagine-video", "prompt": "an apple spinning", "duration_seconds": 5}
ROUTES = [
    ("/v1/chat/completions", chat(PRICED_MODEL, "hi", max_tokens=32)),
    ("/v1/messages", ANTHROPIC_BODY),
    ("/v1beta/models/gemini-2.5-flash:generateContent", GEMINI_BODY),
    ("/v1/images/generations", {"prompt": "a cat"}),
    ("/v1/search", {"query": "x402"}),
]


@pytest.fixture
async def start(api_host: ApiKeyFakeGateway, run_proxy: Any) -> Any:
    """A proxy on the API-key rail; a wallet is configured too, and must never be used."""

    async def start_proxy(key: str | None = None, **fields: Any) -> Any:
        from solders.keypair import Keypair

        return await run_proxy(
            api_key=key or api_host.new_key(),
            api_key_url=api_host.base_url,
            wallet_key="0x" + secrets.token_hex(32),
            solana_key=b58encode(bytes(Keypair())),
            networks=("eip155:84532", "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"),
            **fields,
        )

    return start_proxy


def assert_no_cost_invented(headers: Any) -> None:
    assert headers[COST_SOURCE_HEADER] == "none"
    assert LITELLM_COST_HEADER not in headers and COST_HEADER not in headers


def assert_nothing_signed(proxy: Any) -> None:
    payer = proxy.app[CORE_KEY].payer
    assert payer.payments_sent == 0 and payer.evm.payments_sent == 0
    assert payer.solana is None  # no Solana rail at all: nothing to sign with


async def test_paid_calls_go_once_with_the_key_and_nothing_x402(
    start, api_host: ApiKeyFakeGateway
) -> None:
    key = api_host.new_key(credit=10_000_000)
    proxy = await start(key)
    assert proxy.app[CORE_KEY].rail == "apikey"
    plain = await post(proxy, chat(PRICED_MODEL, "hello", max_tokens=40))
    assert plain.status == 200, plain.body
    assert plain.body == api_host.sent_bodies[-1]
    assert_no_cost_invented(plain.headers)
    streamed = await post(proxy, chat(PRICED_MODEL, "hello", stream=True, max_tokens=40))
    assert streamed.status == 200 and streamed.body == api_host.sent_bodies[-1]
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert_no_cost_invented(streamed.headers)
    calls = [r for r in api_host.requests if r.path == "/v1/chat/completions"]
    assert len(calls) == 2  # no probe: one send per call
    assert {r.headers["Authorization"] for r in calls} == {f"Bearer {key}"}
    assert [c.key for c in api_host.charges] == [key, key]
    assert_nothing_signed(proxy)


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[p for p, _ in ROUTES])
async def test_every_route_is_billed_to_the_key(
    start, api_host: ApiKeyFakeGateway, path: str, body: dict[str, Any]
) -> None:
    proxy = await start()
    reply = await post(proxy, body, path=path)
    assert reply.status == 200, reply.body
    assert reply.body == api_host.sent_bodies[-1]
    assert len(api_host.charges) == 1
    assert_no_cost_invented(reply.headers)


async def test_the_clients_credentials_never_go_upstream_the_key_does(
    start, api_host: ApiKeyFakeGateway
) -> None:
    key = api_host.new_key()
    token = secrets.token_hex(16)
    proxy = await start(key, token=token)
    headers = {"Authorization": f"Bearer {token}", "x-api-key": "sk-client"}
    reply = await post(proxy, chat(PRICED_MODEL, "hi"), headers=headers)
    assert reply.status == 200, reply.body
    (sent,) = [r for r in api_host.requests if r.path == "/v1/chat/completions"]
    assert sent.headers.getall("Authorization") == [f"Bearer {key}"]
    assert "x-api-key" not in sent.headers and "Accept-Encoding" not in sent.headers


async def test_no_credit_is_a_402_and_nothing_is_ever_signed(
    start, api_host: ApiKeyFakeGateway
) -> None:
    proxy = await start(api_host.new_key(credit=0))
    reply = await post(proxy, chat(PRICED_MODEL, "hi"))
    assert (reply.status, reply.code) == (402, "api_key_no_credit"), reply.body
    assert "no credit" in reply.error_body["message"]
    assert "Insufficient credit" in reply.error_body["message"]  # the host's own words
    assert api_host.charges == []
    assert len([r for r in api_host.requests if r.path == "/v1/chat/completions"]) == 1
    assert_nothing_signed(proxy)


@pytest.mark.parametrize("revoked", [False, True], ids=["unknown-401", "revoked-403"])
async def test_a_bad_key_is_a_502_for_the_operator(
    start, api_host: ApiKeyFakeGateway, revoked: bool
) -> None:
    key = api_host.new_key() if revoked else "brk_live_" + secrets.token_hex(16)
    api_host.revoked.update({key} if revoked else set())
    proxy = await start(key)
    reply = await post(proxy, chat(PRICED_MODEL, "hi"))
    assert (reply.status, reply.code) == (502, "api_key_rejected"), reply.body
    assert reply.headers["x-should-retry"] == "false"
    assert ("403" if revoked else "401") in reply.error_body["message"]
    assert key not in reply.body.decode()
    assert_nothing_signed(proxy)


@pytest.mark.parametrize("knob", ["fail_paid", "fail_after_settle"])
async def test_a_5xx_after_the_send_is_a_424_and_never_resent(
    start, api_host: ApiKeyFakeGateway, knob: str
) -> None:
    proxy = await start()
    setattr(api_host.misbehave, knob, 1)
    reply = await post(proxy, chat(PRICED_MODEL, "hi"))
    assert reply.status == 424, reply.body
    assert reply.headers["x-should-retry"] == "false"
    assert reply.headers["x-blockrun-upstream-status"] in ("500", "503")
    assert reply.error_body  # the host's own OpenAI-shaped error, as it came
    assert len([r for r in api_host.requests if r.path == "/v1/chat/completions"]) == 1


async def test_errors_before_billing_pass_through(start, api_host: ApiKeyFakeGateway) -> None:
    proxy = await start()
    unknown = await post(proxy, chat("no/such-model", "hi"))
    assert unknown.status == 404 and unknown.code == "model_not_found"
    api_host.misbehave.rate_limit = 1
    api_host.misbehave.retry_after = "7"
    limited = await post(proxy, chat(PRICED_MODEL, "hi"))
    assert limited.status == 429 and limited.headers["Retry-After"] == "7"
    assert api_host.charges == []


async def test_an_unreachable_host_is_a_502_with_nothing_billed(run_proxy: Any) -> None:
    proxy = await run_proxy(api_key="brk_" + secrets.token_hex(8), api_key_url="http://127.0.0.1:9")
    reply = await post(proxy, chat(PRICED_MODEL, "hi"))
    assert (reply.status, reply.code) == (502, "gateway_unreachable"), reply.body
    assert "nothing was sent or billed" in reply.error_body["message"]


async def test_a_job_is_billed_once_and_polled_with_the_key(
    start, api_host: ApiKeyFakeGateway
) -> None:
    key = api_host.new_key(credit=10_000_000)
    proxy = await start(key)
    submit = await post(proxy, VIDEO, path="/v1/videos/generations")
    assert submit.status == 202, submit.body
    poll_url = submit.json["poll_url"]
    assert poll_url.startswith("/api/v1/videos/generations/")  # the proxy drops /api
    statuses = [(await get(proxy, poll_url)).status for _ in range(4)]
    assert statuses == [202, 202, 200, 200]
    price = api_host.price_for(VIDEO, "/v1/videos/generations")
    assert [(c.key, c.amount) for c in api_host.charges] == [(key, price)]
    polls = [r for r in api_host.requests if r.method == "GET" and "/generations/" in r.path]
    assert len(polls) == 4 and all(r.path.startswith("/v1/") for r in polls)
    assert {r.headers["Authorization"] for r in polls} == {f"Bearer {key}"}


async def test_readyz_says_the_key_pays(start) -> None:
    proxy = await start()
    assert (await get(proxy, "/readyz")).json["wallet"] == "api key: prepaid credit"


# --- the key stays secret, even from a host that echoes it ---------------------------------


class EchoingHost:
    """An API host that echoes the Authorization header it got, in every answer: in a
    streamed body (split across two writes mid-key), in a 500, a 402 and a 400, and in a
    header the proxy passes on (Cache-Control)."""

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        said = request.headers.get("Authorization", "")
        return web.json_response({"data": [], "note": said})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        said = request.headers.get("Authorization", "")
        body = orjson.loads(await request.read())
        status = {"500": 500, "402": 402, "400": 400}.get(body["messages"][0]["content"])
        if status is not None:
            error = {"message": f"bad request from {said}", "type": "x", "code": "y"}
            echoed = {"Cache-Control": f"private, note={said}"}
            return web.json_response({"error": error}, status=status, headers=echoed)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": f"no-store, {said}"}
        )
        await response.prepare(request)
        frame = f'data: {{"echo": "{said}"}}\n\n'.encode()
        cut = frame.index(b"brk_") + 10  # mid-key: the redaction must see across writes
        await response.write(frame[:cut])
        await asyncio.sleep(0.01)
        await response.write(frame[cut:] + b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def echoing() -> AsyncIterator[EchoingHost]:
    host = EchoingHost()
    await host.start()
    yield host
    await host.close()


async def test_the_key_never_reaches_a_client_a_log_or_a_metric(
    run_proxy: Any, echoing: EchoingHost, caplog: pytest.LogCaptureFixture
) -> None:
    key = "brk_live_" + secrets.token_hex(24)
    caplog.set_level(logging.DEBUG)
    proxy = await run_proxy(api_key=key, api_key_url=echoing.url)
    assert key not in repr(proxy.settings) and key not in repr(proxy.app[CORE_KEY].gateway)
    seen: list[bytes] = []
    streamed = await post(proxy, chat(PRICED_MODEL, "stream please", stream=True))
    assert streamed.status == 200 and b"brk_[redacted]" in streamed.body
    assert "brk_[redacted]" in streamed.headers["Cache-Control"]
    seen.append(streamed.body)
    seen.extend(f"{k}: {v}".encode() for k, v in streamed.headers.items())
    for trigger, status in (("500", 424), ("402", 402), ("400", 400)):
        reply = await post(proxy, chat(PRICED_MODEL, trigger))
        assert reply.status == status, reply.body
        assert b"brk_[redacted]" in reply.body
        seen.append(reply.body)
        seen.extend(f"{k}: {v}".encode() for k, v in reply.headers.items())
    models = await get(proxy, "/v1/models")
    assert b"brk_[redacted]" in models.body
    seen.append(models.body)
    seen.append((await get(proxy, "/metrics")).body)
    seen.append((await get(proxy, "/v1/spend")).body)
    seen.extend(record.getMessage().encode() for record in caplog.records)
    seen.extend(repr(record.__dict__).encode() for record in caplog.records)
    leaks = [chunk for chunk in seen if key.encode() in chunk or key[4:].encode() in chunk]
    assert not leaks


async def test_the_in_process_provider_redacts_the_key_too(echoing: EchoingHost) -> None:
    from blockrun_proxy.config import Settings
    from blockrun_proxy.inprocess import CallError, Core

    key = "brk_live_" + secrets.token_hex(24)
    core = Core(Settings(api_key=key, api_key_url=echoing.url, state_dir=None))
    try:
        stream = await core.run_async(core.open_stream(chat(PRICED_MODEL, "stream please")))
        assert stream.cost_usd is None  # the host reports none: LiteLLM gets none invented
        assert "x-litellm-response-cost" not in stream.headers
        events = []
        while (event := await core.run_async(stream.next_event())) is not None:
            events.append(event)
        assert events == [{"echo": "Bearer brk_[redacted]"}]
        with pytest.raises(CallError) as exc:
            await core.run_async(core.complete(chat(PRICED_MODEL, "400")))
        assert "brk_[redacted]" in str(exc.value) and key not in str(exc.value)
    finally:
        core.close()


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (None, "paid_call_dropped"),  # the connection closed after the request was read
        (b"NOT HTTP AT ALL\r\n\r\n", "bad_gateway_answer"),
    ],
)
async def test_a_broken_answer_after_the_send_is_a_424_on_either_client(
    run_proxy: Any, answer: bytes | None, code: str
) -> None:
    """Each client's own failures after the send (h1's errors are not aiohttp's) are the
    rail's 424, never a 500 and never a second send."""
    host = await ScriptedServer(lambda request: answer).start()
    try:
        proxy = await run_proxy(
            api_key=f"{API_KEY_PREFIX}test_{secrets.token_hex(16)}",
            api_key_url=f"http://127.0.0.1:{host.port}",
        )
        reply = await post(proxy, chat(PRICED_MODEL, "hi"))
        assert reply.status == 424, reply.body
        assert reply.code == code
        assert reply.headers["x-should-retry"] == "false"
        assert len(host.requests) == 1
    finally:
        await host.close()
