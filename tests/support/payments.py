"""What was signed and sent, per client call; warming the quote model up."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.testing import FakeGateway
from support.calls import PRICED_MODEL, chat, post

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge".split()  # noqa: SIM905
MAX_TOKENS = (16, 32, 50, 64, 100, 128, 256, 300, 512, 1000, 1024, 2048, 4000)
CHAT_PATH = "/api/v1/chat/completions"


def varied(rng: random.Random, model: str = PRICED_MODEL, **extra: Any) -> dict[str, Any]:
    """A request with a random prompt and max_tokens, from one fixed distribution."""
    content = " ".join(rng.choices(WORDS, k=rng.randint(1, 120)))
    return chat(model, content, max_tokens=rng.choice(MAX_TOKENS), **extra)


WARM_UP_CALLS = 40


def warm_bodies(model: str = PRICED_MODEL, *, seed: int = 0) -> list[dict[str, Any]]:
    """The requests ``warm_up`` sends: varied, streamed and plain, as clients mix them."""
    rng = random.Random(seed)
    return [varied(rng, model, stream=i % 2 == 1) for i in range(WARM_UP_CALLS)]


async def warm_up(proxy: Any, model: str = PRICED_MODEL, *, seed: int = 0) -> None:
    """Paid calls until the quote model has seen the range of traffic a test then sends
    (amounts outside it are extrapolations it rightly will not pin) and trusts it."""
    for body in warm_bodies(model, seed=seed):
        reply = await post(proxy, body)
        assert reply.status == 200, reply.body
    assert proxy.app[CORE_KEY].quotes.trusted(model)


def warm_body(model: str = PRICED_MODEL, **extra: Any) -> dict[str, Any]:
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


def payment_nonce(payment: dict[str, Any] | None) -> str | None:
    """The nonce a payment spends on chain, named by its kind: ``eip3009:<hex>`` for an
    exact authorization, ``permit2:<uint256>`` for an upto one (two different nonces: a
    call that sent one of each could have both settle), ``solana:<hash>`` for a Solana
    transaction (each distinct one could land)."""
    payload = (payment or {}).get("payload", {})
    if not isinstance(payload, dict):
        return None
    for kind, key in (("eip3009", "authorization"), ("permit2", "permit2Authorization")):
        authorization = payload.get(key)
        if isinstance(authorization, dict) and "nonce" in authorization:
            return f"{kind}:{authorization['nonce']}"
    if isinstance(payload.get("transaction"), str):  # Solana: the transaction is what lands
        return "solana:" + hashlib.sha256(payload["transaction"].encode()).hexdigest()[:16]
    return None


def nonces_by_call(gateway: FakeGateway, since: int = 0) -> dict[str, set[str]]:
    """What could settle of each client call, as the gateway received it, on every route:
    the distinct nonces (EIP-3009 and Permit2) and the distinct signed transactions (Solana:
    each one could land on its own). Requests are grouped by the ``x-request-id`` the proxy
    forwards (one per client call)."""
    calls: dict[str, set[str]] = {}
    for request in gateway.requests[since:]:  # every route: the rule is per call
        call = request.headers.get("x-request-id")
        if call is None:
            continue  # not sent by the proxy
        nonces = calls.setdefault(call, set())
        nonce = payment_nonce(request.payment)
        if nonce is not None:
            nonces.add(nonce)
    return calls


def assert_one_nonce_per_call(gateway: FakeGateway, since: int = 0) -> None:
    """ "One nonce per call": every authorization signed for one client call carries the
    same nonce (EIP-3009 for exact, Permit2 for upto, never one of each), and on Solana a
    call sends one signed transaction at most (every replay the same bytes), so at most one
    payment per call can ever settle."""
    several = {call: n for call, n in nonces_by_call(gateway, since).items() if len(n) > 1}
    assert not several, f"client calls with several payments: {several}"


def amounts_by_nonce(gateway: FakeGateway, since: int = 0) -> dict[str, int]:
    return {record.nonce: record.amount for record in gateway.payments[since:]}


def priced(gateway: FakeGateway, body: dict[str, Any], default_max_tokens: int = 1024) -> int:
    """What the gateway charges for ``body`` as the proxy forwards it."""
    sent = dict(body)
    if "max_tokens" not in sent and "max_completion_tokens" not in sent:
        sent["max_tokens"] = default_max_tokens
    return gateway.price_for(sent)
