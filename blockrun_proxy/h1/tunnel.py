"""A CONNECT tunnel through an HTTP proxy: the TCP leg that TLS to the origin then runs over."""

from __future__ import annotations

import asyncio
from typing import Any

from blockrun_proxy.h1.errors import ConnectError
from blockrun_proxy.h1.route import Proxy

# A proxy's answer to CONNECT is a status line and a few headers.
MAX_TUNNEL_HEAD = 16 * 1024


class _TunnelHandshake(asyncio.Protocol):
    """Collects the proxy's answer head; the TLS protocol takes the transport over after."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head: asyncio.Future[bytes] = loop.create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0 and not self.head.done():
            if end + 4 != len(self._buffer):  # the origin cannot speak before our TLS hello
                self.head.set_exception(ConnectError("the proxy sent bytes after its answer"))
                return
            self.head.set_result(self._buffer[:end])
        elif len(self._buffer) > MAX_TUNNEL_HEAD and not self.head.done():
            self.head.set_exception(ConnectError("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectError(f"the proxy closed the tunnel: {exc}"))


async def open_tunnel(
    loop: asyncio.AbstractEventLoop,
    family: int,
    address: tuple[Any, ...],
    authority: str,
    proxy: Proxy,
) -> asyncio.Transport:
    """Connect to the proxy at ``address`` and ask it for a tunnel to ``authority``."""
    transport, handshake = await loop.create_connection(
        lambda: _TunnelHandshake(loop), host=address[0], port=address[1], family=family
    )
    try:
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if proxy.authorization:
            request += f"Proxy-Authorization: {proxy.authorization}\r\n"
        transport.write((request + "\r\n").encode("latin-1"))
        head = await handshake.head
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
            raise ConnectError(f"the proxy refused the tunnel to {authority}: {status_line!r}")
    except BaseException:
        transport.close()
        raise
    return transport
