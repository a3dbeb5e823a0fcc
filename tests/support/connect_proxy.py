"""A tiny HTTP forward proxy on loopback: what an egress proxy in a cluster does.

``CONNECT`` (https): it opens a tunnel to the host and port a client asks for and pipes
bytes both ways, recording which targets were asked for and a bounded sample of what went
through (to show that a TLS tunnel carries no payment header in the clear). Absolute-form
requests (http through a proxy) are answered by ``plain``, when given. ``refuse``: every
tunnel is refused with a 403. Each request line and its ``Proxy-Authorization`` are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

SAMPLE_BYTES = 256 * 1024
MAX_HEADER_LINES = 100

# What a plain (absolute-form) request is answered with: the request line, its headers
# (lower-cased names) and body in; the raw answer out.
PlainAnswer = Callable[[str, dict[str, str], bytes], bytes]


class ConnectProxy:
    def __init__(self, *, plain: PlainAnswer | None = None, refuse: bool = False) -> None:
        self.tunnels: list[str] = []  # "host:port" per CONNECT served
        self.seen = bytearray()  # the first SAMPLE_BYTES client bytes of all tunnels
        self.lines: list[str] = []  # every request line, CONNECT or not
        self.authorizations: list[str | None] = []  # their Proxy-Authorization
        self._plain = plain
        self._refuse = refuse
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
            headers: dict[str, str] = {}
            for _ in range(MAX_HEADER_LINES):
                header = await reader.readline()
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            self.lines.append(line)
            self.authorizations.append(headers.get("proxy-authorization"))
            request = line.split()
            if len(request) != 3:
                return
            if request[0] != "CONNECT":
                await self._answer_plain(line, headers, reader, writer)
                return
            if self._refuse:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = request[1].rpartition(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            self.tunnels.append(f"{host}:{port}")
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(
                self._pipe(reader, upstream_writer, sample=True),
                self._pipe(upstream_reader, writer, sample=False),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _answer_plain(
        self,
        line: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if self._plain is None:
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        writer.write(self._plain(line, headers, body))
        await writer.drain()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, sample: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if sample and len(self.seen) < SAMPLE_BYTES:
                    self.seen += chunk[: SAMPLE_BYTES - len(self.seen)]
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()
