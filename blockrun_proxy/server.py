"""Running the app: bind, serve until SIGTERM/SIGINT, then stop accepting and drain.

The drain, in order (``drain``):

1. admission starts draining: ``/readyz`` answers 503, new requests get a 503
   ``proxy_draining`` with ``Connection: close``;
2. the listening socket closes (new connections are refused) and idle keep-alive
   connections are closed;
3. in-flight requests, streams included, run for up to ``grace_seconds``;
4. the connections still open are closed: that cancels their handlers
   (``handler_cancellation``), which close their upstream calls;
5. ``runner.cleanup`` closes the payment core and its upstream session, with nothing left
   to wait for, and ``serve`` returns: exit 0.

Left to aiohttp alone, the cleanup waited the grace for handlers and then up to the grace
again for the ones it had cancelled (``--grace-seconds 2`` exited after 4.1 s). Here the
grace bounds the whole exit: step 3 ends ``EXIT_RESERVE_SECONDS`` early, which is what
steps 4-5, stopping the log writer and the interpreter's own exit take (measured: 0.15 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from aiohttp import web

from blockrun_proxy.app import (
    ADMISSION_KEY,
    BALANCE_KEY,
    CORE_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    create_app,
)
from blockrun_proxy.config import DEFAULT_MAX_TOKENS, Settings
from blockrun_proxy.connections import ClientConnections, ClientSite, protocol_factory
from blockrun_proxy.core import log_rail
from blockrun_proxy.keyguard import forbid_core_dumps
from blockrun_proxy.limits import Limits, raise_fd_limit
from blockrun_proxy.rails import Rails
from blockrun_proxy.x402 import NETWORKS, usd

if TYPE_CHECKING:
    from blockrun_proxy.wallet.watcher import BalanceWatcher

log = logging.getLogger("blockrun_proxy")
# What aiohttp's own shutdown may still wait, after the drain has cut every connection,
# for a handler that ignores its cancellation (it waits up to this twice). Not 0: aiohttp
# reads 0 as "no limit".
CUT_SECONDS = 0.5
# The end of the grace kept for closing connections and the process exit (a tenth of a
# short grace).
EXIT_RESERVE_SECONDS = 0.25


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[web.AppRunner, int]]:
    """Serve ``settings`` until the block exits; yields the runner and the bound port."""
    app = create_app(settings)
    limits = app[LIMITS_KEY]
    runner = web.AppRunner(
        app,
        # A client that hangs up cancels its handler at once, which closes the upstream
        # request; without it a disconnect is noticed only at the next write.
        handler_cancellation=True,
        access_log=None,
        # The grace itself is spent in drain(); this bounds what aiohttp waits after it.
        shutdown_timeout=CUT_SECONDS,
    )
    await runner.setup()
    connections = ClientConnections(limits.max_connections, settings.headers_timeout_seconds)
    app[METRICS_KEY].watch_connections(connections)
    site = ClientSite(
        runner,
        settings.host,
        settings.port,
        protocol=protocol_factory(
            runner, connections, keepalive_timeout=settings.keepalive_timeout_seconds
        ),
        backlog=limits.backlog,
        reuse_port=settings.reuse_port,
    )
    await site.start()
    port = runner.addresses[0][1]
    core = app[CORE_KEY]
    # The port is open: now load what signing needs (Keccak, the wallet address, the
    # domain separators, solders) off the loop, so the first paid call does not pay for
    # it, and start fetching Solana blockhashes.
    core.start_background()
    await asyncio.get_running_loop().run_in_executor(None, warm_up_signing, core.payer)
    log_rail(core.settings, core.payer)  # the addresses are derived (and cached) by now
    try:
        yield runner, port
    finally:
        await drain(runner, settings.grace_seconds)


class WatchedBalance:
    """The BalanceWatcher's latest reading as the spend routes take it: (atomic USDC,
    unix time read). The watcher keeps monotonic times; its age converts them."""

    def __init__(self, watcher: BalanceWatcher) -> None:
        self._watcher = watcher

    def latest(self) -> tuple[int, float] | None:
        reading, age = self._watcher.latest, self._watcher.age()
        if reading is None or age is None:
            return None
        return reading.atomic, time.time() - age

    def low(self) -> bool:
        return self._watcher.low


def plug_balance(app: web.Application, watcher: BalanceWatcher) -> None:
    """Show ``watcher``'s readings in /readyz, the spend page and /metrics, and have it
    read the balance again soon after each settled payment (coalesced by the watcher)."""
    app[BALANCE_KEY].source = WatchedBalance(watcher)
    app[METRICS_KEY].watch_balance(watcher)
    app[CORE_KEY].payer.after_settlement = watcher.request_refresh


def warm_up_signing(payer: Rails) -> None:
    payer.warm_up()
    for network in NETWORKS.values():
        network.domain_separator  # noqa: B018 (hashes and caches it)


async def drain(runner: web.AppRunner, grace_seconds: float) -> None:
    """Refuse new work, let in-flight requests finish for up to ``grace_seconds``, stop."""
    admission = runner.app[ADMISSION_KEY]
    admission.start_draining()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + grace_seconds - min(EXIT_RESERVE_SECONDS, grace_seconds / 10)
    if admission.active or admission.queued:
        log.info(
            "draining: %d calls in flight, %d queued, up to %gs",
            admission.active,
            admission.queued,
            grace_seconds,
        )
    for site in list(runner.sites):
        await site.stop()  # new connections are refused from here on
    server = runner.server
    if server is not None:
        server.pre_shutdown()  # idle keep-alive connections close; busy ones after their answer
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(admission.idle(), max(0.0, deadline - loop.time()))
        if admission.requests:
            log.info("grace over: cutting %d requests still in flight", admission.requests)
        for connection in server.connections:
            connection.force_close()
    await runner.cleanup()
    log.info("stopped after draining for %.1fs", loop.time() - started)


async def serve(settings: Settings) -> None:
    not_dumpable = forbid_core_dumps()
    log.info(
        "key protection: no core dumps, %s",
        "not dumpable" if not_dumpable else "dumpable (prctl needs Linux)",
        extra={"fields": {"core_dumps": False, "dumpable": not not_dumpable}},
    )
    settings = _check_fd_limit(settings)
    async with contextlib.AsyncExitStack() as stack:
        if settings.demo:
            settings = await stack.enter_async_context(demo_gateway(settings))
        runner, port = await stack.enter_async_context(running(settings))
        # --rpc-url: the wallet's balance, read in the background (--low-balance-usd warns
        # and flips a metric), and shown by /readyz, the spend page and /metrics.
        if settings.rpc_url:
            from blockrun_proxy.wallet.watcher import watching  # --rpc-url only: startup

            watcher = await stack.enter_async_context(watching(settings))
            if watcher is not None:
                plug_balance(runner.app, watcher)
        _log_schemes(settings)
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
            print_demo_help(settings.host, port, settings, runner.app[CORE_KEY].rail)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info(
            "shutting down: no new connections, draining for up to %gs", settings.grace_seconds
        )


def _log_schemes(settings: Settings) -> None:
    """Say which x402 schemes the EVM payer signs (``--scheme``), and why when ``auto``
    cannot sign upto at all."""
    schemes = settings.schemes
    if settings.scheme == "auto" and "upto" not in schemes:
        log.warning(
            "--scheme auto without --rpc-url pays exact only: the Permit2 allowance an upto "
            "payment draws on cannot be read"
        )
    elif "upto" in schemes:
        log.info(
            "paying x402 %s; the Permit2 allowance is read through --rpc-url",
            " or ".join(schemes),
            extra={"fields": {"schemes": list(schemes)}},
        )


def _check_fd_limit(settings: Settings) -> Settings:
    """Raise the open-files limit, size an unset ``--max-concurrent`` from it, say so.

    Returns ``settings`` with the limits fixed, so the app (and every later
    ``Limits.from_settings``) agrees with the numbers logged here."""
    soft, _ = raise_fd_limit()
    limits = Limits.from_settings(settings, open_files=soft)
    log.info(
        "admitting up to %d concurrent calls (%s), %d more queued for up to %gs, "
        "%d client connections",
        limits.max_concurrent,
        limits.sized_from,
        limits.max_queue,
        limits.queue_timeout,
        limits.max_connections,
    )
    # Every client connection holds a socket, every pooled gateway connection one more.
    if 0 <= soft < limits.fds_needed:
        log.warning(
            "open-files limit %d is below the %d that --max-concurrent %d needs; raise "
            "`ulimit -n` or lower --max-concurrent",
            soft,
            limits.fds_needed,
            limits.max_concurrent,
        )
    return replace(
        settings, max_concurrent=limits.max_concurrent, max_connections=limits.max_connections
    )


# The demo wallet's funds and Permit2 allowance on the fake chain (--scheme upto|auto).
DEMO_FUNDS = 100_000_000  # $100
DEMO_MODEL = "openai/gpt-5.5"
DEMO_PROMPT = "Hello"


@contextlib.asynccontextmanager
async def demo_gateway(settings: Settings) -> AsyncIterator[Settings]:
    """Start a fake gateway in-process and a throwaway wallet to pay it, on the rail the
    settings ask for: an API-key host (``--rail apikey``), Solana (``--chain solana``,
    with the gateway's own fake RPC for blockhashes), else Base Sepolia. On Base, with
    ``--scheme upto|auto`` the gateway offers upto too (verified and settled by the
    official x402 facilitator code against an in-memory chain), and a fake JSON-RPC node
    serves that chain as ``--rpc-url``, the wallet funded and its Permit2 allowance set."""
    # Quotes and spend of a throwaway wallet are not worth keeping.
    settings = replace(settings, state_dir=None, wallet_key=None, solana_key=None, api_key=None)
    async with contextlib.AsyncExitStack() as stack:
        if settings.rail == "apikey":
            yield await _demo_api_host(settings, stack)
        elif settings.chain == "solana":
            yield await _demo_solana(settings, stack)
        else:
            yield await _demo_base(settings, stack)


async def _demo_api_host(settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
    from blockrun_proxy.testing import ApiKeyFakeGateway

    host = ApiKeyFakeGateway(event_interval=0.05, verify="fast")
    url = await host.start(host="127.0.0.1", port=0)
    stack.push_async_callback(host.close)
    return replace(settings, api_key_url=url, api_key=host.new_key())


async def _demo_solana(settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
    from solders.keypair import Keypair

    from blockrun_proxy.testing import SolanaFakeGateway
    from blockrun_proxy.x402.svm import SOLANA_DEVNET
    from blockrun_proxy.x402.svm._base58 import b58encode

    gateway = SolanaFakeGateway(network=SOLANA_DEVNET.caip2, event_interval=0.05)
    api_url = await gateway.start(host="127.0.0.1", port=0)
    stack.push_async_callback(gateway.close)
    return replace(
        settings,
        api_url=api_url,
        networks=(SOLANA_DEVNET.caip2,),
        solana_rpc_url=gateway.rpc_url,
        solana_key=b58encode(bytes(Keypair())),  # a throwaway wallet, in memory only
    )


async def _demo_base(settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
    import secrets

    from blockrun_proxy.testing import FakeGateway, FakeRpc, UptoMode, UsdcLedger
    from blockrun_proxy.x402 import PERMIT2_ADDRESS, Signer

    network = "eip155:84532"  # Base Sepolia: a testnet, and a fake gateway anyway
    wallet_key = secrets.token_hex(32)
    upto = None
    if settings.scheme != "exact":
        _need_official_x402()
        ledger = UsdcLedger(network)
        address = Signer(wallet_key).address
        ledger.fund(address, usdc=DEMO_FUNDS)
        ledger.approve(address, PERMIT2_ADDRESS, DEMO_FUNDS)
        upto = UptoMode(ledger)
    # "fast" verification (its own digest + coincurve) spares the demo eth_account's
    # one-second import on the first paid call; tests verify with eth_account.
    gateway = FakeGateway(network=network, event_interval=0.05, verify="fast", upto=upto)
    api_url = await gateway.start(host="127.0.0.1", port=0)
    stack.push_async_callback(gateway.close)
    rpc_url = settings.rpc_url
    if upto is not None:
        rpc = FakeRpc(upto.ledger)
        rpc_url = await rpc.start()
        stack.push_async_callback(rpc.close)
    return replace(
        settings, api_url=api_url, networks=(network,), wallet_key=wallet_key, rpc_url=rpc_url
    )


def _need_official_x402() -> None:
    import importlib.util

    if importlib.util.find_spec("x402") is None:
        raise SystemExit(
            "serve --demo --scheme upto|auto needs the official x402 package (the demo's fake "
            "gateway verifies upto payments with its facilitator code): "
            "pip install 'x402[evm]', or the dev extra"
        )


DEMO_PAYERS = {
    "base": "a throwaway Base Sepolia wallet pays it",
    "solana": "a throwaway Solana devnet wallet pays it (blockhashes from the fake's own RPC)",
    "apikey": "a throwaway API key's prepaid credit pays it (nothing is signed)",
}


def print_demo_help(
    host: str, port: int, settings: Settings | None = None, rail: str = "base"
) -> None:
    base = f"http://{host}:{port}/v1"
    print(
        f"\nDemo mode: a fake BlockRun gateway runs in this process and {DEMO_PAYERS[rail]}.\n"
        f"Try a paid, streamed completion:\n\n"
        f"  curl -N {base}/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{DEMO_MODEL}", "stream": true, '
        f'"messages": [{{"role": "user", "content": "{DEMO_PROMPT}"}}]}}\'\n',
        flush=True,
    )
    if settings is None or settings.scheme == "exact" or rail != "base":
        return
    max_tokens = settings.default_max_tokens
    exact, actual = demo_prices(max_tokens)
    print(
        f"Paying with --scheme {settings.scheme}: the gateway prices the call on its max_tokens "
        f"({max_tokens}, added by the proxy)\nbut settles only the tokens the answer has. See "
        f"it in the "
        f"headers (curl -i):\n"
        f"  x-blockrun-ceiling-usd: {usd(exact)}   what exact would have paid\n"
        f"  x-blockrun-cost-usd:    {usd(actual)}   what upto settled "
        f"(saved ${usd(exact - actual)}, {1 - actual / exact:.0%})\n",
        flush=True,
    )


def demo_prices(max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[int, int]:
    """(the exact price, the upto cost) of the demo's curl call, as the fake prices them."""
    from blockrun_proxy.testing import DEFAULT_MODELS, default_price
    from blockrun_proxy.testing._replies import ECHO_PREFIX, count_tokens

    model = {m.id: m for m in DEFAULT_MODELS}[DEMO_MODEL]
    body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": DEMO_PROMPT}]}
    exact = default_price(model, {**body, "max_tokens": max_tokens})
    produced = count_tokens(ECHO_PREFIX + DEMO_PROMPT)
    return exact, default_price(model, {**body, "max_tokens": produced})
