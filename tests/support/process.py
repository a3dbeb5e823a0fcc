"""A real ``python -m blockrun_proxy serve`` process for the drain and workers tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from support.servers import WORKTREE

START_TIMEOUT = 30.0


class ProxyProcess:
    """The proxy as a child process, its JSON log lines collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, *args: str, env: dict[str, str], listeners: int = 1) -> ProxyProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "blockrun_proxy",
            "serve",
            "--log-format",
            "json",
            *args,
            cwd=Path(WORKTREE),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self = cls(proc)
        try:
            await asyncio.wait_for(self._listening(listeners), START_TIMEOUT)
        except BaseException:
            await self.kill()
            raise
        return self

    @property
    def urls(self) -> list[str]:
        return [line["url"] for line in self.lines if "url" in line]

    @property
    def base_url(self) -> str:
        return self.urls[0]

    def access(self, route: str) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines
            if line.get("logger") == "blockrun_proxy.access" and line.get("route") == route
        ]

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)  # every line up to EOF
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _listening(self, count: int) -> None:
        while len(self.urls) < count:
            if self._reader.done():
                raise AssertionError(b"proxy exited before listening:\n" + b"\n".join(self.raw))
            self._new_line.clear()
            await self._new_line.wait()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            async for raw in self.proc.stderr:
                self.raw.append(raw.rstrip())
                with contextlib.suppress(orjson.JSONDecodeError):
                    line = orjson.loads(raw)
                    if isinstance(line, dict):
                        self.lines.append(line)
                self._new_line.set()
        finally:
            self._new_line.set()
