"""``POST /v1/chat/completions``: OpenAI Chat Completions, JSON or SSE (PROTOCOL.md 9.1)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from blockrun_proxy.testing._calls import (
    OPENAI,
    Call,
    Incoming,
    Refusal,
    Route,
    Settlement,
    bad,
    parse_object,
)
from blockrun_proxy.testing._models import ModelSpec, estimate_input_tokens
from blockrun_proxy.testing._replies import answer_for, completion, count_tokens
from blockrun_proxy.testing._stream import ChunkWriter, frames

if TYPE_CHECKING:
    from blockrun_proxy.testing._gateway import FakeGateway


def chat_routes(gw: FakeGateway) -> list[Route]:
    return [Route("chat", "/v1/chat/completions", OPENAI, partial(_prepare, gw))]


def _prepare(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    body = _parse(incoming.raw)
    if isinstance(body, Refusal):
        return body
    model = gw.models.get(body["model"])
    if model is None:
        return Refusal(
            404,
            f"The model '{body['model']}' does not exist",
            code="model_not_found",
            param="model",
        )
    serve = partial(_serve, gw, body)
    if model.free:
        return Call(0, "", serve, free=True)
    description = f"{model.id} - {model.max_output} max output tokens"
    return Call(
        gw.model_price(model, body),
        description,
        serve,
        actual_cost=partial(_actual, gw, model, body),
        model=model.id,
    )


def _actual(gw: FakeGateway, model: ModelSpec, body: dict[str, Any]) -> int:
    """The price of this call had max_tokens been the tokens the answer really has."""
    answer = answer_for(body, "", gw.echo_limit)
    produced = answer.tool_call.arguments if answer.tool_call else answer.text or ""
    return gw.model_price(model, {**body, "max_tokens": count_tokens(produced)})


async def _serve(
    gw: FakeGateway, body: dict[str, Any], request: web.Request, paid: Settlement | None
) -> web.StreamResponse:
    n = gw.next_id()
    completion_id = f"chatcmpl-fake{n:010d}"
    answer = answer_for(body, f"call_fake{n:010d}", gw.echo_limit)
    prompt_tokens = estimate_input_tokens(body)
    created = gw.now()
    if body.get("stream") is not True:
        return gw.reply(
            200, completion(completion_id, created, body["model"], answer, prompt_tokens), paid
        )
    options = body.get("stream_options")
    chunks = frames(
        ChunkWriter(completion_id, created, body["model"]),
        answer,
        events=gw.stream_events,
        event_size=gw.event_size,
        prompt_tokens=prompt_tokens,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )
    return await gw.stream(request, chunks, content_type="text/event-stream", settlement=paid)


def _parse(raw: bytes) -> dict[str, Any] | Refusal:
    """The request as a dict, or an OpenAI-shaped 400 saying what is wrong with it."""
    body = parse_object(raw)
    if isinstance(body, Refusal):
        return body
    if not isinstance(body.get("model"), str):
        return bad("'model' is required and must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad("'messages' must be a non-empty array", "messages")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (type(value) is not int or value < 1):
            return bad(f"'{key}' must be a positive integer", key)
    if "stream" in body and not isinstance(body["stream"], bool):
        return bad("'stream' must be a boolean", "stream")
    return body
