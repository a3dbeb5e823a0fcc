"""Model catalogue and the default per-request price formula."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import orjson

DEFAULT_MAX_TOKENS = 4096
# A rough bytes-per-token ratio; the real gateway tokenizes, the fake only needs
# a price that grows with the prompt and is the same for the same body.
BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class ModelSpec:
    """One model the fake gateway serves.

    Prices are USD per 1M tokens, which is the same number as micro-USDC (atomic
    units) per token, so the arithmetic stays exact with ``Fraction``. Floats and
    decimal strings are converted through ``str`` so ``0.15`` means 3/20 exactly.
    """

    id: str
    input_price: Fraction | int
    output_price: Fraction | int
    flat_fee: int = 1000
    max_output: int = 128_000
    free: bool = False
    context_window: int = 200_000
    name: str | None = None
    # Other names the Anthropic and Gemini routes accept for this model, e.g. the
    # "claude-sonnet-4-6" Claude Code sends for "anthropic/claude-sonnet-4.6".
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_price", _exact(self.input_price))
        object.__setattr__(self, "output_price", _exact(self.output_price))

    @property
    def provider(self) -> str:
        return self.id.split("/", 1)[0]

    def listing(self) -> dict[str, Any]:
        """The model's entry in ``GET /v1/models``."""
        return {
            "id": self.id,
            "object": "model",
            "name": self.name or self.id.split("/", 1)[-1],
            "provider": self.provider,
            "pricing": {
                "input": float(self.input_price),
                "output": float(self.output_price),
                "flat": self.flat_fee / 1_000_000,
            },
            "context_window": self.context_window,
            "max_output": self.max_output,
            "billing_mode": "free" if self.free else "paid",
            "available": True,
        }


def _exact(value: object) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(str(value))


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("openai/gpt-5.5", 5, 40, context_window=400_000, name="GPT-5.5"),
    ModelSpec(
        "anthropic/claude-sonnet-4.6",
        3,
        15,
        max_output=64_000,
        name="Claude Sonnet 4.6",
        aliases=("claude-sonnet-4-6", "claude-sonnet-4.6"),
    ),
    ModelSpec(
        "openai/gpt-4o-mini",
        Fraction("0.15"),
        Fraction("0.6"),
        max_output=16_384,
        context_window=128_000,
        name="GPT-4o mini",
    ),
    ModelSpec(
        "google/gemini-2.5-flash",
        Fraction("0.3"),
        Fraction("2.5"),
        max_output=65_536,
        context_window=1_048_576,
        name="Gemini 2.5 Flash",
    ),
    ModelSpec(
        "nvidia/deepseek-v4-flash",
        0,
        0,
        flat_fee=0,
        max_output=8192,
        free=True,
        context_window=128_000,
        name="DeepSeek V4 Flash",
    ),
)

PricingFn = Callable[[ModelSpec, Mapping[str, Any]], int]


def message_text_bytes(content: object) -> int:
    """UTF-8 size of one message's content, whatever shape OpenAI allows for it."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            total += len(text.encode()) if isinstance(text, str) else len(orjson.dumps(part))
        return total
    return len(orjson.dumps(content))


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    size = sum(message_text_bytes(m.get("content")) for m in messages if isinstance(m, dict))
    return math.ceil(size / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


def requested_max_tokens(body: Mapping[str, Any]) -> int:
    # LiteLLM renames max_tokens to max_completion_tokens for gpt-5/o-series
    # models, so both must move the price.
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return DEFAULT_MAX_TOKENS


def default_price(model: ModelSpec, body: Mapping[str, Any]) -> int:
    """Atomic USDC for one call: input estimate plus the clamped output reservation."""
    if model.free:
        return 0
    output = min(requested_max_tokens(body), model.max_output)
    variable = model.input_price * estimate_input_tokens(body) + model.output_price * output
    return math.ceil(variable) + model.flat_fee


def usd_string(amount: int) -> str:
    """Atomic USDC (6 decimals) as a dollar string, e.g. 1234 -> "0.001234"."""
    return f"{amount // 1_000_000}.{amount % 1_000_000:06d}"


# --- pricing shapes ---------------------------------------------------------------------------
#
# Ways a gateway may price a chat call, each with a catalogue that publishes prices
# consistent with it (``ModelSpec.listing``). The fake's own formula (``default_price``)
# is one of them; these are the others the quote model is measured on. Each is written
# here from its description, independently of the proxy's quotes/ package.

PER_MESSAGE_TOKENS = 4
_CJK = re.compile(
    "[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """What a model reads: string contents, text parts (others as JSON), tool calls'
    function names and arguments."""
    texts: list[str] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
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
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts += [
                    v
                    for v in (function.get("name"), function.get("arguments"))
                    if isinstance(v, str)
                ]
    return texts


def _message_count(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    return len(messages) if isinstance(messages, list) else 0


def _reserved(model: ModelSpec, body: Mapping[str, Any]) -> int:
    return min(requested_max_tokens(body), model.max_output)


def _priced(model: ModelSpec, input_tokens: int | Fraction, body: Mapping[str, Any]) -> int:
    if model.free:
        return 0
    variable = model.input_price * input_tokens + model.output_price * _reserved(model, body)
    return math.ceil(variable) + model.flat_fee


def max_tokens_price(model: ModelSpec, body: Mapping[str, Any]) -> int:
    """Only the ``max_tokens`` reservation is priced (the catalogue lists input at 0)."""
    return _priced(model, 0, body)


def chars_price(model: ModelSpec, body: Mapping[str, Any]) -> int:
    """Input tokens = characters / 4 (rounded up) + PER_MESSAGE_TOKENS per message;
    the total rounded up once, as for prices that are not whole micro-dollars."""
    chars = sum(len(t) for t in prompt_texts(body))
    tokens = -(-chars // 4) + PER_MESSAGE_TOKENS * _message_count(body)
    return _priced(model, tokens, body)


def catalogue_price(model: ModelSpec, body: Mapping[str, Any]) -> int:
    """The catalogue's per-token prices over BlockRun's own token estimate (one token per
    CJK character, one per four others), plus its flat fee."""
    text = "".join(prompt_texts(body))
    cjk = len(_CJK.findall(text))
    return _priced(model, cjk + math.ceil((len(text) - cjk) / 4), body)


def reserialised_price(model: ModelSpec, body: Mapping[str, Any]) -> int:
    """What a gateway that re-serialises the messages as JSON (Python's json, ASCII
    escapes and spaced separators) and counts 4 characters a token charges: a size the
    proxy cannot measure exactly (escapes, structure)."""
    size = len(json.dumps(body.get("messages")))
    return _priced(model, -(-size // 4), body)


@dataclass(frozen=True)
class PricingShape:
    name: str
    price: PricingFn
    models: tuple[ModelSpec, ...]  # the catalogue: prices consistent with ``price``


_PAID = tuple(m for m in DEFAULT_MODELS if not m.free)
PRICING_SHAPES: Mapping[str, PricingShape] = {
    shape.name: shape
    for shape in (
        PricingShape(
            "max_tokens",
            max_tokens_price,
            tuple(dataclasses.replace(m, input_price=0) for m in _PAID),
        ),
        PricingShape("chars", chars_price, _PAID),
        PricingShape(
            "catalogue",
            catalogue_price,
            (*_PAID, ModelSpec("google/gemini-2.5-pro", Fraction("1.25"), 10, flat_fee=2000)),
        ),
        PricingShape("default", default_price, _PAID),
        PricingShape("reserialised", reserialised_price, _PAID),
    )
}
