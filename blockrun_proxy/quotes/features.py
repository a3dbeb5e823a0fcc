"""What the quote model may know about a request: cheap size measures, no tokenizer.

The gateway prices model x (input tokens + a max_tokens reservation) + a flat fee
(PROTOCOL.md section 3), but its tokenizer is unknown to us. So instead of
guessing one, each request is described by a few input-size *measures* that a
gateway could plausibly price by, and the fitter (fit.py) learns per model id
which measure, if any, explains the 402s exactly:

- ``text_bytes``: UTF-8 bytes of the messages' text;
- ``text_bytes_div4``: the same, divided by 4 and rounded up (the common
  "4 bytes per token" estimate);
- ``router_tokens``: BlockRun's own client-side estimate
  (``blockrun_llm.router_core.tokens.estimate_tokens``): one token per CJK
  character, one per four other characters.

All are computed in one pass over the already-parsed request; ASCII text (the
common case) costs one ``len`` per string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MEASURES = ("text_bytes", "text_bytes_div4", "router_tokens")
# A price key is (route, model): the same model may be priced differently on another route
# (Anthropic Messages, images), and each route's quotes are its own.
CHAT_ROUTE = "/v1/chat/completions"
PriceKey = tuple[str, str]

# The same character classes as blockrun_llm's estimate_tokens (Han, kana, Hangul,
# CJK punctuation, fullwidth forms), copied so the hot path need not import it.
_CJK_CHARS = re.compile(
    "[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)


@dataclass(frozen=True, slots=True)
class Features:
    """One request as the quote model sees it."""

    model: str
    max_tokens: int  # max_tokens, else max_completion_tokens (the proxy always sets one)
    messages: int
    sizes: tuple[int, ...]  # one per MEASURES entry
    route: str = CHAT_ROUTE

    @property
    def key(self) -> PriceKey:
        return (self.route, self.model)


def request_features(
    model: str, max_tokens: int | None, data: Mapping[str, Any], route: str = CHAT_ROUTE
) -> Features | None:
    """Features of a parsed chat request; None when it cannot be priced by us."""
    messages = data.get("messages")
    if max_tokens is None or not isinstance(messages, list):
        return None
    n_bytes = n_chars = n_cjk = 0
    for text in _texts(messages):
        if text.isascii():
            n_bytes += len(text)
            n_chars += len(text)
        else:
            n_bytes += len(text.encode("utf-8", "surrogatepass"))
            n_chars += len(text)
            n_cjk += len(_CJK_CHARS.findall(text))
    sizes = (n_bytes, -(-n_bytes // 4), n_cjk + math.ceil((n_chars - n_cjk) / 4))
    return Features(model, max_tokens, len(messages), sizes, route)


def features_from_body(body: bytes, route: str = CHAT_ROUTE) -> Features | None:
    """Features straight from a request body, for callers without a parsed request."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        return None
    max_tokens = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            max_tokens = value
            break
    return request_features(data["model"], max_tokens, data, route)


def _texts(messages: list[Any]) -> list[str]:
    """The text a gateway would count: string contents, text parts, other parts as JSON."""
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                texts.append(text if isinstance(text, str) else orjson.dumps(part).decode())
        elif content is not None:
            texts.append(orjson.dumps(content).decode())
    return texts
