"""Per route, what its price depends on, measured for the quote book (routes.Measure).

The quote book (quotes/) signs up front once it can predict a price key's price exactly.
It learns formulas in a request's output reservation, its size measures and its message
count; this module says what those are on each route (docs/PROTOCOL.md section 9):

- **chat**: the messages' text and ``max_tokens``, priced per token by the model's
  catalogue prices (the catalogue id is the model);
- **Anthropic Messages**: the same over ``system`` + ``messages`` (BlockRun converts the
  request to chat form and prices it so), with Anthropic's own ``max_tokens``; the
  catalogue id is the model, or the BlockRun id an Anthropic name maps to
  (``claude-sonnet-4-6`` -> ``anthropic/claude-sonnet-4.6``). ``count_tokens`` carries no
  reservation: it is measured the same way with none, and no catalogue prices apply;
- **Gemini**: the same over ``systemInstruction`` + ``contents`` (text parts as contents,
  other parts, function calls included, as tool calls), with ``maxOutputTokens`` as the
  reservation; the catalogue id is ``google/<model>``. A request without
  ``maxOutputTokens`` is priced on a reservation the proxy cannot see: it has a key of its
  own, learned from its 402s;
- **flat or per unit** (images, audio, video, search, Exa; ``routes.Units``): the key's
  model is the model (or the route's default) plus the values that pick a price (size,
  quality, sources, ...), the count the price is multiplied by sits where chat has its
  reservation, and the text the price may grow with is the size measure. Their formula
  has one varying input at most, so the book may sign from its exact formulas after a
  few 402s (``UNIT_MIN_OBSERVATIONS``).

Everything is read from the already-parsed body, in one pass; nothing here changes what
is sent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from blockrun_proxy.quotes import Features, request_features, text_sizes
from blockrun_proxy.routes import Measure, Route

# A key's own minimum of 402s for routes priced flat or per unit: the fewest a one-input
# formula is fitted from (fit.py: the unknowns + 1 + its spare observations).
UNIT_MIN_OBSERVATIONS = 4
# The key's model of a route whose body names none: the gateway's default model.
DEFAULT_MODEL = "(default)"
# Variant values longer than this (as JSON) go into the key as a digest: keys stay small.
MAX_VARIANT_CHARS = 200
# Gemini's sampling settings do not change a price; any other generationConfig field
# (a schema, a thinking budget, candidateCount) might, and is priced only as seen.
_GEMINI_SAMPLING = frozenset(
    {
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "stopSequences",
        "presencePenalty",
        "frequencyPenalty",
    }
)
# "claude-sonnet-4-6" -> "anthropic/claude-sonnet-4.6" (PROTOCOL.md 9.2); a guess the 402s
# confirm or refute like any catalogue price.
_ANTHROPIC_NAME = re.compile(r"(claude-[a-z]+-\d+)-(\d+)")


def features(
    route: Route,
    model: str | None,
    max_tokens: int | None,
    data: Mapping[str, Any],
    params: Mapping[str, str],
) -> Features | None:
    """What the quote book measures of this request on ``route``; None: probe it first."""
    measure = route.measure
    label = route.label
    if measure is Measure.CHAT:
        return None if model is None else request_features(model, max_tokens, data, label)
    if measure is Measure.ANTHROPIC:
        return None if model is None else anthropic(model, max_tokens, data, label)
    if measure is Measure.GEMINI:
        return None if model is None else gemini(model, max_tokens, data, label)
    if measure is Measure.UNITS:
        return units(route, model, data, params)
    return None


def key_model(route: Route, model: str | None, max_tokens: int | None) -> str | None:
    """The price key's model where it is known before measuring (the token-priced routes),
    so the gateway can skip measuring calls of keys the book has never seen priced."""
    if model is None:
        return None
    if route.measure in (Measure.CHAT, Measure.ANTHROPIC):
        return model
    if route.measure is Measure.GEMINI:
        return _gemini_key(model, max_tokens)
    return None


def anthropic(
    model: str, max_tokens: int | None, data: Mapping[str, Any], route: str
) -> Features | None:
    messages = data.get("messages")
    if not isinstance(messages, list):
        return None
    system = data.get("system")
    if system:  # counted as input, as the first message (as BlockRun's conversion puts it)
        data = {**data, "messages": [{"role": "system", "content": system}, *messages]}
    view = data
    if max_tokens is None:  # count_tokens: no reservation, not priced per token
        return request_features(model, 0, view, route)
    return request_features(model, max_tokens, view, route, catalogue=anthropic_id(model))


def anthropic_id(model: str) -> str:
    """The catalogue id of an Anthropic request's model: BlockRun's ids as they are, an
    Anthropic name as BlockRun maps it."""
    if "/" in model:
        return model
    match = _ANTHROPIC_NAME.fullmatch(model)
    name = f"{match.group(1)}.{match.group(2)}" if match else model
    return "anthropic/" + name


def gemini(
    model: str, max_tokens: int | None, data: Mapping[str, Any], route: str
) -> Features | None:
    contents = data.get("contents")
    if not isinstance(contents, list):
        return None
    messages = [
        _gemini_message(c.get("role"), c.get("parts")) for c in contents if isinstance(c, dict)
    ]
    system = data.get("systemInstruction")
    if isinstance(system, dict):
        messages.insert(0, _gemini_message("system", system.get("parts")))
    config = data.get("generationConfig")
    priced_config = None
    if isinstance(config, dict):
        priced_config = {k: v for k, v in config.items() if k not in _GEMINI_SAMPLING} or None
    # Under the chat names request_features counts as "extra": formulas and bounds speak
    # only for tools and configs seen.
    view = {
        "messages": messages,
        "tools": data.get("tools"),
        "tool_choice": data.get("toolConfig"),
        "response_format": priced_config,
    }
    key = _gemini_key(model, max_tokens)
    if max_tokens is None:
        return request_features(key, 0, view, route)
    catalogue = model if "/" in model else "google/" + model
    return request_features(key, max_tokens, view, route, catalogue=catalogue)


def _gemini_key(model: str, max_tokens: int | None) -> str:
    return model if max_tokens is not None else model + " " + _variant({"maxOutputTokens": None})


def _gemini_message(role: object, parts: object) -> dict[str, Any]:
    """A Gemini content as a chat message: its text parts as the content, every other part
    (function calls and responses, inline data) as a tool call's arguments."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            calls.append({"function": {"arguments": orjson.dumps(part).decode()}})
    message: dict[str, Any] = {"role": role if isinstance(role, str) else "user"}
    message["content"] = "".join(texts)
    if calls:
        message["tool_calls"] = calls
    return message


def units(
    route: Route, model: str | None, data: Mapping[str, Any], params: Mapping[str, str]
) -> Features | None:
    spec = route.units
    if spec is None:
        return None
    variant: dict[str, Any] = {}
    count = 0
    if spec.count is not None:
        value = data.get(spec.count)
        if value is None:
            variant[spec.count] = None  # the gateway's default count, unknown here
        elif isinstance(value, list):
            count = len(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            count = value
        else:
            return None  # the gateway will refuse it; nothing to learn
    for name in spec.variant:
        if name in data:
            variant[name] = data[name]
    for name in spec.counted:
        value = data.get(name)
        variant["#" + name] = len(value) if isinstance(value, list) else int(value is not None)
    text = "".join(v for name in spec.text if isinstance(v := data.get(name), str))
    base = model or "/".join(params.values()) or DEFAULT_MODEL
    key = base + " " + _variant(variant) if variant else base
    return Features(
        key,
        count,
        1,
        text_sizes(text),
        route.label,
        min_observations=UNIT_MIN_OBSERVATIONS,
        sizes_exact=True,
    )


def _variant(values: Mapping[str, Any]) -> str:
    """The values that pick a price, as one short canonical string."""
    text = orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) <= MAX_VARIANT_CHARS:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]
