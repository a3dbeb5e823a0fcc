"""Signing up front against a gateway built from the official x402 SDK's resource server.

The official server prices each request itself, rebuilds its requirement for the request
that carries a payment and accepts it only if ``accepted`` matches (amounts equal), and
checks the echoed extensions (it declares a builder code of its own here). A payment
signed up front that is off by one micro-USDC, or drops its builder code, is refused.
"""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from blockrun_proxy.testing._models import PRICING_SHAPES
from blockrun_proxy.testing.workloads import WORKLOADS, bodies

pytest.importorskip("x402")

from blockrun_proxy.testing.official import OfficialGateway

# The proxy answers only JSON POSTs.
JSON = {"Content-Type": "application/json"}
WARM_UP = 10
SHAPES = {
    "max_tokens": "openai/gpt-5.5",
    "chars": "openai/gpt-4o-mini",
    "catalogue": "google/gemini-2.5-pro",
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_official_server_accepts_payments_signed_up_front(start_proxy, shape, workload):
    pricing = PRICING_SHAPES[shape]
    sent = bodies(workload, SHAPES[shape])
    round_trips = []
    async with OfficialGateway(pricing.models, pricing.price) as gateway:
        proxy = await start_proxy(api_url=gateway.base_url)
        async with aiohttp.ClientSession() as session:
            for body in sent:
                before = len(gateway.requests)
                async with session.post(
                    proxy.base_url + "/chat/completions",
                    data=orjson.dumps(body),
                    headers=JSON,
                ) as resp:
                    assert resp.status == 200, await resp.read()
                round_trips.append(len(gateway.requests) - before)
        settled, priced = (
            gateway.facilitator.settled,
            [gateway.price_for(b) for b in bodies(workload, SHAPES[shape])],
        )
    assert settled == priced  # exactly the server's own price, every call
    after = round_trips[WARM_UP:]
    share = sum(1 for n in after if n == 1) / len(after)
    assert share >= 0.9, "".join(map(str, round_trips))
