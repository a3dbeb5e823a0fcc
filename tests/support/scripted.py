"""A raw HTTP/1.1 server that answers with the bytes a test scripts (the h1 client's tests,
and gateways whose exact bytes matter: framing, compression).

A ``ScriptedServer`` reads requests (head plus a Content-Length body) and, per request,
calls the test's ``answer(request) -> bytes | None``: the bytes are written, None closes
the connection. It counts the connections it accepted, so keep-alive reuse is visible.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which accepted connection it came on (1, 2, ...)

    @property
    def method(self) -> str:
        return self.line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]


Answer = Callable[[Request], "bytes | None"]


@dataclass
class ScriptedServer:
    answer: Answer
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    peak_connections: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        number = self.connections
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(lines[0], headers, body, number)
                self.requests.append(request)
                reply = self.answer(request)
                if reply is None:
                    return
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.split(b"\r\n\r\n", 1)[0].lower():
                    return
        finally:
            self.open_connections -= 1
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


def ok(body: bytes = b"hello", *, headers: str = "") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        + headers.encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def chunked(*pieces: bytes, headers: str = "") -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + headers.encode() + b"\r\n"
    for piece in pieces:
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


def url(server: ScriptedServer, path: str = "/v1/x") -> str:
    """The plain-HTTP address of ``path`` on ``server``."""
    return f"http://127.0.0.1:{server.port}{path}"
