"""The API-key rail's pieces: where calls go, how refusals read, what cost is reported,
and the key kept out of everything the proxy says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from blockrun_proxy.apikey import COST_SOURCE_HEADER, ApiKeyRail
from blockrun_proxy.config import DEFAULT_API_KEY_URL, Settings
from blockrun_proxy.costs import COST_HEADER, LITELLM_COST_HEADER
from blockrun_proxy.errors import ApiKeyNoCredit, ApiKeyRejected
from blockrun_proxy.testing import ApiKeyFakeGateway

KEY = "brk_live_" + "k" * 32
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def body(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "x", "code": "y"}})


def test_the_rail_comes_from_settings_and_hides_its_key() -> None:
    assert ApiKeyRail.from_settings(Settings()) is None
    rail = ApiKeyRail.from_settings(Settings(api_key=KEY))
    assert rail is not None
    assert rail.base_url == DEFAULT_API_KEY_URL == "https://api.blockrun.ai"
    assert rail.url("/v1/chat/completions") == "https://api.blockrun.ai/v1/chat/completions"
    assert rail.auth_headers() == {"Authorization": f"Bearer {KEY}"}
    assert KEY not in repr(rail) and KEY not in str(rail)
    assert rail.paid_replays == 0  # every send is billed: nothing may be resent


def test_a_402_is_no_credit_never_a_challenge() -> None:
    rail = ApiKeyRail(DEFAULT_API_KEY_URL, KEY)
    with pytest.raises(ApiKeyNoCredit) as exc:
        rail.check_answer(402, body("Insufficient credit"))
    error = exc.value
    assert (error.status, error.type, error.code) == (402, "payment_error", "api_key_no_credit")
    assert "no credit" in error.message and "Nothing was charged" in error.message
    assert "Insufficient credit" in error.message


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_the_operators_problem(status: int) -> None:
    rail = ApiKeyRail(DEFAULT_API_KEY_URL, KEY)
    with pytest.raises(ApiKeyRejected) as exc:
        rail.check_answer(status, b"not json")
    error = exc.value
    assert (error.status, error.code) == (502, "api_key_rejected")
    assert error.headers == {"x-should-retry": "false"}
    assert "BLOCKRUN_API_KEY" in error.message and str(status) in error.message


@pytest.mark.parametrize("status", [200, 400, 404, 429, 500, 503])
def test_other_answers_pass(status: int) -> None:
    ApiKeyRail(DEFAULT_API_KEY_URL, KEY).check_answer(status, body("whatever"))


def test_a_host_that_echoes_the_key_does_not_hand_it_to_the_client() -> None:
    rail = ApiKeyRail(DEFAULT_API_KEY_URL, KEY)
    for status, error_type in ((402, ApiKeyNoCredit), (401, ApiKeyRejected)):
        with pytest.raises(error_type) as exc:
            rail.check_answer(status, body(f"bad Authorization: Bearer {KEY}"))
        assert KEY not in exc.value.message and KEY.encode() not in exc.value.to_json()
        assert "brk_[redacted]" in exc.value.message
    assert rail.redact(f'{{"x": "{KEY}"}}'.encode()) == b'{"x": "brk_[redacted]"}'


def test_long_refusals_are_clipped() -> None:
    with pytest.raises(ApiKeyNoCredit) as exc:
        ApiKeyRail(DEFAULT_API_KEY_URL, KEY).check_answer(402, body("x" * 5000))
    assert len(exc.value.message) < 700


def test_cost_says_there_is_none_to_report() -> None:
    headers = ApiKeyRail(DEFAULT_API_KEY_URL, KEY).cost_headers({"content-type": "x"})
    assert headers == {COST_SOURCE_HEADER: "none"}
    assert LITELLM_COST_HEADER not in headers and COST_HEADER not in headers


@pytest.fixture
async def host() -> AsyncIterator[ApiKeyFakeGateway]:
    gateway = ApiKeyFakeGateway()
    await gateway.start()
    yield gateway
    await gateway.close()


async def call(rail: ApiKeyRail) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            rail.url("/v1/chat/completions"), json=BODY, headers=rail.auth_headers()
        ) as resp,
    ):
        return resp.status, await resp.read()


async def test_against_the_fake_api_host(host: ApiKeyFakeGateway) -> None:
    assert host.base_url is not None
    key = host.new_key(credit=host.price_for(BODY))
    rail = ApiKeyRail(host.base_url, key)
    status, answer = await call(rail)
    rail.check_answer(status, answer)
    assert status == 200 and [c.amount for c in host.charges] == [host.price_for(BODY)]
    assert "PAYMENT-SIGNATURE" not in host.requests[-1].headers  # nothing is signed here
    status, answer = await call(rail)  # the credit is spent
    with pytest.raises(ApiKeyNoCredit):
        rail.check_answer(status, answer)
    status, answer = await call(ApiKeyRail(host.base_url, "brk_nobody"))
    with pytest.raises(ApiKeyRejected):
        rail.check_answer(status, answer)
    assert len(host.charges) == 1


def test_the_streaming_redaction_catches_a_key_split_anywhere() -> None:
    rail = ApiKeyRail(DEFAULT_API_KEY_URL, KEY)
    text = f'data: {{"a": "{KEY}"}}\n\ndata: {KEY}{KEY}\n\n'.encode()
    for first in range(len(text) + 1):
        for second in (first, min(len(text), first + 7)):
            redactor = rail.redactor()
            parts = (text[:first], text[first:second], text[second:])
            out = b"".join(redactor.feed(p) for p in parts) + redactor.flush()
            assert out == rail.redact(text), (first, second)
    assert KEY not in repr(rail.redactor())


def test_the_streaming_redaction_holds_back_only_what_could_start_the_key() -> None:
    redactor = ApiKeyRail(DEFAULT_API_KEY_URL, KEY).redactor()
    assert redactor.feed(b'data: {"x": 1}\n\n') == b'data: {"x": 1}\n\n'  # an event: at once
    assert redactor.feed(b"token brk_li") == b"token "
    assert redactor.feed(b"ve") == b""  # still the key's start
    assert redactor.feed(b"!") == b"brk_live!"  # not the key after all
    assert redactor.flush() == b""
