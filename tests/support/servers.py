"""Servers and waiting: a gateway stand-in that holds streams open, free ports, a
subprocess's environment, and waiting on shared state (never on time passing)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

FIRST_FRAME = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
LAST_FRAME = b"data: [DONE]\n\n"
WORKTREE = Path(__file__).resolve().parents[2]


class HoldingUpstream:
    """Answers every chat call 200 with one SSE frame, then holds the stream open until
    ``release`` is set: the tests decide when streams end, so nothing depends on timing."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.finished = 0
        self.url = ""
        self.request_ids: list[str | None] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/api"
        return self.url

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.started += 1
        self.request_ids.append(request.headers.get("x-request-id"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(FIRST_FRAME)
        await self.release.wait()
        await response.write(LAST_FRAME)
        self.finished += 1
        return response


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition on shared state (not for time to pass); fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy_environ(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a proxy subprocess: this worktree's code, no inherited settings,
    and a HOME without a wallet file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKRUN_", "PROMETHEUS"))}
    env["PYTHONPATH"] = str(WORKTREE)
    env["HOME"] = str(home)
    env.update(extra)
    return env
