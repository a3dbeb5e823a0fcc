"""``python -m bench.upto``: what a call costs under ``exact`` and under ``upto``.

The same request (a prompt whose answer is ``--answer-tokens`` tokens long, no
``max_tokens``: the proxy adds its default 1,024) is paid through two proxies in front of
one fake gateway in upto mode: one with ``--scheme exact``, which pays the gateway's quote
(priced on the 1,024 tokens reserved), one with ``--scheme upto``, which signs that quote
as a ceiling and pays what the official x402 facilitator code settles (the tokens the
answer has). The fake prices like BlockRun: the model's input price times the estimated
prompt tokens, plus its output price times the output tokens, plus a flat fee. Each cost
is the answer's ``x-blockrun-cost-usd``. Seconds; a command, not a test.

The one-round-trip share under upto on the agent workloads is ``python -m bench.quotes
--scheme upto``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import aiohttp
import orjson

from blockrun_proxy.config import DEFAULT_MAX_TOKENS, Settings, usd_to_atomic
from blockrun_proxy.server import running
from blockrun_proxy.testing import FakeGateway, FakeRpc, UptoMode, UsdcLedger
from blockrun_proxy.testing._models import estimate_input_tokens
from blockrun_proxy.testing._replies import ECHO_PREFIX, count_tokens
from blockrun_proxy.x402 import PERMIT2_ADDRESS, Signer, usd

NETWORK = "eip155:84532"
MODELS = (
    "openai/gpt-5.5",
    "anthropic/claude-sonnet-4.6",
    "google/gemini-2.5-flash",
    "openai/gpt-4o-mini",
)
PROMPT_WORDS = ["please", "repeat", "this", "sentence", "back", "to", "me", "word", "for", "word"]
FUNDS = 1_000_000_000  # $1,000 on the fake chain, and as much Permit2 allowance


def prompt_for(answer_tokens: int) -> str:
    """A user message the fake echoes back as an answer of exactly ``answer_tokens``."""
    size = answer_tokens * 4 - len(ECHO_PREFIX)
    text = (" ".join(PROMPT_WORDS) * (size // 20 + 1))[:size]
    assert count_tokens(ECHO_PREFIX + text) == answer_tokens
    return text


@contextlib.asynccontextmanager
async def proxy(api_url: str, key: str, scheme: str, rpc_url: str) -> AsyncIterator[str]:
    settings = Settings(
        port=0,
        api_url=api_url,
        networks=(NETWORK,),
        wallet_key=key,
        scheme=scheme,
        rpc_url=rpc_url,
        presign=False,  # one call each: the probe's quote is what is signed
        state_dir=None,
    )
    async with running(settings) as (_, port):
        yield f"http://127.0.0.1:{port}/v1/chat/completions"


async def cost(session: aiohttp.ClientSession, url: str, model: str, text: str) -> tuple[int, str]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{model}: {resp.status}")
        return usd_to_atomic(Decimal(resp.headers["x-blockrun-cost-usd"])), resp.headers.get(
            "x-blockrun-cost-source", ""
        )


async def run(answer_tokens: int) -> str:
    ledger = UsdcLedger(NETWORK)
    key = "0x" + secrets.token_hex(32)
    address = Signer(key).address
    ledger.fund(address, usdc=FUNDS)
    ledger.approve(address, PERMIT2_ADDRESS, FUNDS)
    text = prompt_for(answer_tokens)
    gateway = FakeGateway(
        network=NETWORK, upto=UptoMode(ledger), verify="fast", echo_limit=len(text)
    )
    rows = [
        "| model | exact | upto | paid under upto |",
        "|---|---:|---:|---:|",
    ]
    async with contextlib.AsyncExitStack() as stack:
        api_url = await gateway.start("127.0.0.1", 0)
        stack.push_async_callback(gateway.close)
        node = await stack.enter_async_context(FakeRpc(ledger))
        rpc_url = node.url or ""
        exact_url = await stack.enter_async_context(proxy(api_url, key, "exact", rpc_url))
        upto_url = await stack.enter_async_context(proxy(api_url, key, "upto", rpc_url))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        for model in MODELS:
            exact, exact_source = await cost(session, exact_url, model, text)
            upto, upto_source = await cost(session, upto_url, model, text)
            assert (exact_source, upto_source) == ("signed", "settled")
            rows.append(
                f"| {model} | ${usd(exact)} | ${usd(upto)} | {upto / exact:.0%} "
                f"(saves ${usd(exact - upto)}) |"
            )
    prompt_tokens = estimate_input_tokens({"messages": [{"role": "user", "content": text}]})
    header = (
        f"a {answer_tokens}-token answer, no max_tokens in the request (the proxy adds "
        f"{DEFAULT_MAX_TOKENS}), a {prompt_tokens}-token prompt; cost = x-blockrun-cost-usd"
    )
    return header + "\n\n" + "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upto", description=__doc__)
    parser.add_argument("--answer-tokens", type=int, default=150)
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.answer_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
