"""What the quote model may know about a request: cheap size measures, no tokenizer.

The gateway prices model x (input tokens + a max_tokens reservation) + a flat fee
(PROTOCOL.md section 3), but its tokenizer is unknown to us. So instead of
guessing one, each request is described by a few input-size *measures* that a
gateway could plausibly price by, and the quote model learns per price key which
one, if any, explains the 402s exactly:

- ``text_chars``: characters of the messages' text (a quarter of a token each, for
  gateways that price "characters / 4" without rounding);
- ``text_chars_div4``: the same, divided by 4 and rounded up;
- ``text_bytes`` and ``text_bytes_div4``: the same over UTF-8 bytes;
- ``router_tokens``: BlockRun's own client-side estimate
  (``blockrun_llm.router_core.tokens.estimate_tokens``): one token per CJK
  character, one per four other characters.

The text is what a model reads: string contents, text parts (other parts as JSON),
and the function name and arguments of assistant ``tool_calls``; each measure is also
taken over the contents alone (``content_*``), for gateways that do not count tool
calls. On requests without tool calls the two coincide. The message count
is a feature of its own (per-message overheads). All measures come from one pass
over the already-parsed request; ASCII text (the common case) costs one ``len`` per
string.

A price key is ``(route, model)``: the same model may be priced differently on
another route (Anthropic messages, images), and each route's quotes are its own. Routes
priced like chat (Anthropic Messages, Gemini) are measured over their own request shapes
turned into chat messages, and name the catalogue id whose per-token prices apply
(``Features.catalogue``); routes priced flat or per unit (images, audio, search) put the
unit count where chat has its reservation and the text they may price in the size
measures (measures.py builds both).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import orjson

CHAT_ROUTE = "/v1/chat/completions"
MEASURES = (
    "text_chars",
    "text_chars_div4",
    "text_bytes",
    "text_bytes_div4",
    "router_tokens",
    "content_chars",
    "content_chars_div4",
    "content_bytes",
    "content_bytes_div4",
    "content_router_tokens",
)
# Tokens per unit of each measure, for catalogue prices quoted per token.
MEASURE_TOKENS: tuple[Fraction, ...] = (
    Fraction(1, 4),
    Fraction(1),
    Fraction(1, 4),
    Fraction(1),
    Fraction(1),
) * 2

PriceKey = tuple[str, str]  # (route, model)
# Request fields besides the messages that a gateway may count as input.
EXTRA_FIELDS = ("tools", "functions", "response_format", "tool_choice")
# Fields left out of a request's prefix digests (Prefixes): the reservation is compared on
# its own, and streaming or not does not change what a call costs (PROTOCOL.md section 3).
# Every other field (tools, system, n, ...) must be the same for one request to extend another.
UNDIGESTED_FIELDS = frozenset(("messages", "max_tokens", "max_completion_tokens", "stream"))
DIGEST_BYTES = 16

# The same character classes as blockrun_llm's estimate_tokens (Han, kana, Hangul,
# CJK punctuation, fullwidth forms), copied so the hot path need not import it.
_CJK_PATTERN = "[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"


@functools.cache
def cjk_chars() -> re.Pattern[str]:
    """The CJK class as a regex, compiled at its first use (the rare rows of ``cjk_count``)
    rather than at import: compiling these ranges takes some 3 ms of startup (issue 14's
    budget is 0.3 s to /healthz) and builds temporary tables a proxy may never need."""
    return re.compile(_CJK_PATTERN)


class Prefixes:
    """Digests of a request cut after each of its messages, for telling that one request
    extends another: the same body with more messages appended.

    ``digests()[i]`` covers every field but UNDIGESTED_FIELDS and the first ``i``
    messages, as JSON; two requests of a price key share ``digests()[i]`` exactly when they
    agree on all of that (up to a 128-bit BLAKE2 collision). Hashing a long conversation
    costs as much as measuring it, so it is done only when the quote book asks (it does
    not while an exact formula pins the price), once per request.
    """

    __slots__ = ("_digests", "_messages", "_rest")

    def __init__(self, messages: Sequence[Any] = (), rest: Mapping[str, Any] | None = None):
        self._messages = messages
        self._rest = rest
        self._digests: tuple[bytes, ...] | None = None

    def digests(self) -> tuple[bytes, ...]:
        """One digest per prefix, from no messages to all; () when there is nothing to
        digest (no body given, or one that does not serialise)."""
        if self._digests is None:
            self._digests = self._compute()
        return self._digests

    def _compute(self) -> tuple[bytes, ...]:
        if self._rest is None:
            return ()
        try:
            running = hashlib.blake2b(orjson.dumps(self._rest), digest_size=DIGEST_BYTES)
            found = [running.digest()]
            for message in self._messages:
                # Length-prefixed: message boundaries are part of what is digested.
                encoded = orjson.dumps(message)
                running.update(len(encoded).to_bytes(8, "big"))
                running.update(encoded)
                found.append(running.copy().digest())
        except orjson.JSONEncodeError:
            return ()
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Features:
    """One request as the quote model sees it."""

    model: str
    max_tokens: int  # max_tokens, else max_completion_tokens (the proxy always sets one)
    messages: int
    sizes: tuple[int, ...]  # one per MEASURES entry
    route: str = CHAT_ROUTE
    # JSON size of what else a gateway might price (tools, functions, response_format):
    # not a priced feature, but formulas and bounds only speak for values seen.
    extra: int = 0
    # Which requests this one extends (the quote book's sound lower bound).
    prefixes: Prefixes = field(default_factory=Prefixes, compare=False, repr=False, hash=False)
    # The catalogue id whose per-token prices this key is priced by (chat's model; the
    # model an Anthropic or Gemini request names), None where the catalogue does not apply.
    catalogue: str | None = None
    # 402s the learned formulas need before they may sign, when none of them rests on a
    # guessed slope (fit.py's Occam column); None: the book's own minimum. Routes priced flat
    # or per unit set it low: their formula has one varying input at most, pinned exactly.
    min_observations: int | None = None
    # The gateway prices exactly what ``sizes`` and ``max_tokens`` measure (a unit-priced
    # route's count and text, read by measures.py), so a request at least as large in every
    # one costs at least as much: the quote book may bound by dominance, which it may not
    # where prompts are measured in ways the proxy cannot see (chat: re-serialised JSON).
    sizes_exact: bool = False

    @property
    def key(self) -> PriceKey:
        return (self.route, self.model)


def request_features(
    model: str,
    max_tokens: int | None,
    data: Mapping[str, Any],
    route: str = CHAT_ROUTE,
    *,
    catalogue: str | None = None,
) -> Features | None:
    """Features of a parsed chat request; None when it cannot be priced by us. On the chat
    route the model is its own catalogue id; other routes name theirs (``catalogue``)."""
    if catalogue is None and route == CHAT_ROUTE:
        catalogue = model
    messages = data.get("messages")
    if max_tokens is None or not isinstance(messages, list):
        return None
    contents: list[str] = []
    calls: list[str] = []
    for message in messages:
        if isinstance(message, dict):
            contents += _content_texts(message)
            if "tool_calls" in message:
                calls += _call_texts(message)
    # Counted joined: one pass in C per kind instead of one per message.
    content = _Counts()
    content.add("".join(contents))
    with_calls = _Counts(content.chars, content.bytes, content.cjk)
    with_calls.add("".join(calls))
    sizes = with_calls.measures() + content.measures()
    extra = 0
    for name in EXTRA_FIELDS:
        value = data.get(name)
        if value is not None:
            extra += len(orjson.dumps(value))
    rest = {k: v for k, v in data.items() if k not in UNDIGESTED_FIELDS}
    prefixes = Prefixes(messages, rest)
    return Features(
        model,
        max_tokens,
        len(messages),
        sizes,
        route,
        extra,
        prefixes=prefixes,
        catalogue=catalogue,
    )


def text_sizes(text: str) -> tuple[int, ...]:
    """The size measures of one text (as the contents alone and with tool calls: the same),
    for routes that price a text field rather than messages."""
    counts = _Counts()
    counts.add(text)
    measures = counts.measures()
    return measures + measures


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


def message_texts(messages: list[Any]) -> list[str]:
    """The text a gateway would count: string contents, text parts (other parts as JSON),
    and each tool call's function name and arguments."""
    texts: list[str] = []
    for message in messages:
        if isinstance(message, dict):
            texts += _content_texts(message)
            texts += _call_texts(message)
    return texts


