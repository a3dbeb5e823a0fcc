"""The guard for chat requests: parse once, validate, and keep the body as received.

The body is forwarded byte-for-byte, with one documented exception: a request
naming neither ``max_tokens`` nor ``max_completion_tokens`` gets
``"max_tokens": <default>`` spliced in after the opening brace, so the price of
a call never rests on a gateway default the user cannot see. Splicing (instead
of re-serialising) keeps every other byte, key order and number format intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from blockrun_proxy.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: bytes  # what goes upstream
    model: str
    stream: bool
    max_tokens: int | None  # max_tokens, else max_completion_tokens (as the gateway prices it)
    data: dict[str, Any]  # the parsed request, for pricing features; never re-serialised


def parse_chat_request(raw: bytes, *, default_max_tokens: int) -> ChatRequest:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc.msg}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest(
            "'model' is required and must be a non-empty string", code="missing_model"
        )
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' is required and must be a non-empty array", code="missing_messages"
        )
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", code="invalid_stream")
    max_tokens = _max_tokens(data)
    body = raw
    if "max_tokens" not in data and "max_completion_tokens" not in data:
        body = _splice_max_tokens(raw, default_max_tokens)
        max_tokens = default_max_tokens
    return ChatRequest(
        body=body, model=model, stream=bool(stream), max_tokens=max_tokens, data=data
    )


def _max_tokens(data: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{key}' must be a positive integer", code="invalid_max_tokens")
        return value
    return None


def _splice_max_tokens(raw: bytes, value: int) -> bytes:
    brace = raw.index(b"{")  # the body parsed as an object, so there is one
    # The object has at least "model" and "messages", so a comma is always right.
    return raw[: brace + 1] + b'"max_tokens":' + str(value).encode() + b"," + raw[brace + 1 :]
