"""The in-process payment core (what the LiteLLM provider drives), without litellm."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from support.calls import PRICED_MODEL, TEST_NETWORK
from support.payments import warm_bodies, warm_body

from blockrun_proxy import h1
from blockrun_proxy.config import Settings
from blockrun_proxy.inprocess import CallError, Core, Stream
from blockrun_proxy.limits import Limits

# What the provider relays through is the core's upstream client: each kind.
pytestmark = pytest.mark.both_clients

BODY = {"model": PRICED_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture
def core(gateway, wallet_key, upstream_client):
    settings = Settings(
        api_url=gateway.base_url,
        networks=(TEST_NETWORK,),
        wallet_key=wallet_key,
        state_dir=None,
        upstream_client=upstream_client,
    )
    core = Core(settings)
    yield core
    core.close()


async def test_complete_from_another_loop_and_from_a_thread(core, gateway):
    reply = await core.run_async(core.complete(BODY))
    assert reply.data["choices"][0]["message"]["content"] == "echo: hi"
    assert reply.cost_usd == gateway.settled[0].amount / 1e6
    assert reply.headers["x-litellm-response-cost"] == f"{reply.cost_usd:.6f}"
    reply = await asyncio.to_thread(core.run, core.complete(BODY))
    assert reply.headers["x-request-id"] == gateway.chat_requests[-1].headers["x-request-id"]
    assert len(gateway.settled) == 2


async def test_stream_events_then_end(core, gateway):
    stream = await core.run_async(core.open_stream({**BODY, "stream": True}))
    events = []
    while (event := await core.run_async(stream.next_event())) is not None:
        events.append(event)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text.strip() == "echo: hi"
    assert await core.run_async(stream.next_event()) is None


async def test_a_stream_that_breaks_after_payment_says_it_was_paid(core, gateway):
    gateway.misbehave.reset_after_events = 3
    stream = await core.run_async(core.open_stream({**BODY, "stream": True}))
    with pytest.raises(CallError) as info:
        while await core.run_async(stream.next_event()) is not None:
            pass
    assert info.value.paid and info.value.status == 424  # as the proxy: not retried
    assert "A payment was made" in str(info.value)


async def test_a_failure_after_payment_is_a_paid_424(core, gateway):
    gateway.misbehave.fail_after_settle = 1
    with pytest.raises(CallError) as info:
        await core.run_async(core.complete(BODY))
    assert info.value.paid and info.value.status == 424
    assert "A payment was made" in str(info.value)
    assert len(gateway.settled) == 1


async def test_gateway_errors_keep_their_status(core, gateway):
    with pytest.raises(CallError) as info:
        await core.run_async(core.complete({**BODY, "model": "no/such-model"}))
    assert info.value.status == 404 and not info.value.paid


async def test_close_then_use_again(core, gateway):
    await core.run_async(core.complete(BODY))
    core.close()
    await core.run_async(core.complete(BODY))
    assert len(gateway.settled) == 2


async def test_per_call_gateway_url_may_end_in_v1(core, gateway):
    reply = await core.run_async(core.complete(BODY, api_url=gateway.base_url + "/v1"))
    assert reply.cost_usd > 0


async def close(stream: Stream) -> None:
    stream.close()  # on the core's loop, where the stream lives


@pytest.mark.parametrize("claim", ["999999999", "0"], ids=["inflated", "zero"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_cost_is_what_was_signed_not_what_the_gateway_claims(
    core, gateway, claim, stream
):
    gateway.misbehave.settlement_claim = claim
    if stream:
        opened = await core.run_async(core.open_stream({**BODY, "stream": True}))
        headers, cost = opened.headers, opened.cost_usd
        await core.run_async(close(opened))
    else:
        reply = await core.run_async(core.complete(BODY))
        headers, cost = reply.headers, reply.cost_usd
    (settled,) = gateway.settled
    assert cost == settled.amount / 1e6
    assert headers["x-blockrun-cost-usd"] == headers["x-litellm-response-cost"] == f"{cost:.6f}"


def unstreamed(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "stream"}


async def test_the_provider_signs_up_front_like_the_proxy(core, gateway):
    """It runs the proxy's payment core, quote book included (it had none, and every paid
    call took two round trips): once the prices are learned, one request per call."""
    for body in warm_bodies(PRICED_MODEL):
        await core.run_async(core.complete(unstreamed(body)))
    payment = await core.run_async(core.payment_core())
    assert payment.quotes.trusted(PRICED_MODEL)
    before = len(gateway.chat_requests)
    reply = await core.run_async(core.complete(unstreamed(warm_body(PRICED_MODEL))))
    assert reply.cost_usd > 0
    assert len(gateway.chat_requests) - before == 1  # signed up front: no unpaid probe
    assert gateway.chat_requests[-1].payment is not None


async def test_the_provider_opens_the_same_session_as_the_proxy(core, upstream_client):
    payment = await core.run_async(core.payment_core())
    session = payment.session
    pool_size = Limits.from_settings(core.settings).pool_size
    if upstream_client == "h1":
        assert isinstance(session, h1.Client)  # keeps no cookies at all
        assert session.limits.max_connections == pool_size
    else:
        assert isinstance(session, aiohttp.ClientSession)
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)  # no jar shared by callers
        assert session.connector is not None
        assert session.connector.limit == pool_size
        assert session.auto_decompress is False and session.trust_env is False
    assert payment.recorder is None  # no spend ledger written from inside another program


async def test_a_clients_request_id_is_kept_only_if_it_is_sane(core, gateway):
    await core.run_async(core.complete(BODY, headers={"x-request-id": "ok-id.1"}))
    assert gateway.chat_requests[-1].headers["x-request-id"] == "ok-id.1"
    await core.run_async(core.complete(BODY, headers={"x-request-id": "bad id\r\nx: y"}))
    sent = gateway.chat_requests[-1].headers["x-request-id"]
    assert sent != "bad id\r\nx: y" and " " not in sent
