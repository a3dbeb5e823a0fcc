"""Starting the processes a scenario needs, each on a free loopback port.

`Stack` owns every service it started and stops them all (newest first) on
exit, so each scenario runs against fresh processes and leaves none behind.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import TracebackType

from bench.nginx import start_nginx
from bench.procs import (
    BENCH_NETWORK,
    BENCH_PAY_TO,
    BENCH_WALLET_KEY,
    LOOPBACK,
    REPO_DIR,
    Service,
    child_env,
    free_port,
    spawn,
)
from bench.reference import start_reference

GATEWAY_READY_PATH = "/api/v1/models"
API_PREFIX = "/api"
CHAT_PATH = "/v1/chat/completions"
FREE_MODEL = "nvidia/deepseek-v4-flash"
PAID_MODEL = "openai/gpt-4o-mini"


def gateway_argv(
    port: int,
    *,
    events: int,
    interval: float,
    verify: str,
    event_size: int | None = None,
    network: str = BENCH_NETWORK,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "blockrun_proxy.testing",
        "--port",
        str(port),
        "--network",
        network,
        "--pay-to",
        BENCH_PAY_TO,
        "--verify",
        verify,
        "--stream-events",
        str(events),
        "--event-interval",
        str(interval),
    ]
    if event_size is not None:
        argv += ["--event-size", str(event_size)]
    return argv


def proxy_argv(
    port: int,
    api_url: str,
    *,
    network: str = BENCH_NETWORK,
    extra: Sequence[str] = (),
    python: str | None = None,
    loop: Sequence[str] = (),
) -> list[str]:
    """`loop`: bench.loopvariant flags (--uvloop, --eager) to run the CLI under."""
    launcher = ["-m", "bench.loopvariant", *loop] if loop else ["-m", "blockrun_proxy"]
    return [
        python or sys.executable,
        *launcher,
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--api-url",
        api_url,
        "--networks",
        network,
        "--max-price-usd",
        "1",
        "--log-level",
        "warning",
        *extra,
    ]


def repo_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that runs this checkout's code (proxy, gateway, upstream).

    `python -m` with cwd at the repo root already imports from here; PYTHONPATH makes
    it so even where an editable install of another checkout sits on sys.path.
    """
    return child_env({"PYTHONPATH": str(REPO_DIR), **(extra or {})})


def proxy_env(
    wallet_key: str = BENCH_WALLET_KEY, extra: dict[str, str] | None = None
) -> dict[str, str]:
    return repo_env({"BLOCKRUN_WALLET_KEY": wallet_key, **(extra or {})})


def api_url(gateway: Service) -> str:
    """The --api-url for a proxy in front of `gateway` (fake gateway or bench upstream)."""
    return f"{gateway.url}{API_PREFIX}"


def chat_url(service: Service, *, direct: bool = False) -> str:
    """The chat URL of a relay, or of the gateway itself when `direct`."""
    return f"{service.url}{API_PREFIX if direct else ''}{CHAT_PATH}"


def chat_body(model: str = FREE_MODEL, *, stream: bool = True) -> dict[str, object]:
    return {
        "model": model,
        "stream": stream,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello."}],
    }


class Stack:
    """The services of one scenario; `async with Stack() as stack:` stops them all at the end."""

    def __init__(self) -> None:
        self.services: list[Service] = []

    def _keep(self, service: Service) -> Service:
        self.services.append(service)
        return service

    async def gateway(
        self,
        *,
        events: int = 100,
        interval: float = 0.0,
        verify: str = "fast",
        event_size: int | None = None,
    ) -> Service:
        port = free_port()
        argv = gateway_argv(
            port, events=events, interval=interval, verify=verify, event_size=event_size
        )
        return self._keep(
            await spawn("gateway", argv, port=port, env=repo_env(), health_path=GATEWAY_READY_PATH)
        )

    async def upstream(
        self,
        *,
        events: int,
        interval: float = 0.0,
        event_bytes: int = 200,
        raw: bool = False,
        static: bool = False,
        paid_body: str | None = None,
    ) -> Service:
        """The bench's own minimal upstream (bench/upstream.py): free model only, no x402."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "bench.upstream",
            "--port",
            str(port),
            "--events",
            str(events),
            "--interval",
            str(interval),
            "--event-bytes",
            str(event_bytes),
        ]
        if raw:
            argv.append("--raw")
        if static:
            argv.append("--static")
        if paid_body is not None:
            argv += ["--paid-body", paid_body]
        return self._keep(await spawn("upstream", argv, port=port, env=repo_env()))

    async def proxy(
        self,
        upstream: Service,
        *,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        python: str | None = None,
        loop: Sequence[str] = (),
    ) -> Service:
        """The proxy in front of `upstream`; `env` adds variables, `python` another
        interpreter, `loop` bench.loopvariant flags (--uvloop, --eager)."""
        port = free_port()
        argv = proxy_argv(port, api_url(upstream), extra=extra, python=python, loop=loop)
        return self._keep(await spawn("proxy", argv, port=port, env=proxy_env(extra=env)))

    async def floor(self, upstream: Service, *, client: str = "aiohttp") -> Service:
        """The minimal aiohttp relay (bench/floor.py): what aiohttp alone costs here;
        `client="h1"`: the same server relaying through the proxy's own client."""
        port = free_port()
        argv = [sys.executable, "-m", "bench.floor", "--port", str(port), "--api-url"]
        argv += [api_url(upstream), "--client", client]
        return self._keep(await spawn("floor", argv, port=port, env=repo_env()))

    async def nginx(self, upstream: Service) -> Service:
        port = free_port()
        return self._keep(
            await start_nginx(port=port, upstream_port=upstream.port, upstream_prefix="/api/")
        )

    async def reference(self, upstream: Service) -> Service:
        port = free_port()
        return self._keep(await start_reference(port=port, api_url=api_url(upstream)))

    async def close(self) -> None:
        while self.services:
            await self.services.pop().stop()

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
