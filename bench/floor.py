"""The aiohttp floor: the least an aiohttp server + aiohttp client relay can do.

    python -m bench.floor --port 8001 --api-url http://127.0.0.1:8000/api [--client h1]

POST /v1/chat/completions is read, sent upstream as it came, and the answer is
piped back with the same readany/write loop as the proxy's pipe; nothing else:
no guard, no payment, no metrics, no logs. Its numbers, shown beside the proxy's
in the same run, split what the proxy costs into what aiohttp costs on this
machine and what the proxy adds on top. `--client h1` relays through the proxy's own
HTTP/1.1 client (blockrun_proxy/h1) instead of aiohttp's: the floor of the proxy as built.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

from blockrun_proxy import h1

CHAT_PATH = "/v1/chat/completions"
# Above any stream count the bench holds (slow_streams: 5,000), as the proxy's own pool and
# backlog are sized above its admission limit: a floor that queued streams behind a pool of
# 1,000 (or dropped SYNs past a backlog of 128) held fewer streams at once than it was
# divided by, and looked cheaper per stream than it is.
MAX_CONNECTIONS = 16384
BACKLOG = 16384


def make_app(api_url: str, client: str = "aiohttp") -> web.Application:
    upstream_url = api_url.rstrip("/") + CHAT_PATH
    session_key = web.AppKey("session", aiohttp.ClientSession)
    h1_key = web.AppKey("h1", h1.Client)
    headers = {"Content-Type": "application/json"}

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            app[session_key] = session
            app[h1_key] = h1.Client(h1.Limits(max_connections=MAX_CONNECTIONS))
            yield
            await app[h1_key].close()

    async def relay(
        request: web.Request, up: aiohttp.ClientResponse | h1.Response
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=up.status, headers={"Content-Type": up.headers.get("Content-Type", "")}
        )
        await resp.prepare(request)
        while chunk := await up.content.readany():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app[session_key].post(upstream_url, data=body, headers=headers) as up:
            return await relay(request, up)

    async def chat_h1(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with await request.app[h1_key].request("POST", upstream_url, headers, body) as up:
            return await relay(request, up)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post(CHAT_PATH, chat_h1 if client == "h1" else chat)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--client", choices=("aiohttp", "h1"), default="aiohttp")
    args = parser.parse_args()
    web.run_app(
        make_app(args.api_url, args.client),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=BACKLOG,
    )


if __name__ == "__main__":
    main()
