"""What the fake model says, and the OpenAI-shaped JSON around it.

Everything is a pure function of the request body so tests can predict it:
the answer echoes the last user message, or calls the first tool with an
argument that echoes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

ECHO_PREFIX = "echo: "
ECHO_LIMIT = 256  # characters of the user message kept in the answer
DEFAULT_TOOL_NAME = "tool"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document, as OpenAI sends it


@dataclass(frozen=True)
class Answer:
    text: str | None
    tool_call: ToolCall | None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_call else "stop"


def last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
    return ""


def _chosen_tool(body: Mapping[str, Any]) -> str | None:
    """The tool the model 'decides' to call: the forced one, else the first; None for none."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        forced = choice.get("function")
        if isinstance(forced, dict) and isinstance(forced.get("name"), str):
            return str(forced["name"])
    first = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = first.get("name") if isinstance(first, dict) else None
    return name if isinstance(name, str) else DEFAULT_TOOL_NAME


def echo_output(heard: str, *, tool_called: bool) -> str:
    """What the fake model outputs for ``heard``, whatever API it speaks (what its output
    tokens count): the echo, or a tool call's JSON arguments echoing it."""
    return orjson.dumps({"echo": heard}).decode() if tool_called else ECHO_PREFIX + heard


def answer_for(body: Mapping[str, Any], call_id: str, limit: int = ECHO_LIMIT) -> Answer:
    said = last_user_text(body)[:limit]
    tool = _chosen_tool(body)
    if tool is None:
        return Answer(echo_output(said, tool_called=False), None)
    return Answer(None, ToolCall(call_id, tool, echo_output(said, tool_called=True)))


def count_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / 4)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    completion_id: str, created: int, model: str, answer: Answer, prompt_tokens: int
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    produced = answer.text or ""
    if answer.tool_call:
        call = answer.tool_call
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ]
        produced = call.arguments
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
        "usage": usage(prompt_tokens, count_tokens(produced)),
    }


def json_response(
    status: int, payload: object, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def error_response(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OpenAI-shaped error: ``{"error": {message, type, code, param}}``."""
    error = {"message": message, "type": type_, "code": code, "param": param}
    return json_response(status, {"error": error}, headers)
