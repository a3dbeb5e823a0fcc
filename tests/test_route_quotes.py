"""Signing up front on every priced route: after a few calls, one round trip per call.

Each route family is warmed with the traffic a client of it sends (prompts that vary, the
same settings), then N more calls must make exactly N gateway requests, each carrying its
payment, each paying exactly the gateway's price (the book's exact mode: 0 over-payment).
The ``gateway`` fixture also checks one nonce per call for every request id.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from support.calls import post

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.testing import FakeGateway

WARM_CALLS = 6  # the calls counted once the route is warm
MAX_WARM_UP = 20  # "a few calls": the slowest family (speech, learned) takes 16
PROMPTS = [
    "a red fox running through the snow at dawn",
    "lighthouse on a cliff",
    "a bowl of ramen, steam rising, studio light, overhead shot, photorealistic",
    "two cats playing chess in a library",
    "neon city street in the rain, reflections on wet asphalt",
]
SPEECH = [p + " " + p for p in PROMPTS]  # over 58 characters: above speech's minimum price


def varied(make, n: int = len(PROMPTS)) -> list[dict[str, Any]]:
    return [make(PROMPTS[i % len(PROMPTS)], i) for i in range(n)]


FAMILIES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "chat": (
        "/v1/chat/completions",
        varied(lambda p, i: {"model": "openai/gpt-5.5", "max_tokens": 64 * (1 + i % 3),
                             "messages": [{"role": "user", "content": p}]}),
    ),
    "messages": (
        "/v1/messages",
        varied(lambda p, i: {"model": "claude-sonnet-4-6", "max_tokens": 128 * (1 + i % 2),
                             "system": "Answer in one line.",
                             "messages": [{"role": "user", "content": p}]}),
    ),
    "gemini": (
        "/v1beta/models/gemini-2.5-flash:generateContent",
        varied(lambda p, i: {"contents": [{"role": "user", "parts": [{"text": p}]}],
                             "systemInstruction": {"parts": [{"text": "Be brief."}]},
                             "generationConfig": {"maxOutputTokens": 100 + 50 * (i % 2)}}),
    ),
    "gemini_stream": (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        varied(lambda p, i: {"contents": [{"role": "user", "parts": [{"text": p}]}],
                             "generationConfig": {"maxOutputTokens": 256}}),
    ),
    "gemini_default_reservation": (
        "/v1beta/models/gemini-2.5-flash:generateContent",
        varied(lambda p, i: {"contents": [{"role": "user", "parts": [{"text": p}]}]}),
    ),
    "images": (
        "/v1/images/generations",
        varied(lambda p, i: {"model": "google/nano-banana", "prompt": p, "n": 2,
                             "size": "1024x1024"}),
    ),
    "image_count": (
        "/v1/images/generations",
        varied(lambda p, i: {"model": "openai/gpt-image-1", "prompt": "a fox", "n": 1 + i % 3}),
    ),
    "speech": (
        "/v1/audio/speech",
        [{"model": "elevenlabs/flash-v2.5", "voice": "sarah", "input": s} for s in SPEECH],
    ),
    "sound_effects": ("/v1/audio/sound-effects", varied(lambda p, i: {"text": p})),
    "music": ("/v1/audio/generations", varied(lambda p, i: {"prompt": p})),
    "videos": (
        "/v1/videos/generations",
        varied(lambda p, i: {"model": "xai/grok-imagine-video", "prompt": p,
                             "duration_seconds": 5}),
    ),
    "search": ("/v1/search", varied(lambda p, i: {"query": p, "max_results": 5})),
    "exa_search": ("/v1/exa/search", varied(lambda p, i: {"query": p})),
    "exa_contents": (
        "/v1/exa/contents",
        varied(lambda p, i: {"urls": [f"https://example.com/{j}" for j in range(1 + i % 3)]}),
    ),
}  # fmt: skip


def requests_on(gateway: FakeGateway, path: str, since: int) -> list[Any]:
    wanted = "/api" + urlsplit(path).path
    return [r for r in gateway.requests[since:] if r.path == wanted]


async def call(proxy: Any, path: str, body: dict[str, Any]) -> None:
    reply = await post(proxy, body, path=path)
    assert reply.status in (200, 202), reply.body


@pytest.mark.parametrize("family", FAMILIES)
async def test_warm_calls_take_one_round_trip_and_pay_the_exact_price(
    start_proxy, gateway, family
) -> None:
    path, bodies = FAMILIES[family]
    proxy = await start_proxy()
    stats = proxy.app[CORE_KEY].quotes.stats
    warm_up = 0
    one_trip_streak = 0
    while one_trip_streak < len(bodies):  # every body of the traffic went in one trip
        assert warm_up < MAX_WARM_UP, f"{family}: still probing after {warm_up} calls"
        since = len(gateway.requests)
        await call(proxy, path, bodies[warm_up % len(bodies)])
        warm_up += 1
        trips = len(requests_on(gateway, path, since))
        one_trip_streak = one_trip_streak + 1 if trips == 1 else 0
    since, paid_since, hits = len(gateway.requests), len(gateway.payments), stats.hits
    sent_bodies = [bodies[(warm_up + i) % len(bodies)] for i in range(WARM_CALLS)]
    for body in sent_bodies:
        await call(proxy, path, body)
    sent = requests_on(gateway, path, since)
    assert len(sent) == WARM_CALLS, f"{family}: {len(sent)} requests for {WARM_CALLS} calls"
    assert all(r.payment is not None for r in sent)  # signed up front, every one
    assert stats.hits - hits == WARM_CALLS
    amounts = [p.amount for p in gateway.payments[paid_since:]]
    assert amounts == [gateway.price_for(b, path) for b in sent_bodies]  # never over-paid
    assert stats.overpaid_atomic == 0
    print(f"{family}: one round trip from call {warm_up - len(bodies) + 1}")


async def test_a_size_has_a_price_of_its_own(start_proxy, gateway) -> None:
    """What the route's price depends on is part of the key: a size never seen is probed,
    whatever was learned for another."""
    proxy = await start_proxy()
    path = "/v1/images/generations"
    for prompt in PROMPTS * 2:
        await call(proxy, path, {"model": "google/nano-banana", "prompt": prompt})
    since = len(gateway.requests)
    await call(proxy, path, {"model": "google/nano-banana", "prompt": "x", "size": "1792x1024"})
    probe, paid = requests_on(gateway, path, since)
    assert probe.payment is None and paid.payment is not None
