"""Anthropic Messages: ``POST /v1/messages`` and ``/v1/messages/count_tokens`` (PROTOCOL.md 9.2).

The answer is the chat route's echo in Anthropic's shapes: a ``message`` object, or
the named SSE events Anthropic streams (``message_start``, ``content_block_start``,
``ping``, ``content_block_delta``..., ``content_block_stop``, ``message_delta``,
``message_stop``). ``max_tokens`` is required, as Anthropic requires it; the price
is the chat formula on the same model, with ``system`` counted as input.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from blockrun_proxy.testing._calls import (
    ANTHROPIC,
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
from blockrun_proxy.testing._replies import (
    ECHO_LIMIT,
    count_tokens,
    echo_output,
    last_user_text,
)
from blockrun_proxy.testing._stream import split_evenly

if TYPE_CHECKING:
    from blockrun_proxy.testing._gateway import FakeGateway

_ROLES = ("user", "assistant")


def anthropic_routes(gw: FakeGateway) -> list[Route]:
    return [
        Route("messages", "/v1/messages", ANTHROPIC, partial(_prepare_messages, gw)),
        Route("count_tokens", "/v1/messages/count_tokens", ANTHROPIC, partial(_prepare_count, gw)),
    ]


def chat_view(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the chat price formula reads it: ``system`` first, then the turns."""
    messages = list(body.get("messages") or [])
    system = body.get("system")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    view: dict[str, Any] = {"messages": messages}
    if "max_tokens" in body:
        view["max_tokens"] = body["max_tokens"]
    return view


def _prepare_messages(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    body = _parse(incoming.raw, require_max_tokens=True)
    if isinstance(body, Refusal):
        return body
    model = gw.model_for(body["model"])
    if model is None:
        return bad(f"Unknown model: {body['model']}", "model")
    serve = partial(_serve, gw, body, model)
    if model.free:
        return Call(0, "", serve, free=True)
    # BlockRun names the model this way on /v1/messages (no output ceiling in it).
    description = f"{model.name or model.id} API call"
    actual = partial(_actual_cost, gw, model, body)
    price = gw.model_price(model, chat_view(body))
    return Call(price, description, serve, actual_cost=actual, model=model.id)


def _actual_cost(gw: FakeGateway, model: ModelSpec, body: dict[str, Any]) -> int:
    """What an upto payment settles: the price with the tokens the answer really has."""
    heard = last_user_text(body)[:ECHO_LIMIT]
    produced = echo_output(heard, tool_called=_chosen_tool(body) is not None)
    return gw.model_price(model, {**chat_view(body), "max_tokens": count_tokens(produced)})


def _prepare_count(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    body = _parse(incoming.raw, require_max_tokens=False)
    if isinstance(body, Refusal):
        return body
    if gw.model_for(body["model"]) is None:
        return bad(f"Unknown model: {body['model']}", "model")

    async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
        return gw.reply(200, {"input_tokens": estimate_input_tokens(chat_view(body))}, paid)

    if gw.count_tokens_fee <= 0:
        return Call(0, "", serve, free=True)
    return Call(gw.scaled(gw.count_tokens_fee), "Anthropic token count", serve)


def _parse(raw: bytes, *, require_max_tokens: bool) -> dict[str, Any] | Refusal:
    body = parse_object(raw)
    if isinstance(body, Refusal):
        return body
    if not isinstance(body.get("model"), str):
        return bad("model: Field required", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad("messages: must be a non-empty array", "messages")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return bad("messages: each message needs a role of 'user' or 'assistant'", "messages")
    if require_max_tokens and positive_int(body, "max_tokens") is None:
        return bad("max_tokens: Field required (a positive integer)", "max_tokens")
    if "stream" in body and not isinstance(body["stream"], bool):
        return bad("stream: must be a boolean", "stream")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return bad("system: must be a string or an array of text blocks", "system")
    return body


def _chosen_tool(body: dict[str, Any]) -> str | None:
    """The tool the model 'calls': the forced one, else the first; None for none."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict):
        if choice.get("type") == "none":
            return None
        if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
            return str(choice["name"])
    first = tools[0].get("name") if isinstance(tools[0], dict) else None
    return first if isinstance(first, str) else "tool"


async def _serve(
    gw: FakeGateway,
    body: dict[str, Any],
    model: ModelSpec,
    request: web.Request,
    paid: Settlement | None,
) -> web.StreamResponse:
    n = gw.next_id()
    message_id = f"msg_fake{n:020d}"
    heard = last_user_text(body)[:ECHO_LIMIT]
    said = echo_output(heard, tool_called=False)
    tool = _chosen_tool(body)
    tool_use = None
    if tool is not None:
        tool_use = {"id": f"toolu_fake{n:014d}", "name": tool, "input": {"echo": heard}}
    input_tokens = estimate_input_tokens(chat_view(body))
    if body.get("stream") is not True:
        content: list[dict[str, Any]]
        if tool_use is None:
            content = [{"type": "text", "text": said}]
            produced = said
        else:
            content = [{"type": "tool_use", **tool_use}]
            produced = echo_output(heard, tool_called=True)
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "end_turn" if tool_use is None else "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": count_tokens(produced)},
        }
        return gw.reply(200, message, paid)
    events = _events(
        message_id,
        body["model"],
        said,
        tool_use,
        input_tokens=input_tokens,
        pieces=gw.stream_events,
        piece_size=gw.event_size,
    )
    return await gw.stream(request, events, content_type="text/event-stream", settlement=paid)


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _events(
    message_id: str,
    model: str,
    said: str,
    tool_use: dict[str, Any] | None,
    *,
    input_tokens: int,
    pieces: int,
    piece_size: int | None,
) -> Iterator[bytes]:
    """Anthropic's stream for one content block, in the order its API sends it."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    yield event("message_start", {"type": "message_start", "message": start})
    if tool_use is None:
        block: dict[str, Any] = {"type": "text", "text": ""}
        parts = split_evenly(said, pieces, piece_size)
        deltas = [{"type": "text_delta", "text": part} for part in parts]
    else:
        block = {"type": "tool_use", "id": tool_use["id"], "name": tool_use["name"], "input": {}}
        arguments = orjson.dumps(tool_use["input"]).decode()
        parts = split_evenly(arguments, max(pieces, 1), piece_size)
        deltas = [{"type": "input_json_delta", "partial_json": part} for part in parts]
    yield event(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    )
    yield event("ping", {"type": "ping"})
    for delta in deltas:
        yield event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
    stop_reason = "end_turn" if tool_use is None else "tool_use"
    yield event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": count_tokens("".join(parts))},
        },
    )
    yield event("message_stop", {"type": "message_stop"})
