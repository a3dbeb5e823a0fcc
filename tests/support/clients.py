"""Shared by the real-client tests: README snippets, a LiteLLM cost recorder, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from blockrun_proxy.app import CORE_KEY
from blockrun_proxy.config import Settings
from blockrun_proxy.routes import ROUTES
from blockrun_proxy.server import running
from blockrun_proxy.testing import FakeGateway, Misbehavior
from support.calls import TEST_NETWORK

README = Path(__file__).resolve().parents[2] / "README.md"
# The address the README's examples use; tests swap in their own proxy's. OpenAI clients
# take the /v1 base URL, the Anthropic and Google SDKs the root (they add their own paths).
README_ROOT = "http://127.0.0.1:4001"
README_BASE_URL = README_ROOT + "/v1"


def snippet(name: str) -> str:
    """The code block right after ``<!-- snippet: name -->`` in README.md."""
    text = README.read_text()
    found = re.search(
        rf"<!-- snippet: {re.escape(name)} -->\s*```[a-z]*\n(.*?)```", text, flags=re.DOTALL
    )
    if found is None:
        raise LookupError(f"README.md has no snippet {name!r}")
    return found.group(1)


def run_snippet(name: str, base_url: str, **namespace: Any) -> list[str]:
    """Execute a README Python snippet against ``base_url`` (the proxy's root, or its
    ``/v1`` base URL: the snippet's own root is swapped for the proxy's); returns what it
    printed.

    Blocking: call it through ``asyncio.to_thread`` when the servers share the loop.
    """
    code = snippet(name).replace(README_ROOT, base_url.removesuffix("/v1"))
    printed: list[str] = []

    def fake_print(*args: object, **kwargs: Any) -> None:
        printed.append(" ".join(str(a) for a in args))

    exec(compile(code, f"README.md:{name}", "exec"), {"print": fake_print, **namespace})
    return printed


class WireLog:
    """What an SDK's HTTP client received: every response body's bytes as they came off
    the wire (before any content decoding), one entry per response, in order. Lets a test
    compare what a real client read with ``FakeGateway.sent_bodies``.

    ``http`` is the client library the SDK takes its clients from: ``httpx`` (openai,
    google-genai) or ``httpx2`` (anthropic), which share one API.
    """

    def __init__(self) -> None:
        self.bodies: list[bytearray] = []

    def client(self, http: Any = httpx, **kwargs: Any) -> Any:
        return http.Client(transport=_sync_tee(http, self), **kwargs)

    def async_client(self, http: Any = httpx, **kwargs: Any) -> Any:
        return http.AsyncClient(transport=_async_tee(http, self), **kwargs)

    def _body(self) -> bytearray:
        body = bytearray()
        self.bodies.append(body)
        return body


def _sync_tee(http: Any, log: WireLog) -> Any:
    inner = http.HTTPTransport()

    class Tee(http.BaseTransport):  # type: ignore[misc]
        def handle_request(self, request: Any) -> Any:
            response = inner.handle_request(request)
            body, stream = log._body(), response.stream

            class Teed(http.SyncByteStream):  # type: ignore[misc]
                def __iter__(self) -> Iterator[bytes]:
                    for chunk in stream:
                        body.extend(chunk)
                        yield chunk

                def close(self) -> None:
                    stream.close()

            return _with_stream(http, response, Teed(), request)

        def close(self) -> None:
            inner.close()

    return Tee()


def _with_stream(http: Any, response: Any, stream: Any, request: Any) -> Any:
    """``response`` as httpx returned it, its body read through ``stream`` instead."""
    return http.Response(
        response.status_code,
        headers=response.headers,
        stream=stream,
        extensions=response.extensions,
        request=request,
    )


def _async_tee(http: Any, log: WireLog) -> Any:
    inner = http.AsyncHTTPTransport()

    class Tee(http.AsyncBaseTransport):  # type: ignore[misc]
        async def handle_async_request(self, request: Any) -> Any:
            response = await inner.handle_async_request(request)
            body, stream = log._body(), response.stream

            class Teed(http.AsyncByteStream):  # type: ignore[misc]
                async def __aiter__(self) -> AsyncIterator[bytes]:
                    async for chunk in stream:
                        body.extend(chunk)
                        yield chunk

                async def aclose(self) -> None:
                    await stream.aclose()

            return _with_stream(http, response, Teed(), request)

        async def aclose(self) -> None:
            await inner.aclose()

    return Tee()


@dataclass(frozen=True)
class PaidFailure:
    """A call that fails after its payment was sent, and what the gateway did.

    The proxy answers all of them ``424`` with ``x-should-retry: false``; with its
    default retry settings, no client may turn one into a second payment.
    """

    name: str
    knob: str  # the Misbehavior switch that causes it
    paid_replays: int  # the proxy's replays of the same signature (Settings.paid_replays)
    upstream_status: str  # x-blockrun-upstream-status: what the gateway answered last
    settled: int  # payments the gateway settled for the call

    def __str__(self) -> str:
        return self.name

    def arm(self, gateway: FakeGateway) -> None:
        # Only the first paid send fails after settling: a client's retry would be paid.
        setattr(gateway.misbehave, self.knob, True if self.knob == "replay_on_paid" else 1)

    def assert_paid_once(self, gateway: FakeGateway) -> None:
        """One signed authorization for the whole call, whatever the client did."""
        nonces = {p.nonce for p in gateway.payments}
        assert len(nonces) == 1, f"{len(nonces)} authorizations signed for one call"
        assert len(gateway.settled) == self.settled
        assert len([r for r in gateway.chat_requests if r.payment is None]) == 1  # one probe


PAID_FAILURES = [
    # Settled, then a 500 the proxy passes on (no replays).
    PaidFailure("settled-then-500", "fail_after_settle", 0, "500", 1),
    # Settled, then a 500; the proxy's replay of the same signature is told it was used.
    PaidFailure("settled-then-replayed", "fail_after_settle", 2, "409", 1),
    # The gateway says the authorization was already used (PAYMENT_REPLAY).
    PaidFailure("payment-replay", "replay_on_paid", 2, "409", 0),
]


class CostLog:
    """A LiteLLM callback that keeps the ``response_cost`` LiteLLM recorded per call.

    It records only while ``armed`` (during a test that asked for it), so a late
    callback from another test cannot leak into the list.
    """

    def __init__(self) -> None:
        from litellm.integrations.custom_logger import CustomLogger

        self.costs: list[float | None] = []
        self.armed = False
        log = self

        class Recorder(CustomLogger):  # type: ignore[misc]
            def log_success_event(
                self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
            ) -> None:
                log.record(kwargs.get("response_cost"))

            async def async_log_success_event(
                self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
            ) -> None:
                log.record(kwargs.get("response_cost"))

        self.callback = Recorder()

    def record(self, cost: float | None) -> None:
        if self.armed:
            self.costs.append(cost)


def usd(atomic: int) -> float:
    return atomic / 1_000_000


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for LiteLLM's logging callbacks, which run after the call has returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class BackgroundStack:
    """A fake gateway and a proxy in front of it, served from their own loop thread.

    For fixtures that outlive one test's event loop (the LiteLLM Proxy subprocess is
    started once per module). Read ``gateway``'s records from the test after a call
    has returned; ``reset`` between tests.
    """

    def __init__(self, wallet_key: str, **overrides: Any) -> None:
        self.gateway = FakeGateway(network=TEST_NETWORK)
        self._wallet_key = wallet_key
        self._overrides = overrides
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.url = ""
        self.base_url = ""
        self._quotes: Any = None  # the running proxy's QuoteBook

    def start(self) -> BackgroundStack:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        api_url = await self.gateway.start()
        self._stack.push_async_callback(self.gateway.close)
        settings = Settings(
            host="127.0.0.1",
            port=0,
            api_url=api_url,
            networks=(TEST_NETWORK,),
            wallet_key=self._wallet_key,
            grace_seconds=1.0,
            state_dir=None,  # tests never write under the user's home
            **self._overrides,
        )
        runner, port = await self._stack.enter_async_context(running(settings))
        self._quotes = runner.app[CORE_KEY].quotes
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"

    def reset(self) -> None:
        """Between tests: a well-behaved gateway with empty records, and a proxy that
        signs nothing up front until it has seen the gateway's prices again (each test
        starts from a cold call, whatever the module's earlier tests taught it)."""
        gw = self.gateway
        gw.misbehave = Misbehavior()
        for records in (gw.requests, gw.sent_bodies, gw.payments, gw.settled):
            records.clear()
        asyncio.run_coroutine_threadsafe(self._forget_quotes(), self._loop).result(timeout=10)

    async def _forget_quotes(self) -> None:
        for route in ROUTES:
            for model in self.gateway.models:
                self._quotes.forget(model, route.label)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
