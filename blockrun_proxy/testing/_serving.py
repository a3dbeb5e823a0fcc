"""Serving a fake on a local port: the one way every fake here (the gateway, the RPCs,
the official SDK's server) starts, so each answers at a URL a client can use."""

from __future__ import annotations

from aiohttp import web


async def serve(
    app: web.Application, host: str, port: int, *, handler_cancellation: bool = False
) -> tuple[web.AppRunner, str]:
    """Start ``app`` on ``host:port`` (0 picks a free port): its runner (``cleanup()`` it)
    and its origin, ``http://host:port`` (an IPv6 host in brackets)."""
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=handler_cancellation, shutdown_timeout=1.0
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"
