"""Running the app: bind, serve until SIGTERM/SIGINT, then stop accepting and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web

from blockrun_proxy.app import create_app
from blockrun_proxy.config import Settings

log = logging.getLogger("blockrun_proxy")


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[web.AppRunner, int]]:
    """Serve ``settings`` until the block exits; yields the runner and the bound port."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        # A client that hangs up cancels its handler at once, which closes the upstream
        # request; without it a disconnect is noticed only at the next write.
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=settings.grace_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=2048)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield runner, port
    finally:
        await runner.cleanup()


async def serve(settings: Settings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if settings.demo:
            settings = await stack.enter_async_context(demo_gateway(settings))
        _, port = await stack.enter_async_context(running(settings))
        log.info(
            "blockrun-proxy listening on http://%s:%d/v1 (gateway %s)",
            settings.host,
            port,
            settings.api_url,
        )
        if settings.demo:
            print_demo_help(settings.host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info(
            "shutting down: no new connections, draining for up to %.0fs", settings.grace_seconds
        )


@contextlib.asynccontextmanager
async def demo_gateway(settings: Settings) -> AsyncIterator[Settings]:
    """Start the fake x402 gateway in-process and a throwaway wallet to pay it."""
    import secrets

    from blockrun_proxy.testing import FakeGateway

    network = "eip155:84532"  # Base Sepolia: a testnet, and a fake gateway anyway
    gateway = FakeGateway(network=network, event_interval=0.05)
    api_url = await gateway.start(host="127.0.0.1", port=0)
    try:
        yield replace(
            settings,
            api_url=api_url,
            networks=(network,),
            wallet_key=secrets.token_hex(32),
        )
    finally:
        await gateway.close()


def print_demo_help(host: str, port: int) -> None:
    base = f"http://{host}:{port}/v1"
    print(
        f"\nDemo mode: a fake x402 gateway runs in this process and a throwaway wallet pays it.\n"
        f"Try a paid, streamed completion:\n\n"
        f"  curl -N {base}/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "openai/gpt-5.5", "stream": true, '
        f'"messages": [{{"role": "user", "content": "Hello"}}]}}\'\n',
        flush=True,
    )
