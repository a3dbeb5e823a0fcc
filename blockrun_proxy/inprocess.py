"""The proxy's payment core, driven from inside another program (no HTTP hop).

The LiteLLM provider (``blockrun_proxy.litellm``) sits on this; nothing here
imports litellm. It runs exactly what the proxy runs: the payment core opened by
``core.open_core`` (the same session settings, payer, budget, quote book, so it signs
up front like the proxy), the request guard (``parse_chat_request``), the request-id
rule (``exchange.request_id_from``), and ``Gateway.send_chat`` with its
one-nonce-per-call rules.

All network I/O runs on one private event loop in a daemon thread, started on
first use. Sync callers block on a future; async callers await it from their own
loop without blocking it. One loop means one aiohttp session and one connection
pool for the whole process, whatever loops or threads the callers use, and no
session is ever left bound to a caller's loop that has since closed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson

from blockrun_proxy import h1
from blockrun_proxy.chatbody import parse_chat_request
from blockrun_proxy.config import Settings
from blockrun_proxy.core import PaymentCore, log_rail, open_core
from blockrun_proxy.costs import cost_headers
from blockrun_proxy.errors import PAID_FAILURE_STATUS, GatewayAnswer, PaidCallFailed, ProxyError
from blockrun_proxy.exchange import request_id_from
from blockrun_proxy.pipe import BodyFilter
from blockrun_proxy.sse import DONE, SSEDecoder
from blockrun_proxy.upstream import Answer, Gateway, read_small_body

log = logging.getLogger(__name__)

T = TypeVar("T")

# Wallets seen through per-call keys; each keeps a Payer (and so its key) in memory.
MAX_CACHED_GATEWAYS = 32
PAID_NOTE = " A payment was made for this call: retrying it is a new paid call."


class CallError(Exception):
    """A failed call, with the HTTP status the proxy would have answered.

    ``paid`` is true when a payment was sent for the call; the status is then
    ``424``, as from the proxy, so that LiteLLM's Router does not retry it into a
    second payment. Messages never contain key material.
    """

    def __init__(self, status: int, message: str, *, code: str | None, paid: bool) -> None:
        super().__init__(message.rstrip(". ") + "." + PAID_NOTE if paid else message)
        self.status = status
        self.code = code
        self.paid = paid


@dataclass(slots=True)
class Reply:
    """A complete (non-streamed) answer: the parsed body and the cost headers."""

    data: dict[str, Any]
    headers: dict[str, str]
    cost_usd: float | None  # None: the rail reports no cost (the API key)


@dataclass(slots=True)
class Stream:
    """An open streamed answer. Read events with ``next_event`` on the core's loop."""

    answer: Answer
    headers: dict[str, str]
    cost_usd: float | None  # None: the rail reports no cost (the API key)
    _decoder: SSEDecoder = field(default_factory=SSEDecoder)
    _pending: list[str] = field(default_factory=list)
    _done: bool = False
    # The API-key rail's redaction of the key from the host's bytes, if this rail has one.
    _redactor: BodyFilter | None = None

    def __post_init__(self) -> None:
        if self.answer.redactor is not None:
            self._redactor = self.answer.redactor()

    async def next_event(self) -> dict[str, Any] | None:
        """The next ``chat.completion.chunk`` as a dict, or None at the end."""
        while True:
            data = await self._next_data()
            if data is None or data == DONE:
                self._pending.clear()
                self._done = True
                self.close()
                return None
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                log.warning("skipping a stream event that is not JSON (%d bytes)", len(data))
                continue
            if isinstance(event, dict):
                return event

    async def _next_data(self) -> str | None:
        while not self._pending:
            if self._done:
                return None
            try:
                chunk = await self.answer.response.content.readany()
            except (aiohttp.ClientError, h1.HTTPError, asyncio.TimeoutError) as exc:
                self.close()
                raise CallError(
                    _failure_status(self.answer),
                    f"the gateway's stream broke midway ({type(exc).__name__})",
                    code="stream_broken",
                    paid=self.answer.payment is not None,
                ) from None
            redactor = self._redactor
            if chunk:
                self._pending.extend(
                    self._decoder.feed(redactor.feed(chunk) if redactor else chunk)
                )
            else:
                if redactor is not None:
                    self._pending.extend(self._decoder.feed(redactor.flush()))
                self._pending.extend(self._decoder.close())
                self._done = True
        return self._pending.pop(0)

    def close(self) -> None:
        self.answer.response.release()


