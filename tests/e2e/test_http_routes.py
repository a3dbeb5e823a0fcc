"""The README's plain-HTTP snippet (httpx): a video job submitted and polled, and a search."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.clients import run_snippet
from support.payments import nonces

pytestmark = pytest.mark.e2e


async def test_readme_example(proxy, gateway):
    gateway.job_polls = 0  # done at the first poll: the snippet's wait loop would sleep 5 s
    printed = await asyncio.to_thread(run_snippet, "http", proxy.url)
    submitted, completed, searched = (json.loads(b) for b in gateway.sent_bodies)
    assert submitted["status"] == "queued"
    assert printed == [completed["data"][0]["url"], searched["summary"]]
    # Two paid calls (the submit, the search); the poll carried the submit's payment.
    assert len(gateway.settled) == 2 and len(nonces(gateway)) == 2
    (poll,) = [r for r in gateway.requests if r.method == "GET"]
    assert poll.payment is not None and poll.payment["payload"]["authorization"]["nonce"] in {
        s.nonce for s in gateway.settled
    }
