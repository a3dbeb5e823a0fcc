"""Server-sent ``chat.completion.chunk`` frames, built cheaply.

Benchmarks push thousands of frames per second through the fake, so the part
every chunk shares (id, created, model) is serialized once per stream and each
frame is a few byte concatenations around one small ``orjson.dumps``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from blockrun_proxy.testing._replies import Answer, count_tokens, usage

DONE = b"data: [DONE]\n\n"


def split_evenly(text: str, pieces: int, piece_size: int | None) -> list[str]:
    """``text`` cut into ``pieces`` non-empty slices, padded with trailing spaces.

    Padding keeps the count exact for short texts and makes each slice about
    ``piece_size`` characters for benchmarks. Trailing spaces are harmless in
    prose and still valid JSON in tool arguments.
    """
    if pieces <= 0:
        return []
    text = text.ljust(max(pieces, pieces * (piece_size or 0)))
    size = len(text)
    return [text[size * i // pieces : size * (i + 1) // pieces] for i in range(pieces)]


class ChunkWriter:
    def __init__(self, completion_id: str, created: int, model: str) -> None:
        envelope = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )
        self._envelope = envelope[:-1]  # drop "}" so choices can follow
        self._choice_head = b"data: " + self._envelope + b',"choices":[{"index":0,"delta":'

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        finish = b"null" if finish_reason is None else orjson.dumps(finish_reason)
        return self._choice_head + orjson.dumps(delta) + b',"finish_reason":' + finish + b"}]}\n\n"

    def usage(self, body: dict[str, int]) -> bytes:
        return (
            b"data: " + self._envelope + b',"choices":[],"usage":' + orjson.dumps(body) + b"}\n\n"
        )


def frames(
    writer: ChunkWriter,
    answer: Answer,
    *,
    events: int,
    event_size: int | None,
    prompt_tokens: int,
    include_usage: bool,
) -> Iterator[bytes]:
    """Role chunk, ``events`` content (or tool-argument) chunks, finish, usage?, [DONE].

    A generator, so a long benchmark stream never holds all its frames at once.
    """
    call = answer.tool_call
    if call is None:
        yield writer.delta({"role": "assistant", "content": ""})
        pieces = split_evenly(answer.text or "", events, event_size)
        for piece in pieces:
            yield writer.delta({"content": piece})
    else:
        yield writer.delta({"role": "assistant", "content": None})
        # At least one piece: the first tool chunk carries the id and name.
        pieces = split_evenly(call.arguments, max(events, 1), event_size)
        head = {"index": 0, "id": call.id, "type": "function"}
        for i, piece in enumerate(pieces):
            if i == 0:
                tool = {**head, "function": {"name": call.name, "arguments": piece}}
            else:
                tool = {"index": 0, "function": {"arguments": piece}}
            yield writer.delta({"tool_calls": [tool]})
    yield writer.delta({}, answer.finish_reason)
    if include_usage:
        yield writer.usage(usage(prompt_tokens, count_tokens("".join(pieces))))
    yield DONE