class Core:
    """One process-wide payment core (core.py's, opened on a private loop thread), and
    gateways for the wallets and gateway URLs that calls name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._payment: PaymentCore | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._opening: asyncio.Lock | None = None  # made on the core's loop
        # Keyed by (gateway URL, SHA-256 of the wallet key): the key itself is never a key here.
        self._gateways: OrderedDict[tuple[str, str], Gateway] = OrderedDict()

    # --- the private loop ----------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="blockrun-proxy-inprocess", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                atexit.register(self.close)
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._running_loop())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the core's loop and wait for it (for sync callers)."""
        if self._thread is not None and threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Core.run called from the core's own loop thread")
        return self.submit(coro).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` running on the core's loop from any other loop.

        Cancelling the caller cancels the work on the core's loop too (the
        future's cancellation is forwarded), which closes the upstream request.
        """
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        """Close the session and stop the loop thread; the next call starts them again."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close_session(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
        atexit.unregister(self.close)

    async def _close_session(self) -> None:
        stack, self._stack, self._payment = self._stack, None, None
        self._gateways.clear()
        if stack is not None:
            await stack.aclose()

    # --- the payment core and gateways per wallet ------------------------------------------

    async def payment_core(self) -> PaymentCore:
        """The core, opened on first use (on the core's loop)."""
        if self._payment is not None:
            return self._payment
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._payment is None:
                stack = contextlib.AsyncExitStack()
                try:
                    self.settings.check()
                    self._payment = await stack.enter_async_context(
                        open_core(self.settings, record_spend=False)
                    )
                    log_rail(self.settings, self._payment.payer)
                except ValueError as exc:
                    # Written by us and never echoing the key (a wallet key that does not parse).
                    raise CallError(400, str(exc), code=None, paid=False) from None
                self._stack = stack
        assert self._payment is not None
        return self._payment

    async def _gateway(self, api_url: str | None, wallet_key: str | None) -> Gateway:
        core = await self.payment_core()
        root = _gateway_root(api_url) if api_url else None
        if (root is None or root == core.settings.api_url.rstrip("/")) and not wallet_key:
            return core.gateway
        key_id = hashlib.sha256((wallet_key or "").encode()).hexdigest()
        cache_key = (root or core.settings.api_url, key_id)
        gateway = self._gateways.get(cache_key)
        if gateway is None:
            try:
                gateway = core.gateway_for(root, wallet_key)
            except ValueError as exc:
                # Both messages are written by us and never echo the key.
                status = 401 if wallet_key else 400
                raise CallError(status, str(exc), code=None, paid=False) from None
            self._gateways[cache_key] = gateway
            while len(self._gateways) > MAX_CACHED_GATEWAYS:
                self._gateways.popitem(last=False)
        else:
            self._gateways.move_to_end(cache_key)
        return gateway

    # --- calls (coroutines for the core's loop) -----------------------------------------------

    async def complete(
        self,
        request: Mapping[str, Any],
        *,
        api_url: str | None = None,
        wallet_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        answer, request_id = await self._send(request, api_url, wallet_key, headers)
        async with answer.response as response:
            await _raise_for_status(answer)
            body = redacted(answer, await response.read())
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise CallError(
                _failure_status(answer),
                "the gateway's answer is not JSON",
                code="bad_gateway_answer",
                paid=answer.payment is not None,
            ) from None
        return Reply(data, _headers(answer, request_id), _cost(answer))

    async def open_stream(
        self,
        request: Mapping[str, Any],
        *,
        api_url: str | None = None,
        wallet_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Stream:
        answer, request_id = await self._send(request, api_url, wallet_key, headers)
        try:
            await _raise_for_status(answer)
        except BaseException:
            answer.response.release()
            raise
        return Stream(answer, _headers(answer, request_id), _cost(answer))

    async def _send(
        self,
        request: Mapping[str, Any],
        api_url: str | None,
        wallet_key: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[Answer, str]:
        """The gateway's answer, and the request id it was sent with."""
        gateway = await self._gateway(api_url, wallet_key)
        raw = orjson.dumps(request, default=_jsonable)
        try:
            chat = parse_chat_request(raw, default_max_tokens=self.settings.default_max_tokens)
            client_headers = dict(headers or {})
            # The proxy's rule: a client's id only if it is a sane one, else a fresh one.
            request_id = request_id_from(client_headers.get("x-request-id"))
            answer = await gateway.send_chat(chat.body, client_headers, request_id, chat=chat)
            return answer, request_id
        except ProxyError as exc:
            raise _call_error(exc) from None


def _gateway_root(api_url: str) -> str:
    """The gateway base URL from a LiteLLM-style ``api_base`` (which may end in ``/v1``)."""
    root = api_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _jsonable(value: object) -> object:
    """orjson's fallback: pydantic objects LiteLLM may leave in messages become dicts."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    raise TypeError(f"cannot send a {type(value).__name__} to the gateway")


def _cost(answer: Answer) -> float | None:
    if answer.rail_cost_headers is not None:
        return None  # a rail that reports no cost: none is invented (costs.py)
    paid = answer.paid_atomic
    return 0.0 if paid is None else paid / 1_000_000


def _headers(answer: Answer, request_id: str) -> dict[str, str]:
    headers = cost_headers(answer)
    headers["x-request-id"] = request_id
    return headers


async def _raise_for_status(answer: Answer) -> None:
    """An error answer the gateway sent before any payment (the proxy pipes these)."""
    if answer.response.status < 400:
        return
    body = redacted(answer, await read_small_body(answer.response))
    message, code = _error_of(body)
    raise CallError(
        answer.response.status,
        message or f"the gateway answered {answer.response.status}",
        code=code,
        paid=answer.payment is not None,
    )


def redacted(answer: Answer, body: bytes) -> bytes:
    """``body`` as a client may see it: on the API-key rail, without the key."""
    if answer.redactor is None:
        return body
    redactor = answer.redactor()
    return redactor.feed(body) + redactor.flush()


def _failure_status(answer: Answer) -> int:
    """The status of a failure of an answer already received: 424 once it was paid for,
    as the proxy answers every failure after a payment (a 5xx would be retried)."""
    return PAID_FAILURE_STATUS if answer.payment is not None else 502


def _call_error(exc: ProxyError) -> CallError:
    paid = isinstance(exc, PaidCallFailed)
    message = exc.message
    if isinstance(exc, GatewayAnswer):
        message = _error_of(exc.body)[0] or message
    return CallError(exc.status, message, code=exc.code, paid=paid)


def _error_of(body: bytes) -> tuple[str | None, str | None]:
    """``(message, code)`` of an OpenAI-shaped error body, as far as it has them."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code")
        return (
            message if isinstance(message, str) else None,
            code if isinstance(code, str) else None,
        )
    return (error if isinstance(error, str) else None), None
