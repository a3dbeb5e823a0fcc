"""Every route family through the proxy, against the fake gateway's every route (issue 10).

Each family is paid through the one signed pipe: paid, streamed where the route streams,
the gateway's bytes unchanged, one nonce per call (the ``gateway`` fixture checks that for
every request id at teardown), the browser guard and the per-call cap holding for every
family, client credentials never upstream. Jobs are paid once at submit; their polls go
through the proxy and replay that payment, never a new one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson
import pytest
from support.calls import TEST_NETWORK, Reply, get, post, request
from support.gateway_client import ANTHROPIC_BODY, GEMINI_BODY, PAID_ROUTES, sse_events
from support.payments import nonces

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.x402 import usd

INLINE = [r for r in PAID_ROUTES if r[0] not in ("music", "videos")]
INLINE_IDS = [name for name, *_ in INLINE]
STREAMS = {
    "messages": ("/v1/messages", {**ANTHROPIC_BODY, "stream": True}),
    "gemini_stream": (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        GEMINI_BODY,
    ),
    "chat": ("/v1/chat/completions", {"model": "openai/gpt-5.5", "stream": True,
             "messages": [{"role": "user", "content": "hi"}]}),
}  # fmt: skip
VIDEO = {"model": "xai/grok-imagine-video", "prompt": "an apple spinning", "duration_seconds": 5}
EVIL = "https://evil.example"


def only_settlement(gateway: FakeGateway) -> int:
    (settled,) = gateway.settled
    return settled.amount


def assert_paid_once(reply: Reply, gateway: FakeGateway) -> None:
    assert reply.status == 200, reply.body
    assert reply.body == gateway.sent_bodies[-1]  # the gateway's bytes, unchanged
    amount = only_settlement(gateway)
    assert reply.headers["x-blockrun-cost-usd"] == usd(amount)
    assert len(nonces(gateway)) == 1


@pytest.mark.parametrize(("name", "path", "body", "dialect"), INLINE, ids=INLINE_IDS)
async def test_every_inline_route_is_paid_once_and_relayed_unchanged(
    proxy, gateway, name, path, body, dialect
) -> None:
    reply = await post(proxy, body, path=path)
    assert_paid_once(reply, gateway)
    # (The quote book may fetch the catalogue when it meets a model: not this route's call.)
    (probe, paid) = [r for r in gateway.requests if r.path == "/api" + urlsplit(path).path]
    assert probe.payment is None and paid.payment is not None
    if name == "chat":  # the one route that gets a default max_tokens
        assert orjson.loads(paid.body) == {**body, "max_tokens": 1024}
    else:
        assert paid.body == orjson.dumps(body)  # as the client sent it


@pytest.mark.parametrize("name", STREAMS)
async def test_streamed_routes_relay_their_event_stream(proxy, gateway, name) -> None:
    path, body = STREAMS[name]
    reply = await post(proxy, body, path=path)
    assert_paid_once(reply, gateway)
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(reply.body) if name != "chat" else []
    if name == "messages":
        assert [e for e, _ in events][:1] == ["message_start"]
        assert events[-1][0] == "message_stop"
    if name == "gemini_stream":
        assert gateway.requests[-1].query == "alt=sse"  # the query is kept
        assert events[-1][1]["candidates"][0]["finishReason"] == "STOP"


async def test_speech_as_binary_audio_is_relayed_byte_for_byte(start_proxy) -> None:
    gateway = FakeGateway(network=TEST_NETWORK, speech_format="audio")
    await gateway.start()
    try:
        proxy = await start_proxy(api_url=gateway.base_url)
        reply = await post(proxy, {"input": "hello there"}, path="/v1/audio/speech")
        assert_paid_once(reply, gateway)
        assert not reply.headers["Content-Type"].startswith("application/json")
        assert len(reply.body) > 1000
    finally:
        await gateway.close()


async def test_count_tokens_is_free_and_anthropic_needs_its_own_max_tokens(proxy, gateway) -> None:
    reply = await post(proxy, ANTHROPIC_BODY, path="/v1/messages/count_tokens")
    assert reply.status == 200 and "input_tokens" in reply.json
    assert gateway.payments == []
    assert "x-blockrun-cost-usd" not in reply.headers
    without = {k: v for k, v in ANTHROPIC_BODY.items() if k != "max_tokens"}
    reply = await post(proxy, without, path="/v1/messages")
    assert reply.status == 400 and reply.code == "invalid_max_tokens"  # no default added
    sent = [r for r in gateway.requests if r.path.startswith("/api/v1/messages")]
    assert len(sent) == 1  # the refused one never left the proxy


async def test_client_credentials_never_go_upstream_and_anthropic_headers_do(
    proxy, gateway
) -> None:
    headers = {
        "x-api-key": "sk-ant-secret",
        "Authorization": "Bearer sk-secret",
        "x-goog-api-key": "goog-secret",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "tools-2024-04-04",
    }
    assert (await post(proxy, ANTHROPIC_BODY, path="/v1/messages", headers=headers)).status == 200
    path = "/v1beta/models/gemini-2.5-flash:generateContent?key=goog-secret&alt=json"
    assert (await post(proxy, GEMINI_BODY, path=path, headers=headers)).status == 200
    for sent in gateway.requests:
        assert not {"x-api-key", "authorization", "x-goog-api-key"} & {
            h.lower() for h in sent.headers
        }
        assert "secret" not in sent.query
    messages = [r for r in gateway.requests if r.path == "/api/v1/messages"]
    assert {r.headers["anthropic-version"] for r in messages} == {"2023-06-01"}
    assert {r.headers["anthropic-beta"] for r in messages} == {"tools-2024-04-04"}
    assert {r.query for r in gateway.requests if "gemini" in r.path} == {"alt=json"}


@pytest.mark.parametrize(
    ("name", "path", "body", "dialect"), PAID_ROUTES, ids=[r[0] for r in PAID_ROUTES]
)
async def test_a_hostile_price_gets_no_signature_on_any_route(
    proxy, gateway, name, path, body, dialect
) -> None:
    gateway.misbehave.price_multiplier = 10_000.0  # over the per-call cap
    reply = await post(proxy, body, path=path)
    assert reply.status == 402 and reply.code == "amount_over_cap"
    assert gateway.payments == []


BROWSER = [
    ({"Origin": EVIL}, 403, "origin_not_allowed"),
    ({"Sec-Fetch-Site": "cross-site"}, 403, "cross_site_request"),
    ({"Host": "evil.example"}, 403, "host_not_allowed"),
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "dialect"), PAID_ROUTES, ids=[r[0] for r in PAID_ROUTES]
)
async def test_a_browser_reaches_nothing_on_any_route(
    proxy, gateway, name, path, body, dialect
) -> None:
    for headers, status, code in BROWSER:
        reply = await post(proxy, body, path=path, headers=headers)
        assert (reply.status, reply.code) == (status, code), headers
    for path_ in ("/v1/models", "/api/v1/videos/generations/xai%3Avidjob_x", "/v1/other"):
        reply = await get(proxy, path_, headers={"Origin": EVIL})
        assert (reply.status, reply.code) == (403, "origin_not_allowed")
    assert gateway.requests == [] and gateway.payments == []


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/v1/videos/generations", VIDEO, "videos"),
        ("/v1/audio/generations", {"prompt": "synthwave"}, "audio"),
        ("/v1/images/generations", {"model": "openai/gpt-image-2", "prompt": "a cat"}, "images"),
    ],
    ids=["video", "music", "slow-image"],
)
async def test_a_job_is_paid_once_and_polled_through_the_proxy_with_that_payment(
    proxy, gateway, path, body, kind
) -> None:
    submit = await post(proxy, body, path=path)
    assert submit.status == 202, submit.body
    assert submit.body == gateway.sent_bodies[-1]  # a relative poll_url: not rewritten
    price = gateway.price_for(body, path)
    assert submit.headers["x-blockrun-cost-usd"] == usd(price)
    poll_url = submit.json["poll_url"]
    assert poll_url.startswith(f"/api/v1/{kind}/generations/")
    statuses = []
    for _ in range(4):  # the fake completes on the third poll; the fourth is served again
        polled = await get(proxy, poll_url)
        statuses.append(polled.status)
        assert polled.headers["x-litellm-response-cost"] == usd(0)  # paid at submit
    assert statuses == [202, 202, 200, 200]
    assert polled.json["payment"]["status"] == "already_settled"
    assert [s.amount for s in gateway.settled] == [price]  # once
    polls = [r for r in gateway.requests if r.method == "GET" and "/generations/" in r.path]
    assert len(polls) == 4 and all(r.query == urlsplit(poll_url).query for r in polls)
    assert len(nonces(gateway)) == 1  # every poll replayed the submit's authorization
    assert len(proxy.app[CORE_KEY].jobs) == 1


async def test_a_poll_the_proxy_holds_no_payment_for_signs_nothing(start_proxy, gateway) -> None:
    first = await start_proxy()
    submit = await post(first, VIDEO, path="/v1/videos/generations")
    other = await start_proxy()  # another process: it never saw the submit
    polled = await get(other, submit.json["poll_url"])
    assert polled.status == 402 and polled.code == "job_payment_unknown"
    assert len(gateway.payments) == 1  # the submit's; the poll went unpaid and was refused
    assert gateway.settled == []


async def test_an_absolute_poll_url_on_the_gateway_is_rewritten_to_the_proxy(
    proxy, gateway
) -> None:
    """The one change the proxy makes to an answer's body: a poll_url naming the gateway's
    origin would send the client to the gateway, without the payment it cannot make."""
    assert gateway.base_url is not None
    origin = gateway.base_url.removesuffix("/api")
    gateway.jobs._prefix = origin + "/api"  # this gateway mints absolute poll URLs
    submit = await post(proxy, VIDEO, path="/v1/videos/generations")
    assert submit.status == 202
    sent = orjson.loads(gateway.sent_bodies[-1])
    assert sent["poll_url"].startswith(origin + "/api/v1/videos/generations/")
    assert submit.json["poll_url"] == sent["poll_url"].removeprefix(origin)
    assert {k: v for k, v in submit.json.items() if k != "poll_url"} == {
        k: v for k, v in sent.items() if k != "poll_url"
    }
    for _ in range(3):
        polled = await get(proxy, submit.json["poll_url"])
    assert polled.status == 200 and len(gateway.settled) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", ANTHROPIC_BODY),
        ("/v1beta/models/gemini-2.5-flash:generateContent", GEMINI_BODY),
        ("/v1/images/generations", {"prompt": "a cat"}),
        ("/v1/search", {"query": "x402"}),
    ],
    ids=["anthropic", "google", "media", "search"],
)
async def test_a_refusal_in_any_envelope_is_read_as_not_used(proxy, gateway, path, body) -> None:
    """The gateway refuses a good payment as not used (PAYMENT_INVALID) in its route's own
    envelope: error.code, error.reason, a top-level code. Nothing was charged, so it is a
    402 free to retry, never a 424 'may have been charged'."""
    gateway.misbehave.refuse_paid = 1
    reply = await post(proxy, body, path=path)
    assert reply.status == 402 and reply.code == "payment_not_accepted", reply.body
    assert gateway.settled == []


async def test_an_unknown_route_is_relayed_and_paid_the_same_way(proxy, gateway) -> None:
    """--routes all: a path outside the table goes through the same pipe (here one the fake
    serves, under a spelling the table does not list)."""
    reply = await post(proxy, ANTHROPIC_BODY, path="/api/v1/messages")
    assert_paid_once(reply, gateway)
    reply = await request(proxy, "GET", "/v1/audio/voices")
    assert reply.status == 404  # the gateway decides what it serves


async def test_prices_are_learned_per_route(start_proxy, gateway) -> None:
    """A quote learned on one route never signs another route's call up front: the price
    key is (route, model)."""
    proxy = await start_proxy()
    book = proxy.app[CORE_KEY].quotes
    body = {**ANTHROPIC_BODY, "model": "openai/gpt-5.5"}
    await post(proxy, body, path="/v1/messages")
    assert book.knows("openai/gpt-5.5", "/v1/messages")
    assert not book.knows("openai/gpt-5.5", "/v1/chat/completions")
