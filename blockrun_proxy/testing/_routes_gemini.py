"""Gemini native: ``POST /v1beta/models/{model}:generateContent|streamGenerateContent``.

(PROTOCOL.md 9.3.) The model is in the path, with or without a ``google/`` prefix;
streaming is chosen by the method in the path, and BlockRun's gateway always
streams SSE for ``streamGenerateContent`` whatever the query says (``?alt=sse`` is
what google-genai sends anyway). Frames end in CRLF CRLF, as Google's own do. The
price is the chat formula on ``google/<model>`` with ``maxOutputTokens`` as the
output reservation.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from blockrun_proxy.testing._calls import (
    GOOGLE,
    Call,
    Incoming,
    Refusal,
    Route,
    Settlement,
    bad,
    parse_object,
    positive_int,
)
from blockrun_proxy.testing._models import ModelSpec, estimate_input_tokens
from blockrun_proxy.testing._replies import ECHO_LIMIT, count_tokens, echo_output
from blockrun_proxy.testing._stream import split_evenly

if TYPE_CHECKING:
    from blockrun_proxy.testing._gateway import FakeGateway

METHODS = ("generateContent", "streamGenerateContent")
FRAME_END = b"\r\n\r\n"


def gemini_routes(gw: FakeGateway) -> list[Route]:
    # One template: a "google/" prefix puts a slash in the model, which a plain
    # {model} segment would not match.
    return [Route("gemini", "/v1beta/models/{target:.+}", GOOGLE, partial(_prepare, gw))]


def _prepare(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    name, _, method = incoming.params["target"].rpartition(":")
    if method not in METHODS or not name:
        return Refusal(404, f"Method not found: {incoming.params['target']}", code="not_found")
    bare = name.removeprefix("models/").removeprefix("google/")
    model = gw.model_for(f"google/{bare}") or gw.model_for(bare)
    if model is None:
        return Refusal(404, f"models/{bare} is not found", code="model_not_found")
    body = _parse(incoming.raw)
    if isinstance(body, Refusal):
        return body
    serve = partial(_serve, gw, body, model, bare, method == "streamGenerateContent")
    if model.free:
        return Call(0, "", serve, free=True)
    description = f"{model.id} - {model.max_output} max output tokens"
    actual = partial(_actual_cost, gw, model, body)
    price = gw.model_price(model, chat_view(body))
    return Call(price, description, serve, actual_cost=actual, model=model.id)


def _actual_cost(gw: FakeGateway, model: ModelSpec, body: dict[str, Any]) -> int:
    """What an upto payment settles: the price with the tokens the answer really has."""
    heard = _last_user_text(body)[:ECHO_LIMIT]
    produced = echo_output(heard, tool_called=_chosen_function(body) is not None)
    return gw.model_price(model, {**chat_view(body), "max_tokens": count_tokens(produced)})


def _parse(raw: bytes) -> dict[str, Any] | Refusal:
    body = parse_object(raw)
    if isinstance(body, Refusal):
        return body
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return bad("contents must be a non-empty array", "contents")
    for content in contents:
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
            return bad("each content needs a parts array", "contents")
    config = body.get("generationConfig")
    if config is not None:
        if not isinstance(config, dict):
            return bad("generationConfig must be an object", "generationConfig")
        if "maxOutputTokens" in config and positive_int(config, "maxOutputTokens") is None:
            return bad("maxOutputTokens must be a positive integer", "generationConfig")
    return body


def _text(parts: object) -> str:
    if not isinstance(parts, list):
        return ""
    return "".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def chat_view(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the chat price formula reads it."""
    messages = [
        {"role": "assistant" if c.get("role") == "model" else "user", "content": _text(c["parts"])}
        for c in body["contents"]
    ]
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        messages.insert(0, {"role": "system", "content": _text(system.get("parts"))})
    view: dict[str, Any] = {"messages": messages}
    config = body.get("generationConfig")
    if isinstance(config, dict) and "maxOutputTokens" in config:
        view["max_tokens"] = config["maxOutputTokens"]
    return view


def _last_user_text(body: dict[str, Any]) -> str:
    for content in reversed(body["contents"]):
        if content.get("role", "user") == "user":
            return _text(content["parts"])
    return ""


def _chosen_function(body: dict[str, Any]) -> str | None:
    """The function the model 'calls': the first allowed one, unless calling is off."""
    config = body.get("toolConfig")
    calling = config.get("functionCallingConfig") if isinstance(config, dict) else None
    mode = calling.get("mode") if isinstance(calling, dict) else None
    if mode == "NONE":
        return None
    allowed = calling.get("allowedFunctionNames") if isinstance(calling, dict) else None
    if isinstance(allowed, list) and allowed and isinstance(allowed[0], str):
        return allowed[0]
    for tool in body.get("tools") or []:
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        if isinstance(declarations, list) and declarations:
            name = declarations[0].get("name") if isinstance(declarations[0], dict) else None
            return name if isinstance(name, str) else "tool"
    return None


async def _serve(
    gw: FakeGateway,
    body: dict[str, Any],
    model: ModelSpec,
    version: str,
    streamed: bool,
    request: web.Request,
    paid: Settlement | None,
) -> web.StreamResponse:
    response_id = f"fake{gw.next_id():016d}"
    heard = _last_user_text(body)[:ECHO_LIMIT]
    function = _chosen_function(body)
    prompt_tokens = estimate_input_tokens(chat_view(body))
    head = {"modelVersion": version, "responseId": response_id}
    if function is not None:
        part: dict[str, Any] = {"functionCall": {"name": function, "args": {"echo": heard}}}
        produced = echo_output(heard, tool_called=True)
        answer = _answer([part], prompt_tokens, count_tokens(produced), head)
        if streamed:
            frames = iter([b"data: " + orjson.dumps(answer) + FRAME_END])
            return await _stream(gw, request, frames, paid)
        return gw.reply(200, answer, paid)
    said = echo_output(heard, tool_called=False)
    if not streamed:
        return gw.reply(
            200, _answer([{"text": said}], prompt_tokens, count_tokens(said), head), paid
        )
    pieces = split_evenly(said, gw.stream_events, gw.event_size) or [""]
    return await _stream(gw, request, _frames(pieces, prompt_tokens, head), paid)


def _answer(
    parts: list[dict[str, Any]], prompt_tokens: int, output_tokens: int, head: dict[str, str]
) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
        },
        **head,
    }


def _frames(pieces: list[str], prompt_tokens: int, head: dict[str, str]) -> Iterator[bytes]:
    """One SSE frame per piece; the last says STOP and carries the output count."""
    for i, piece in enumerate(pieces):
        if i == len(pieces) - 1:
            chunk = _answer([{"text": piece}], prompt_tokens, count_tokens("".join(pieces)), head)
        else:
            chunk = {
                "candidates": [
                    {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
                ],
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "totalTokenCount": prompt_tokens,
                },
                **head,
            }
        yield b"data: " + orjson.dumps(chunk) + FRAME_END


async def _stream(
    gw: FakeGateway, request: web.Request, frames: Iterator[bytes], paid: Settlement | None
) -> web.StreamResponse:
    return await gw.stream(request, frames, content_type="text/event-stream", settlement=paid)
