"""Calls through the proxy: the test network and models, request bodies, one ``post()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

TEST_NETWORK = "eip155:84532"  # Base Sepolia: every fake gateway of the tests quotes on it
# Models of the fake gateway's catalogue, named for what a test needs of them.
PRICED_MODEL = "openai/gpt-5.5"  # whole micro-USDC per token: exact amounts, learnable
FRACTIONAL_MODEL = "openai/gpt-4o-mini"  # 0.15 / 0.6 micro-USDC per token
FREE_MODEL = "nvidia/deepseek-v4-flash"
# What every OpenAI client declares: the proxy refuses other POST bodies (415).
JSON = {"Content-Type": "application/json"}
CHAT = "/v1/chat/completions"


def chat(model: str = PRICED_MODEL, content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@dataclass
class Reply:
    """A whole answer: status, headers, body bytes, and the error if the body broke off."""

    status: int
    headers: Any
    body: bytes
    error: Exception | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str | None:
        """The OpenAI-shaped error's ``code``, if the body is one."""
        error = self.json.get("error")
        return error.get("code") if isinstance(error, dict) else None

    @property
    def error_body(self) -> dict[str, Any]:
        """The OpenAI-shaped error, checked to have its three fields."""
        error = self.json["error"]
        assert set(error) >= {"message", "type", "code"}, error
        return dict(error)


async def post(
    proxy: Any,
    body: dict[str, Any] | bytes,
    *,
    path: str = CHAT,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """POST ``body`` (JSON) to ``path`` on ``proxy`` (a ``Proxy`` or a base URL)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await request(proxy, "POST", path, data=data, headers={**JSON, **(headers or {})})


async def round_trips(gateway: Any, port: int, body: dict[str, Any]) -> int:
    """One chat call through the proxy on ``port``, which must answer 200: how many
    requests reached ``gateway`` for it (1 signed up front, 2 when it probed first)."""
    before = len(gateway.chat_requests)
    reply = await post(f"http://127.0.0.1:{port}", body)
    assert reply.status == 200 and reply.error is None, (reply.status, reply.body, reply.error)
    return len(gateway.chat_requests) - before


async def get(proxy: Any, path: str, *, headers: Mapping[str, str] | None = None) -> Reply:
    return await request(proxy, "GET", path, headers=headers)


async def request(
    proxy: Any,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    # Sent as written (yarl would otherwise normalise escapes such as a poll URL's %2F).
    url = URL((proxy if isinstance(proxy, str) else proxy.url) + path, encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, headers=dict(headers or {})) as resp,
    ):
        try:
            raw = await resp.read()
        except aiohttp.ClientPayloadError as exc:  # the proxy cut a broken stream
            return Reply(resp.status, resp.headers, b"", exc)
        return Reply(resp.status, resp.headers, raw)
