"""The traffic agents really send, as request bodies, for tests and benches.

Each workload is a deterministic (seeded) sequence of chat request bodies for one
model:

- ``conversation``: a chat that grows by one user and one assistant message per turn,
  with a constant ``max_tokens`` (every chat agent);
- ``tool_loop``: a task worked through tool calls: each step appends the assistant's
  ``tool_calls`` and the ``tool`` result, under one constant ``tools`` list;
- ``random_prompts``: single prompts of random size from 10 to 10,000 characters of
  mixed text (ASCII, CJK, quotes and escapes), with varied ``max_tokens``.

Bodies are built before any is sent (the assistant's turns are written here, not taken
from the gateway's answers), so the same seed gives the same traffic everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

Workload = Callable[[random.Random, str, int, bool], Iterator[dict[str, Any]]]

_WORDS = tuple(
    [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "wizards",
        "quietly",
        "judge",
        "boxing",
        "matches",
        "near",
        "the",
        "old",
        "harbour",
        "before",
        "dawn",
    ]
)
_CJK = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过"
    "家学对可她里后小么心多天而能好都然没日于起还发成事只作当无开手十用主行方又如前所本见经"
    "头面公同三已老从动两长"
)
_KANA = (
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
)
_SPECIAL = ['"', "\\", "\n", "\t", "'", "{", "}", '\\"', "\\n", "é", "ü", "—", "…", "🙂"]
_MAX_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_files",
            "description": "Search the repository for a pattern.",
            "parameters": {
                "type": "object",
                "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}},
                "required": ["pattern"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    },
]


def mixed_text(rng: random.Random, chars: int) -> str:
    """About ``chars`` characters: mostly words, with runs of CJK, kana, quotes, escapes,
    accents and the odd emoji, in proportions that vary from text to text."""
    cjk_share = rng.choice((0.0, 0.0, 0.05, 0.3, 0.8))
    special_share = rng.choice((0.0, 0.02, 0.1))
    parts: list[str] = []
    size = 0
    while size < chars:
        roll = rng.random()
        if roll < cjk_share:
            alphabet = _CJK if rng.random() < 0.7 else _KANA
            piece = "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
        elif roll < cjk_share + special_share:
            piece = rng.choice(_SPECIAL)
        else:
            piece = rng.choice(_WORDS) + " "
        parts.append(piece)
        size += len(piece)
    return "".join(parts)[:chars]


def _between(rng: random.Random, low: int, high: int) -> int:
    """Log-uniform: as many short texts as long ones."""
    value: float = low * (high / low) ** rng.random()
    return round(value)


def conversation(
    rng: random.Random, model: str, turns: int = 60, stream: bool = False
) -> Iterator[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. " + mixed_text(rng, 200)}
    ]
    for turn in range(turns):
        messages.append({"role": "user", "content": mixed_text(rng, _between(rng, 10, 800))})
        yield {
            "model": model,
            "messages": list(messages),
            "max_tokens": 1024,
            "stream": stream if turn % 2 == 0 else not stream,
        }
        messages.append({"role": "assistant", "content": mixed_text(rng, _between(rng, 20, 1500))})


def tool_loop(
    rng: random.Random, model: str, steps: int = 40, stream: bool = False
) -> Iterator[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent. Use the tools."},
        {"role": "user", "content": "Find where the budget is reserved and explain it."},
    ]
    for step in range(steps):
        yield {
            "model": model,
            "messages": list(messages),
            "tools": TOOLS,
            "max_tokens": 2048,
            "stream": stream if step % 2 == 0 else not stream,
        }
        call_id = f"call_{step:04d}"
        name = rng.choice(("search_files", "read_file"))
        arguments = (
            f'{{"pattern": "{rng.choice(_WORDS)}", "path": "src/{rng.choice(_WORDS)}"}}'
            if name == "search_files"
            else f'{{"path": "src/{rng.choice(_WORDS)}/{rng.choice(_WORDS)}.py"}}'
        )
        messages.append(
            {
                "role": "assistant",
                "content": None if rng.random() < 0.7 else mixed_text(rng, 60),
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
            }
        )
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": mixed_text(rng, _between(rng, 20, 3000)),
            }
        )


def random_prompts(
    rng: random.Random, model: str, calls: int = 60, stream: bool = False
) -> Iterator[dict[str, Any]]:
    for call in range(calls):
        yield {
            "model": model,
            "messages": [{"role": "user", "content": mixed_text(rng, _between(rng, 10, 10_000))}],
            "max_tokens": rng.choice(_MAX_TOKENS),
            "stream": stream if call % 2 == 0 else not stream,
        }


WORKLOADS: dict[str, Workload] = {
    "conversation": conversation,
    "tool_loop": tool_loop,
    "random_prompts": random_prompts,
}
# How many calls each makes by default (the 60 turns and 40 steps).
WORKLOAD_CALLS = {"conversation": 60, "tool_loop": 40, "random_prompts": 60}


def bodies(name: str, model: str, *, seed: int = 0, stream: bool = False) -> list[dict[str, Any]]:
    """The request bodies of one workload, in order."""
    return list(WORKLOADS[name](random.Random(seed), model, WORKLOAD_CALLS[name], stream))
