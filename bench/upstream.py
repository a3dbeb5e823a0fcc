"""A minimal upstream the bench owns: free-model chat completions as SSE, nothing else.

It serves the gateway's paths, so a relay can point its --api-url here:

    python -m bench.upstream --port 8000 --events 100 --interval 0 --event-bytes 200 [--raw]

Two engines:
- aiohttp (default): pauses between events and honours backpressure; used for
  the 50 MB body of the slow-reader test.
- `--raw`: an asyncio.Protocol that answers every request with one precomputed
  chunked response (one chunk per event, like a gateway's SSE). It costs a few
  microseconds per request, so relay throughput measures the relay, not the
  upstream: the Python fake gateway saturates one core near the rate a relay reaches.
- `--raw --static`: the same events as one Content-Length body, written at once (a
  static file's shape): what a relay costs per request when the body is one piece.
- `--raw --paid`: a paid model's x402 exchange with precomputed answers: 402 with the
  fake gateway's challenge to a request without PAYMENT-SIGNATURE, 200 with its
  PAYMENT-RESPONSE to one with it. The answers are recorded once at start from a real
  exchange with the fake gateway (blockrun_proxy.testing) and the bench wallet; nothing
  is verified afterwards, so the paid scenario measures the relays, not the gateway's
  signature checks (the fake gateway's own rate is shown beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from aiohttp import web

CHAT_PATH = "/api/v1/chat/completions"
DONE = b"data: [DONE]\n\n"
BATCH_BYTES = 64 * 1024


def sse_frame(size: int) -> bytes:
    """One `data: {chunk}\\n\\n` frame padded with content to about `size` bytes."""
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": "nvidia/deepseek-v4-flash",
        "choices": [{"index": 0, "delta": {"content": ""}}],
    }
    compact = (",", ":")
    bare = len(b"data: " + json.dumps(chunk, separators=compact).encode() + b"\n\n")
    chunk["choices"][0]["delta"]["content"] = "x" * max(0, size - bare)  # type: ignore[index]
    return b"data: " + json.dumps(chunk, separators=compact).encode() + b"\n\n"


def make_app(events: int, interval: float, event_bytes: int) -> web.Application:
    frame = sse_frame(event_bytes)
    # Without pauses, frames go out in batches of about 64 KiB (one write when it all fits).
    per_batch = max(1, min(events, BATCH_BYTES // len(frame)))
    batch = frame * per_batch

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        if interval > 0:
            for _ in range(events):
                await resp.write(frame)
                await asyncio.sleep(interval)
        else:
            full, rest = divmod(events, per_batch)
            for _ in range(full):
                await resp.write(batch)
            if rest:
                await resp.write(frame * rest)
        await resp.write(DONE)
        await resp.write_eof()
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_get("/healthz", healthz)
    return app


def chunked_sse_response(frame: bytes, events: int) -> bytes:
    """A whole HTTP/1.1 200 response: `events` chunks of `frame`, [DONE], the last chunk."""
    chunk = b"%x\r\n%s\r\n" % (len(frame), frame)
    done = b"%x\r\n%s\r\n" % (len(DONE), DONE)
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head + chunk * events + done + b"0\r\n\r\n"


def static_sse_response(frame: bytes, events: int) -> bytes:
    """The same body as `chunked_sse_response`, as one Content-Length body."""
    body = frame * events + DONE
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    return head + body


_HEALTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
_HEALTH += b'{"status": "ok"}'
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class RawUpstream(asyncio.Protocol):
    """Keep-alive HTTP/1.1 with the least parsing that works for POST and GET.

    `paid_response`: when set, a chat request carrying PAYMENT-SIGNATURE gets it and any
    other gets `chat_response` (then the 402 challenge).
    """

    def __init__(self, chat_response: bytes, paid_response: bytes | None = None) -> None:
        self._chat = chat_response
        self._paid = paid_response
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (reply := self._next_request()) is not None:
            assert self._transport is not None
            self._transport.write(reply)

    def _next_request(self) -> bytes | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self._buf[:end].lower()
        start = end + 4
        if b"transfer-encoding: chunked" in head:
            last = self._buf.find(b"0\r\n\r\n", start)
            if last < 0:
                return None
            total = last + 5
        else:
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end >= 0 else None])
            total = start + length
        if len(self._buf) < total:
            return None
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        self._buf = self._buf[total:]
        if path == CHAT_PATH.encode():
            if self._paid is not None and b"\r\npayment-signature:" in head:
                return self._paid
            return self._chat
        return _HEALTH if path == b"/healthz" else _NOT_FOUND


def raw_response(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.1 response with a Content-Length body; hop-by-hop headers dropped."""
    skip = {"content-length", "transfer-encoding", "connection", "date", "server", "keep-alive"}
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in skip]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def record_paid_exchange(body: bytes) -> tuple[bytes, bytes]:
    """The fake gateway's 402 for `body` unpaid, and its 200 once the bench wallet paid
    (through the proxy's own payment core, as the proxy would pay it)."""
    from decimal import Decimal

    import aiohttp

    from bench.procs import BENCH_NETWORK, BENCH_PAY_TO, BENCH_WALLET_KEY
    from blockrun_proxy.config import Settings
    from blockrun_proxy.core import open_core
    from blockrun_proxy.testing import FakeGateway

    gateway = FakeGateway(network=BENCH_NETWORK, pay_to=BENCH_PAY_TO, verify="fast")
    api_url = await gateway.start()
    headers = {"Content-Type": "application/json"}
    settings = Settings(
        api_url=api_url,
        wallet_key=BENCH_WALLET_KEY,
        networks=(BENCH_NETWORK,),
        max_price_usd=Decimal(1),
        state_dir=None,
    )
    try:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.post(f"{api_url}/v1/chat/completions", data=body, headers=headers) as r,
        ):
            challenge = raw_response(
                r.status, r.reason or "", list(r.headers.items()), await r.read()
            )
        async with open_core(settings, record_spend=False) as core:
            paid = await core.gateway.send_chat(body, {}, "bench")
            async with paid.response as r:
                answer = raw_response(
                    r.status, r.reason or "", list(r.headers.items()), await r.read()
                )
    finally:
        await gateway.close()
    if b" 402 " not in challenge.split(b"\r\n", 1)[0] or b"PAYMENT-RESPONSE" not in answer:
        raise RuntimeError("the fake gateway did not answer 402 then a paid 200")
    return challenge, answer


async def serve_raw(
    port: int,
    events: int,
    event_bytes: int,
    *,
    static: bool = False,
    paid_body: bytes | None = None,
) -> None:
    shape = static_sse_response if static else chunked_sse_response
    response = shape(sse_frame(event_bytes), events)
    paid = None
    if paid_body is not None:
        response, paid = await record_paid_exchange(paid_body)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RawUpstream(response, paid), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--event-bytes", type=int, default=200)
    parser.add_argument("--raw", action="store_true", help="precomputed replies, no pauses")
    parser.add_argument(
        "--static", action="store_true", help="with --raw: one Content-Length body, not chunks"
    )
    parser.add_argument(
        "--paid-body", help="with --raw: answer this chat body's paid exchange (402, then 200)"
    )
    args = parser.parse_args()
    if args.raw:
        paid_body = args.paid_body.encode() if args.paid_body else None
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve_raw(
                    args.port,
                    args.events,
                    args.event_bytes,
                    static=args.static,
                    paid_body=paid_body,
                )
            )
        return
    app = make_app(args.events, args.interval, args.event_bytes)
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
