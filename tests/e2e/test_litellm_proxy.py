"""The LiteLLM Proxy Server, started from the README's config.yaml, in front of blockrun-proxy.

The LiteLLM Proxy runs as a subprocess (once for this module; it takes seconds to
start), with no database and no internet: LiteLLM reads its bundled price map
(LITELLM_LOCAL_MODEL_COST_MAP) and sends no telemetry. The blockrun-proxy and the
fake gateway run in a background thread so they outlive each test's event loop.
The wallet key stays in this process: the LiteLLM Proxy's environment has none.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
from support.calls import PRICED_MODEL
from support.clients import PAID_FAILURES, README_ROOT, BackgroundStack, snippet, usd

pytestmark = pytest.mark.e2e

START_TIMEOUT = 120.0  # seconds; about 15 on a 2-core machine, mostly imports
MODEL_NAME = "gpt-5.5"  # the model_name in the README's config
MESSAGES = [{"role": "user", "content": "Say something nice"}]
# Variables the LiteLLM Proxy must not see: our wallets and API key, and anything that
# would make it look for a database.
WITHHELD_ENV = (
    "BLOCKRUN_WALLET_KEY",
    "BASE_CHAIN_WALLET_KEY",
    "BLOCKRUN_SOLANA_KEY",
    "SOLANA_WALLET_KEY",
    "BLOCKRUN_API_KEY",
    "DATABASE_URL",
    "DIRECT_URL",
)


@dataclass
class LiteLLMProxy:
    url: str
    master_key: str
    stack: BackgroundStack

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.master_key, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM Proxy exited with {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(url + "/health/liveliness", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"LiteLLM Proxy not up after {START_TIMEOUT:.0f}s:\n{tail(log)}")


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def litellm_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    stack = BackgroundStack("0x" + secrets.token_hex(32)).start()
    workdir = tmp_path_factory.mktemp("litellm-proxy")  # also keeps it from reading a .env
    config = workdir / "config.yaml"
    config.write_text(snippet("litellm-proxy-config").replace(README_ROOT, stack.url))
    master_key = "sk-" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD_ENV}
    env.update(
        LITELLM_MASTER_KEY=master_key,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="WARNING",
    )
    port = free_port()
    log = workdir / "litellm.log"
    # The same entry point as the `litellm` command, without relying on PATH.
    command = [sys.executable, "-c", "import litellm; litellm.run_server()"]
    args = ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, *args],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(proc, url, log)
        yield LiteLLMProxy(url, master_key, stack)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stack.stop()


@pytest.fixture
def proxy(litellm_proxy: LiteLLMProxy) -> LiteLLMProxy:
    litellm_proxy.stack.reset()
    return litellm_proxy


def test_plain_call_reports_the_settled_cost(proxy):
    gateway = proxy.stack.gateway
    with proxy.client() as c:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=16
        )
    assert raw.parse().choices[0].message.content == "echo: Say something nice"
    (settled,) = gateway.settled
    assert float(raw.headers["x-litellm-response-cost"]) == usd(settled.amount)
    sent = gateway.chat_requests[-1].body
    assert f'"model":"{PRICED_MODEL}"'.encode() in sent  # the BlockRun id, after LiteLLM's prefix


def test_streamed_call(proxy):
    gateway = proxy.stack.gateway
    with proxy.client() as c:
        stream = c.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=16, stream=True
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text.strip() == "echo: Say something nice"
    assert len(gateway.settled) == 1
    # PROTOCOL.md section 6: the LiteLLM Proxy asks for usage on streams.
    assert b'"stream_options":{"include_usage":true}' in gateway.chat_requests[-1].body


def test_the_readme_config_has_no_retry_settings():
    # The point of the tests below: LiteLLM's defaults are safe. A retry setting added to
    # the README's config would make them test something else.
    assert "retries" not in snippet("litellm-proxy-config")


# The LiteLLM Proxy's module-wide blockrun-proxy replays paid 5xx (the default, 2).
DEFAULT_REPLAY_FAILURES = [f for f in PAID_FAILURES if f.paid_replays == 2]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("failure", DEFAULT_REPLAY_FAILURES, ids=str)
def test_default_retries_pay_once_for_a_failure_after_payment(proxy, failure, stream):
    # Every layer at its default: the LiteLLM Proxy's Router retries twice by status, and
    # the openai SDK in front of it twice more (the LiteLLM Proxy renames x-should-retry to
    # llm_provider-x-should-retry, so the SDK never sees it). Only the 424 stops them both.
    gateway = proxy.stack.gateway
    failure.arm(gateway)
    with proxy.client(max_retries=2) as c, pytest.raises(openai.APIStatusError) as info:
        response = c.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=16, stream=stream
        )
        for _ in response:
            pass
    assert info.value.status_code == 424
    headers = info.value.response.headers
    assert headers["llm_provider-x-blockrun-upstream-status"] == failure.upstream_status
    failure.assert_paid_once(gateway)


def test_a_429_that_cost_nothing_is_retried_by_the_router(proxy):
    # The default retries stay useful for what was not paid: the client never sees it.
    gateway = proxy.stack.gateway
    gateway.misbehave.rate_limit = 1
    gateway.misbehave.retry_after = "0"
    with proxy.client(max_retries=0) as c:
        reply = c.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=16)
    assert reply.choices[0].message.content
    assert [r.payment is None for r in gateway.chat_requests] == [True, True, False]
    assert len(gateway.settled) == 1


# --- an anthropic/ model: LiteLLM's Anthropic provider, through the proxy's /v1/messages ----

CLAUDE_NAME = "claude-sonnet"  # the README config's model_name for anthropic/claude-sonnet-4-6
MESSAGES_PATH = "/api/v1/messages"


def messages_requests(gateway) -> list:
    return [r for r in gateway.requests if r.path == MESSAGES_PATH]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_anthropic_model_goes_through_the_proxys_messages_route(proxy, stream):
    gateway = proxy.stack.gateway
    with proxy.client() as c:
        if stream:
            chunks = c.chat.completions.create(
                model=CLAUDE_NAME, messages=MESSAGES, max_tokens=16, stream=True
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        else:
            raw = c.chat.completions.with_raw_response.create(
                model=CLAUDE_NAME, messages=MESSAGES, max_tokens=16
            )
            text = raw.parse().choices[0].message.content or ""
            # LiteLLM's Anthropic provider reads the proxy's cost header too.
            assert float(raw.headers["x-litellm-response-cost"]) == usd(gateway.settled[0].amount)
    assert text.strip() == "echo: Say something nice"
    probe, paid = messages_requests(gateway)  # Anthropic's API, not chat completions
    assert probe.payment is None and paid.payment is not None
    sent = orjson.loads(paid.body)
    assert sent["model"] == "claude-sonnet-4-6" and sent["max_tokens"] == 16
    assert sent.get("stream", False) is stream
    assert "x-api-key" not in {h.lower() for h in paid.headers}  # LiteLLM's key stays home
    assert len(gateway.settled) == 1
    if stream:
        assert gateway.sent_bodies[-1].startswith(b"event: message_start\n")


def test_the_anthropic_sdk_through_the_litellm_proxy_messages_endpoint(proxy):
    # LiteLLM Proxy's own /v1/messages, routed to the same anthropic/ deployment.
    gateway = proxy.stack.gateway
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key=proxy.master_key, max_retries=0) as client,
        client.messages.stream(model=CLAUDE_NAME, max_tokens=16, messages=MESSAGES) as stream,
    ):
        text = "".join(stream.text_stream)
    assert text.strip() == "echo: Say something nice"
    assert len(messages_requests(gateway)) == 2 and len(gateway.settled) == 1
