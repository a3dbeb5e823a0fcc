"""Helpers for the payment tests: requests, warm-up of the quote model, what was signed."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from ops_support import JSON

from blockrun_proxy.app import QUOTES_KEY
from blockrun_proxy.testing import FakeGateway

PAID = "openai/gpt-5.5"  # whole micro-USDC per token
FRACTIONAL = "openai/gpt-4o-mini"  # 0.15 / 0.6 micro-USDC per token
FREE = "nvidia/deepseek-v4-flash"
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge".split()  # noqa: SIM905
MAX_TOKENS = (16, 32, 50, 64, 100, 128, 256, 300, 512, 1000, 1024, 2048, 4000)
CHAT_PATH = "/api/v1/chat/completions"


def chat(model: str = PAID, content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def varied(rng: random.Random, model: str = PAID, **extra: Any) -> dict[str, Any]:
    """A request with a random prompt and max_tokens, from one fixed distribution."""
    content = " ".join(rng.choices(WORDS, k=rng.randint(1, 120)))
    return chat(model, content, max_tokens=rng.choice(MAX_TOKENS), **extra)


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes
    error: Exception | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str | None:
        error = self.json.get("error")
        return error.get("code") if isinstance(error, dict) else None


async def post(proxy: Any, body: dict[str, Any] | bytes) -> Reply:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.base_url + "/chat/completions", data=data, headers=JSON) as resp,
    ):
        try:
            raw = await resp.read()
        except aiohttp.ClientPayloadError as exc:  # the proxy cut a broken stream
            return Reply(resp.status, resp.headers, b"", exc)
        return Reply(resp.status, resp.headers, raw)


WARM_UP_CALLS = 40


def warm_bodies(model: str = PAID, *, seed: int = 0) -> list[dict[str, Any]]:
    """The requests ``warm_up`` sends: varied, streamed and plain, as clients mix them."""
    rng = random.Random(seed)
    return [varied(rng, model, stream=i % 2 == 1) for i in range(WARM_UP_CALLS)]


async def warm_up(proxy: Any, model: str = PAID, *, seed: int = 0) -> None:
    """Paid calls until the quote model has seen the range of traffic a test then sends
    (amounts outside it are extrapolations it rightly will not pin) and trusts it."""
    for body in warm_bodies(model, seed=seed):
        reply = await post(proxy, body)
        assert reply.status == 200, reply.body
    assert proxy.app[QUOTES_KEY].trusted(model)


def warm_body(model: str = PAID, **extra: Any) -> dict[str, Any]:
    """A request the warm model surely pins: the same features as one it has seen."""
    return {**warm_bodies(model)[-1], **extra}


def chat_requests(gateway: FakeGateway, since: int = 0) -> list[Any]:
    return [r for r in gateway.requests[since:] if r.path == CHAT_PATH]


def nonces(gateway: FakeGateway, since: int = 0) -> list[str]:
    """The distinct authorizations sent (in order), from payment records."""
    seen: list[str] = []
    for record in gateway.payments[since:]:
        if record.nonce not in seen:
            seen.append(record.nonce)
    return seen


def nonces_by_call(gateway: FakeGateway, since: int = 0) -> dict[str, set[str]]:
    """The distinct authorization nonces the gateway received, per client call: requests
    are grouped by the ``x-request-id`` the proxy forwards (one per client call)."""
    calls: dict[str, set[str]] = {}
    for request in chat_requests(gateway, since):
        call = request.headers.get("x-request-id")
        if call is None:
            continue  # not sent by the proxy
        nonces = calls.setdefault(call, set())
        payment = request.payment
        authorization = (payment or {}).get("payload", {}).get("authorization", {})
        if isinstance(authorization, dict) and "nonce" in authorization:
            nonces.add(str(authorization["nonce"]))
    return calls


def assert_one_nonce_per_call(gateway: FakeGateway, since: int = 0) -> None:
    """ "One nonce per call": every authorization signed for one client call carries the
    same EIP-3009 nonce, so at most one of them can ever settle."""
    several = {call: n for call, n in nonces_by_call(gateway, since).items() if len(n) > 1}
    assert not several, f"client calls with several nonces: {several}"


def amounts_by_nonce(gateway: FakeGateway, since: int = 0) -> dict[str, int]:
    return {record.nonce: record.amount for record in gateway.payments[since:]}


def priced(gateway: FakeGateway, body: dict[str, Any], default_max_tokens: int = 1024) -> int:
    """What the gateway charges for ``body`` as the proxy forwards it."""
    sent = dict(body)
    if "max_tokens" not in sent and "max_completion_tokens" not in sent:
        sent["max_tokens"] = default_max_tokens
    return gateway.price_for(sent)
