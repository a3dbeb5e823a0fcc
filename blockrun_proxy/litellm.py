"""BlockRun as an in-process LiteLLM provider: ``register()``, then ``model="blockrun/<id>"``.

    from blockrun_proxy.litellm import register
    register()
    litellm.completion(model="blockrun/openai/gpt-5.5", messages=[...])

Install with the ``[litellm]`` extra. This is the only module that imports
litellm; the proxy never does. Calls go through the same payment core as the
proxy (``blockrun_proxy.inprocess``: Settings, Payer, Gateway), configured from
the same environment variables (``BLOCKRUN_WALLET_KEY``, ``BLOCKRUN_API_URL``,
``BLOCKRUN_PROXY_NETWORKS``, ``BLOCKRUN_PROXY_MAX_PRICE_USD``, ...), read at the
first call. Per call, ``api_base`` names another gateway and ``api_key="0x..."``
pays from another wallet.

Each call costs what the gateway settled; it is reported to LiteLLM as the
call's ``response_cost`` (the same number the proxy's ``x-litellm-response-cost``
header carries), so LiteLLM's spend tracking and budgets see real spend.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import httpx
import litellm
from litellm.litellm_core_utils.llm_response_utils.convert_dict_to_response import (
    convert_to_model_response_object,
)
from litellm.llms.custom_llm import CustomLLM, CustomLLMError
from litellm.types.utils import GenericStreamingChunk, ModelResponse

from blockrun_proxy.config import Settings
from blockrun_proxy.inprocess import CallError, Core, Reply, Stream

PROVIDER = "blockrun"
# Keys of LiteLLM's optional_params that configure the HTTP call, not the request body.
NOT_BODY = frozenset({"extra_body", "extra_headers", "extra_query", "max_retries", "stream"})

__all__ = ["PROVIDER", "BlockrunLLM", "register"]


class BlockrunLLM(CustomLLM):
    """The ``blockrun`` custom provider. ``register()`` installs one per process."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._core: Core | None = None
        self._lock = threading.Lock()

    @property
    def core(self) -> Core:
        with self._lock:
            if self._core is None:
                try:
                    settings = self._settings or Settings.from_env(os.environ)
                except ValueError as exc:
                    raise _error(400, str(exc)) from None
                self._core = Core(settings)
            return self._core

    def configure(self, settings: Settings | None) -> None:
        """Use ``settings`` (None: the environment, re-read) from the next call on."""
        with self._lock:
            core, self._core, self._settings = self._core, None, settings
        if core is not None:
            core.close()

    # --- LiteLLM's four entry points --------------------------------------------------------
    # The signatures are LiteLLM's (CustomLLM); only the arguments named here are used.

    def completion(
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Callable[..., Any],
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        client: Any = None,
    ) -> ModelResponse:
        core = self.core
        call = core.complete(
            _body(model, messages, optional_params, stream=False),
            api_url=api_base,
            wallet_key=api_key,
            headers=headers,
        )
        return _model_response(_raising(core.run, call), model_response)

    async def acompletion(
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Callable[..., Any],
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        client: Any = None,
    ) -> ModelResponse:
        core = self.core
        call = core.complete(
            _body(model, messages, optional_params, stream=False),
            api_url=api_base,
            wallet_key=api_key,
            headers=headers,
        )
        return _model_response(await _raising_async(core.run_async, call), model_response)

    def streaming(
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Callable[..., Any],
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        client: Any = None,
    ) -> Iterator[GenericStreamingChunk]:
        core = self.core
        # Opened here, not in the generator: a refused payment or a gateway error raises
        # from litellm.completion() itself, as it does for LiteLLM's own providers.
        call = core.open_stream(
            _body(model, messages, optional_params, stream=True),
            api_url=api_base,
            wallet_key=api_key,
            headers=headers,
        )
        stream = _raising(core.run, call)
        return _sync_chunks(core, stream)

    async def astreaming(  # type: ignore[override,misc]
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Callable[..., Any],
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        client: Any = None,
    ) -> AsyncIterator[GenericStreamingChunk]:
        # LiteLLM iterates what this returns without awaiting it first, so this must be an
        # async generator, and the call is made at the first chunk.
        core = self.core
        call = core.open_stream(
            _body(model, messages, optional_params, stream=True),
            api_url=api_base,
            wallet_key=api_key,
            headers=headers,
        )
        stream = await _raising_async(core.run_async, call)
        chunks = _ChunkMaker(stream)
        try:
            while (event := await _raising_async(core.run_async, stream.next_event())) is not None:
                for chunk in chunks.make(event):
                    yield chunk
            for chunk in chunks.finish():
                yield chunk
        finally:
            # Not awaited: this may run while the caller's task is being torn down.
            core.submit(_release(stream))


