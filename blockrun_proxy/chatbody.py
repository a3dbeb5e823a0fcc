"""The guard for chat requests: parse once, validate, and keep the body as received.

The body is forwarded byte-for-byte, with one documented exception: a request
naming neither ``max_tokens`` nor ``max_completion_tokens`` gets
``"max_tokens": <default>`` spliced in after the opening brace, so the price of
a call never rests on a gateway default the user cannot see. Splicing (instead
of re-serialising) keeps every other byte, key order and number format intact.

A ``null`` limit is no limit: ``"max_tokens": null`` (or ``max_completion_tokens``)
counts as absent, and its ``null`` is replaced in place by the default. Splicing a
second ``max_tokens`` in front would forward duplicate keys, and the gateway's parser
would keep the last one, the ``null``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from blockrun_proxy.errors import InvalidRequest

# Model names are short (``openai/gpt-5.5``); a longer one is a mistake or an attack on
# the logs, and is refused before anything is sent or paid.
MAX_MODEL_CHARS = 256
# The output reservation, as the gateway reads it: max_tokens, else max_completion_tokens.
LIMIT_KEYS = ("max_tokens", "max_completion_tokens")
# A top-level ``"key": null`` member; a match inside a string is ruled out by re-parsing.
_NULL_LIMIT = {key: re.compile(rb'"%s"\s*:\s*null' % key.encode()) for key in LIMIT_KEYS}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: bytes  # what goes upstream
    model: str
    stream: bool
    max_tokens: int | None  # max_tokens, else max_completion_tokens (as the gateway prices it)
    data: dict[str, Any]  # the parsed request, for pricing features; never re-serialised


def parse_chat_request(raw: bytes, *, default_max_tokens: int) -> ChatRequest:
    data = request_object(raw)
    model = checked_model(data.get("model"))
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' is required and must be a non-empty array", code="missing_messages"
        )
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", code="invalid_stream")
    max_tokens = _max_tokens(data)
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                "each of 'messages' must be an object with a string 'role'",
                code="invalid_messages",
            )
    body = raw
    if max_tokens is None:
        if any(key in data for key in LIMIT_KEYS):  # present, and every one is null
            body, data = _fill_null_limits(raw, data, default_max_tokens)
        else:
            body = _splice_max_tokens(raw, default_max_tokens)
        max_tokens = default_max_tokens
    return ChatRequest(
        body=body, model=model, stream=bool(stream), max_tokens=max_tokens, data=data
    )


# The two checks below are every route's (bodies.py uses them for the other JSON bodies):
# one wording of "not JSON" and of a bad model, whichever API the client speaks.


def request_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; InvalidRequest (``invalid_json``) otherwise."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc.msg}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return data


def checked_model(model: object) -> str:
    """A request's model name; InvalidRequest when it is missing, blank or too long."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest(
            "'model' is required and must be a non-empty string", code="missing_model"
        )
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(
            f"'model' must be at most {MAX_MODEL_CHARS} characters (got {len(model)})",
            code="invalid_model",
        )
    return model


def _max_tokens(data: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{key}' must be a positive integer", code="invalid_max_tokens")
        return value
    return None


def _fill_null_limits(raw: bytes, data: dict[str, Any], value: int) -> tuple[bytes, dict[str, Any]]:
    """Replace each top-level ``null`` limit by ``value`` in place; the new body and data.

    A regex finds ``"max_tokens": null``; re-parsing the edited body proves the edit hit
    the top-level member and nothing inside a string. A body where no candidate proves
    right (a key spelled with escapes, ``"max\\u005ftokens"``) is re-serialised instead:
    numbers and escapes may then be spelled differently, their values stay the same.
    """
    body = raw
    filled = dict(data)
    for key in LIMIT_KEYS:
        if key not in data:
            continue
        filled[key] = value  # same position in the dict, so the same key order
        for match in _NULL_LIMIT[key].finditer(body):
            edited = b'%s"%s":%d%s' % (
                body[: match.start()],
                key.encode(),
                value,
                body[match.end() :],
            )
            if _parses_to(edited, filled):
                body = edited
                break
        else:
            filled = {k: value if k in LIMIT_KEYS else v for k, v in data.items()}
            return orjson.dumps(filled), filled
    return body, filled


def _parses_to(raw: bytes, expected: dict[str, Any]) -> bool:
    try:
        return bool(orjson.loads(raw) == expected)
    except orjson.JSONDecodeError:
        return False


def _splice_max_tokens(raw: bytes, value: int) -> bytes:
    brace = raw.index(b"{")  # the body parsed as an object, so there is one
    # The object has at least "model" and "messages", so a comma is always right.
    return raw[: brace + 1] + b'"max_tokens":' + str(value).encode() + b"," + raw[brace + 1 :]
