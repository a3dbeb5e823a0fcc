"""The body guard of every route: what a request body must be before anything is spent.

One function per ``routes.Body`` kind. Each parses at most once, refuses bad input with
an OpenAI-shaped ``InvalidRequest`` (no upstream call, no payment), and hands on the
bytes to send (the client's own, byte for byte: only chat's ``max_tokens`` default is
spliced in, chatbody.py), the model of the price key, and what the quote model may
measure. Bodies a route does not parse (``Body.ANY``) go through as they came.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blockrun_proxy import measures
from blockrun_proxy.chatbody import (
    ChatRequest,
    checked_model,
    parse_chat_request,
    request_object,
)
from blockrun_proxy.errors import InvalidRequest
from blockrun_proxy.quotes import Features
from blockrun_proxy.routes import Body, Model, Route

# google-genai builds "models/<name>"; the price key holds the name.
_GEMINI_PREFIX = "models/"


@dataclass(frozen=True, slots=True)
class Guarded:
    """A request body that passed its route's guard."""

    body: bytes  # what goes upstream
    model: str | None  # the model of the price key (None: the route has none, or none given)
    max_tokens: int | None  # the output reservation the gateway prices, when known
    data: Mapping[str, Any] | None  # the parsed object, for the quote model; never re-sent
    chat: ChatRequest | None = None  # chat's own parse (the quote model reads it)
    params: Mapping[str, str] = field(default_factory=dict)  # the path's (Exa's endpoint)

    def features(self, route: Route) -> Features | None:
        """What the quote model measures of this request, priced under ``route``
        (measures.py); None when it cannot: such calls are probed first."""
        if self.data is None:
            return None
        return measures.features(route, self.model, self.max_tokens, self.data, self.params)

    def key_model(self, route: Route) -> str | None:
        """The price key's model when it is known before measuring (measures.key_model)."""
        return measures.key_model(route, self.model, self.max_tokens)


def guard_body(
    route: Route, raw: bytes, params: Mapping[str, str], *, default_max_tokens: int
) -> Guarded:
    """``raw`` checked against ``route``'s rules; InvalidRequest when it breaks them."""
    kind = route.body
    if kind is Body.CHAT:
        chat = parse_chat_request(raw, default_max_tokens=default_max_tokens)
        return Guarded(chat.body, chat.model, chat.max_tokens, chat.data, chat)
    if kind is Body.ANY or kind is Body.NONE:
        return Guarded(raw, None, None, None)
    data = request_object(raw)
    if kind is Body.GEMINI:
        in_path = checked_model(params.get("model", "").removeprefix(_GEMINI_PREFIX))
        config = data.get("generationConfig")
        limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
        return Guarded(raw, in_path, limit if _positive_int(limit) else None, data)
    model = _model(route, data)
    if kind is Body.ANTHROPIC:
        return Guarded(raw, model, _anthropic_checked(data), data)
    return Guarded(raw, model, None, data, params=params)


def _model(route: Route, data: Mapping[str, Any]) -> str | None:
    if route.model is Model.NONE:
        return None
    model = data.get("model")
    if model is None and route.model is Model.OPTIONAL:
        return None  # the gateway's default model for the route
    return checked_model(model)


def _anthropic_checked(data: Mapping[str, Any]) -> int:
    """Anthropic's own rules the price rests on: ``max_tokens`` is required (no default:
    Anthropic clients always send one), ``messages`` a non-empty list of role objects."""
    max_tokens = data.get("max_tokens")
    if not _positive_int(max_tokens):
        raise InvalidRequest(
            "'max_tokens' is required and must be a positive integer", code="invalid_max_tokens"
        )
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' is required and must be a non-empty array", code="missing_messages"
        )
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise InvalidRequest(
            "each of 'messages' must be an object with a string 'role'", code="invalid_messages"
        )
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", code="invalid_stream")
    assert isinstance(max_tokens, int)
    return max_tokens


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