def register(settings: Settings | None = None) -> BlockrunLLM:
    """Add the ``blockrun`` provider to LiteLLM; idempotent. Returns the provider.

    Settings come from the environment at the first call unless given here;
    calling ``register(settings)`` again reconfigures the registered provider.
    """
    for entry in litellm.custom_provider_map:
        handler = entry.get("custom_handler")
        if entry.get("provider") == PROVIDER and isinstance(handler, BlockrunLLM):
            if settings is not None:
                handler.configure(settings)
            return handler
    handler = BlockrunLLM(settings)
    others = [e for e in litellm.custom_provider_map if e.get("provider") != PROVIDER]
    litellm.custom_provider_map = [*others, {"provider": PROVIDER, "custom_handler": handler}]
    return handler


# --- request ------------------------------------------------------------------------------


def _body(
    model: str, messages: list[Any], optional_params: Mapping[str, Any], *, stream: bool
) -> dict[str, Any]:
    """The Chat Completions body: every parameter LiteLLM passed, ``extra_body`` merged in."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    body.update((k, v) for k, v in optional_params.items() if k not in NOT_BODY)
    extra = optional_params.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    if stream:
        body["stream"] = True
        # Usage is what lets LiteLLM count tokens; it shows it to the caller only if
        # the caller asked for it (stream_options), whatever is requested here.
        body.setdefault("stream_options", {"include_usage": True})
    return body


# --- answers ------------------------------------------------------------------------------


def _model_response(reply: Reply, model_response: ModelResponse) -> ModelResponse:
    # The cost goes in as the response header LiteLLM reads from OpenAI-compatible
    # providers (``llm_provider-x-litellm-response-cost``), as if the proxy had answered.
    response = convert_to_model_response_object(
        response_object=reply.data,
        model_response_object=model_response,
        _response_headers=reply.headers,
    )
    assert isinstance(response, ModelResponse)
    return response


class _ChunkMaker:
    """``chat.completion.chunk`` dicts -> LiteLLM's GenericStreamingChunk, one choice (index 0)."""

    def __init__(self, stream: Stream) -> None:
        self._cost = stream.cost_usd
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None

    def make(self, event: Mapping[str, Any]) -> Iterator[GenericStreamingChunk]:
        usage = event.get("usage")
        if isinstance(usage, dict):
            # Held back to the end, where it also carries the cost.
            self._usage = usage
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = _dict(choice.get("delta"))
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finish_reason = finish
        content = delta.get("content")
        text = content if isinstance(content, str) else ""
        calls = [c for c in delta.get("tool_calls") or () if isinstance(c, dict)]
        if not text and not calls:
            return
        for i, call in enumerate(calls or [None]):
            yield GenericStreamingChunk(
                text=text if i == 0 else "",
                tool_use=_tool_call(call) if call is not None else None,
                is_finished=False,
                finish_reason="",
                usage=None,
                index=0,
            )

    def finish(self) -> Iterator[GenericStreamingChunk]:
        """The closing chunk: finish reason, usage, and the settled cost in ``usage.cost``."""
        usage: Any = None
        if self._usage is not None:
            usage = dict(self._usage)
            if self._cost is not None:  # None: the rail reports no cost (the API key)
                usage["cost"] = self._cost
        yield GenericStreamingChunk(
            text="",
            tool_use=None,
            is_finished=True,
            finish_reason=self._finish_reason or "stop",
            usage=usage,
            index=0,
        )


def _tool_call(call: Mapping[str, Any]) -> Any:
    function = _dict(call.get("function"))
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": function.get("name"), "arguments": function.get("arguments") or ""},
        "index": call.get("index", 0),
    }


def _sync_chunks(core: Core, stream: Stream) -> Iterator[GenericStreamingChunk]:
    chunks = _ChunkMaker(stream)
    try:
        while (event := _raising(core.run, stream.next_event())) is not None:
            yield from chunks.make(event)
        yield from chunks.finish()
    finally:
        core.submit(_release(stream))


async def _release(stream: Stream) -> None:
    stream.close()


# --- errors -------------------------------------------------------------------------------


def _raising(run: Callable[[Any], Any], call: Any) -> Any:
    try:
        return run(call)
    except CallError as exc:
        raise _litellm_error(exc) from None


async def _raising_async(run: Callable[[Any], Awaitable[Any]], call: Any) -> Any:
    try:
        return await run(call)
    except CallError as exc:
        raise _litellm_error(exc) from None


def _litellm_error(exc: CallError) -> CustomLLMError:
    # LiteLLM re-raises this as its own class for the status and keeps only the message,
    # which therefore says whether a payment was made (CallError adds that).
    return _error(exc.status, str(exc))


def _error(status: int, message: str) -> CustomLLMError:
    """LiteLLM maps CustomLLMError's status to its exception classes (402, 429, 502, ...)."""
    return CustomLLMError(status_code=status, message=message)  # type: ignore[no-untyped-call]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