def _content_texts(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            texts.append(text if isinstance(text, str) else orjson.dumps(part).decode())
        return texts
    if content is not None:
        return [orjson.dumps(content).decode()]
    return []


def _call_texts(message: dict[str, Any]) -> list[str]:
    calls = message.get("tool_calls")
    texts: list[str] = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts += [
                v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)
            ]
    return texts


# The CJK classes by the high byte of a UTF-16 code unit: rows 0x30, 0x34-0x4D, 0x4E-0x9F,
# 0xAC-0xD7, 0xF9-0xFA and 0xFF hold them. Rows 0x4D, 0xD7 and 0xFF are partly outside
# (U+4DC0-4DFF, U+D7B0-D7FF, U+FFF0-FFFF).
_CJK_ROWS = bytes(
    1 if r == 0x30 or 0x34 <= r <= 0x9F or 0xAC <= r <= 0xD7 or r in (0xF9, 0xFA, 0xFF) else 0
    for r in range(256)
)
_ROW_SPECIALS = tuple(chr(c) for c in range(0xFFF0, 0x10000))


def cjk_count(text: str) -> int:
    """How many characters of ``text`` the CJK class matches, as the regex would count
    them, at C speed: a regex ``findall`` costs tens of nanoseconds a character, and a
    growing conversation in Chinese is tens of thousands of characters per request."""
    rows = text.encode("utf-16-be", "surrogatepass")[0::2]
    count = rows.translate(_CJK_ROWS).count(1)
    if not count:
        return 0
    if 0x4D in rows or 0xD7 in rows:
        return len(cjk_chars().findall(text))  # rare rows: let the regex draw the line
    if 0xFF in rows:
        count -= sum(text.count(c) for c in _ROW_SPECIALS)
    return count


class _Counts:
    """Characters, UTF-8 bytes and CJK characters of some text."""

    __slots__ = ("bytes", "chars", "cjk")

    def __init__(self, chars: int = 0, n_bytes: int = 0, cjk: int = 0) -> None:
        self.chars, self.bytes, self.cjk = chars, n_bytes, cjk

    def add(self, text: str) -> None:
        self.chars += len(text)
        if text.isascii():
            self.bytes += len(text)
        else:
            self.bytes += len(text.encode("utf-8", "surrogatepass"))
            self.cjk += cjk_count(text)

    def measures(self) -> tuple[int, ...]:
        return (
            self.chars,
            -(-self.chars // 4),
            self.bytes,
            -(-self.bytes // 4),
            self.cjk + math.ceil((self.chars - self.cjk) / 4),
        )
