"""Running the app: bind, serve until SIGTERM/SIGINT, then stop accepting and drain.

The drain, in order (``drain``):

1. admission starts draining: ``/readyz`` answers 503, new requests get a 503
   ``proxy_draining`` with ``Connection: close``;
2. aiohttp's ``runner.cleanup`` closes the listening socket (new connections are
   refused), closes idle keep-alive connections, waits up to ``grace_seconds`` for
   in-flight handlers, streams included, then cancels what is left;
3. the upstream ClientSession closes (app cleanup) and ``serve`` returns: exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web

from blockrun_proxy.app import ADMISSION_KEY, LIMITS_KEY, PAYER_KEY, create_app
from blockrun_proxy.config import Settings
from blockrun_proxy.limits import Limits, raise_fd_limit
from blockrun_proxy.payer import Payer
from blockrun_proxy.wallet.watcher import watching
from blockrun_proxy.x402 import NETWORKS

log = logging.getLogger("blockrun_proxy")
# Sockets the process needs besides relayed streams: logs, the listener, DNS, models.
FD_MARGIN = 64


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
    site = web.TCPSite(
        runner,
        settings.host,
        settings.port,
        backlog=app[LIMITS_KEY].backlog,
        reuse_port=settings.reuse_port or None,
    )
    await site.start()
    port = runner.addresses[0][1]
    # The port is open: now load what signing needs (Keccak, the wallet address, the
    # domain separators) off the loop, so the first paid call does not pay for it.
    await asyncio.get_running_loop().run_in_executor(None, warm_up_signing, app[PAYER_KEY])
    try:
        yield runner, port
    finally:
        await drain(runner, settings.grace_seconds)


def warm_up_signing(payer: Payer) -> None:
    payer.address  # noqa: B018 (derives and caches it)
    for network in NETWORKS.values():
        network.domain_separator  # noqa: B018 (hashes and caches it)


async def drain(runner: web.AppRunner, grace_seconds: float) -> None:
    """Refuse new work, let in-flight requests finish for up to ``grace_seconds``, stop."""
    admission = runner.app[ADMISSION_KEY]
    admission.start_draining()
    started = time.monotonic()
    if admission.active or admission.queued:
        log.info(
            "draining: %d calls in flight, %d queued, up to %gs",
            admission.active,
            admission.queued,
            grace_seconds,
        )
    await runner.cleanup()
    log.info("stopped after draining for %.1fs", time.monotonic() - started)


async def serve(settings: Settings) -> None:
    _check_fd_limit(settings)
    async with contextlib.AsyncExitStack() as stack:
        if settings.demo:
            settings = await stack.enter_async_context(demo_gateway(settings))
        _, port = await stack.enter_async_context(running(settings))
        # --rpc-url: the wallet's balance, read in the background (--low-balance-usd warns).
        await stack.enter_async_context(watching(settings))
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        url = f"http://{host}:{port}/v1"
        # Tests and supervisors read the bound port from this line (--port 0).
        log.info(
            "blockrun-proxy listening on %s (gateway %s)",
            url,
            settings.api_url,
            extra={"fields": {"url": url}, "in_message": ("url",)},
        )
        if settings.demo:
            print_demo_help(settings.host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info(
            "shutting down: no new connections, draining for up to %gs", settings.grace_seconds
        )


def _check_fd_limit(settings: Settings) -> None:
    soft, _ = raise_fd_limit()
    limits = Limits.from_settings(settings)
    # A relayed stream holds two sockets (client, gateway); a queued call holds one.
    needed = 2 * limits.max_concurrent + limits.max_queue + FD_MARGIN
    if 0 <= soft < needed:
        log.warning(
            "open-files limit %d is below the %d that --max-concurrent %d needs; raise "
            "`ulimit -n` or lower --max-concurrent",
            soft,
            needed,
            settings.max_concurrent,
        )


@contextlib.asynccontextmanager
async def demo_gateway(settings: Settings) -> AsyncIterator[Settings]:
    """Start the fake x402 gateway in-process and a throwaway wallet to pay it."""
    import secrets

    from blockrun_proxy.testing import FakeGateway

    network = "eip155:84532"  # Base Sepolia: a testnet, and a fake gateway anyway
    # "fast" verification (its own digest + coincurve) spares the demo eth_account's
    # one-second import on the first paid call; tests verify with eth_account.
    gateway = FakeGateway(network=network, event_interval=0.05, verify="fast")
    api_url = await gateway.start(host="127.0.0.1", port=0)
    try:
        yield replace(
            settings,
            api_url=api_url,
            networks=(network,),
            wallet_key=secrets.token_hex(32),
            state_dir=None,  # a throwaway wallet's quotes and spend are not worth keeping
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
