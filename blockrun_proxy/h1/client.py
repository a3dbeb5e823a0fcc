"""``Client``: HTTP/1.1 requests over a bounded keep-alive pool, direct or through a proxy.

    async with Client(Limits(max_connections=258), Timeouts(connect=10, read=300),
                      proxy_for=lambda origin: "http://proxy:3128") as client:
        async with await client.request("POST", url, headers, body) as response:
            response.status, response.headers
            while chunk := await response.content.readany(): ...

What it does and what it leaves out, on purpose:

- one request at a time per connection (no pipelining); connections are reused LIFO
  (the warmest first) and closed after ``keepalive_expiry`` idle seconds;
- at most ``max_connections`` open at once; a caller beyond waits its turn (FIFO) for
  at most the connect timeout, then gets ``ConnectTimeout`` (nothing was sent);
- bodies with Content-Length, chunked, or delimited by the connection's end; the bytes
  are handed over as received: no decompression (Content-Encoding passes through), no
  Accept-Encoding added, no redirects followed, no cookies;
- ``https://`` verifies the server with the default CA store (``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR`` apply) unless given another ``ssl.SSLContext`` (or a function that
  builds one, called at the first https connection);
- a proxy per origin, as ``proxy_for(origin)`` decides (the proxy's ``egress.proxy_for``:
  HTTPS_PROXY / HTTP_PROXY / NO_PROXY), asked once per origin: CONNECT tunnels for
  ``https://``, absolute-form requests for ``http://``;
- a response head over ``max_head_bytes`` is refused (``HeadTooLarge``);
- host names are resolved once per ``DNS_TTL`` seconds, not per connection; their
  addresses are tried in the resolver's order until one connects (no happy eyeballs).

Bodies are known up front (bytes, or None for none); HEAD (a length without a body) and
upgrades are not supported.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from yarl import URL

from blockrun_proxy.h1.connection import (
    MAX_HEAD_BYTES,
    Connection,
    Origin,
    Response,
    read_buffer,
)
from blockrun_proxy.h1.errors import ConnectError, ConnectTimeout
from blockrun_proxy.h1.route import Proxy, ProxyFor, authority, origin_url

# Not asyncio.wait_for: on 3.11 it can swallow a cancellation that arrives as the awaited
# connection completes, leaving a cancelled caller waiting on an answer (seen at shutdown).
if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # aiohttp depends on async-timeout below 3.11
    from async_timeout import timeout as deadline

DNS_TTL = 300.0
_T = TypeVar("_T")
# (family, sockaddr) of one address a name resolves to.
Address = tuple[int, tuple[Any, ...]]
# How often idle connections past their expiry are swept (while any are idle).
SWEEP_EVERY = 5.0
_FORBIDDEN = ("\r", "\n", "\0")
# Methods that carry no body unless given one: no Content-Length then (as aiohttp sends).
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 100
    keepalive_expiry: float = 30.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float | None = 10.0  # TCP + TLS + proxy tunnel, and waiting for a pool slot
    read: float | None = 300.0  # idle: between two reads while an answer is awaited


class Client:
    def __init__(
        self,
        limits: Limits = Limits(),
        timeouts: Timeouts = Timeouts(),
        *,
        proxy_for: ProxyFor | None = None,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        user_agent: str | None = None,
        max_head_bytes: int = MAX_HEAD_BYTES,
    ) -> None:
        self._limits = limits
        self._timeouts = timeouts
        self._proxy_for = proxy_for
        # Each origin's proxy, parsed once (the proxy talks to one gateway or a few).
        self._proxies: dict[Origin, Proxy | None] = {}
        # A context, or what builds one at the first https connection: loading a CA
        # bundle takes tens of ms, which a factory keeps out of startup.
        self._ssl_context = ssl_context
        self._user_agent = user_agent
        self._max_head = max_head_bytes
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0  # connections open or being opened
        self._conns: set[Connection] = set()  # the open ones, idle or in use
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._dns: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._read_buffer = read_buffer()
        # Parsed request targets and Host headers, per URL object (the proxy sends few).
        self._heads: dict[tuple[str, URL], tuple[Origin, bytes]] = {}

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def limits(self) -> Limits:
        return self._limits

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def ssl_context(self) -> ssl.SSLContext:
        """The context for https origins, built on first use (tens of ms: warm it off-loop)."""
        context = self._ssl_context
        if context is None:
            context = ssl.create_default_context()
        elif not isinstance(context, ssl.SSLContext):
            context = context()
        self._ssl_context = context
        return context

    # --- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: URL | str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Response:
        """Send one request; returns once the answer's head is in (release it when done).

        ``ConnectError`` means nothing was sent; any other failure may follow a request
        the server received (errors.py)."""
        if self._closed:
            raise RuntimeError("the client is closed")
        url = url if isinstance(url, URL) else URL(url)
        origin, start = self._start_line(method, url)
        request = bytearray(start)
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            request += _header_line(name, value)
        if body or method not in _BODILESS:
            request += b"Content-Length: %d\r\n" % len(body or b"")
        request += b"\r\n"
        conn = await self._acquire(origin)
        try:
            return await conn.send(bytes(request), body or b"")
        except BaseException:
            # Cancelled or failed mid-exchange: the connection's state is unknown.
            conn.abort()
            raise

    def _start_line(self, method: str, url: URL) -> tuple[Origin, bytes]:
        key = (method, url)
        cached = self._heads.get(key)
        if cached is not None:
            return cached
        scheme, host = url.scheme, url.raw_host
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"not an http(s) URL: {url}")
        if method == "HEAD":
            # llhttp cannot be told an answer is to a HEAD: it would wait for the body its
            # Content-Length announces, until the idle limit.
            raise ValueError("HEAD is not supported by the h1 client")
        default_port = 443 if scheme == "https" else 80
        port = url.port or default_port
        origin = (scheme, host, port)
        target = url.raw_path_qs or "/"
        proxy = self._proxy(origin)
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        lines = ""
        if proxy is not None and scheme == "http":
            target = str(url.with_fragment(None))  # absolute form, through the proxy
            if proxy.authorization:
                lines += f"Proxy-Authorization: {proxy.authorization}\r\n"
        lines = f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n" + lines
        if self._user_agent:
            lines += f"User-Agent: {self._user_agent}\r\n"
        head = (origin, lines.encode("latin-1"))
        if len(self._heads) < 64:  # the proxy talks to one gateway: a handful of URLs
            self._heads[key] = head
        return head

    # --- the pool ----------------------------------------------------------------------------

    async def _acquire(self, origin: Origin) -> Connection:
        """An idle connection to ``origin``, or a new one when there is room."""
        queued = False
        while True:
            conn = self._pop_idle(origin)
            if conn is not None:
                if queued:
                    self._pass_room_on()  # others may be served too
                return conn
            if self._open < self._limits.max_connections and (queued or not self._waiters):
                break
            self._evict_idle(origin)
            await self._wait_for_room()
            queued = True
        self._open += 1
        try:
            conn = await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._pass_room_on()
            raise
        # Counted from here: its loss frees the room.
        conn.on_lost = self._lost
        self._conns.add(conn)
        return conn

    def _pop_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired = idle[-1].loop.time() - self._limits.keepalive_expiry
        while idle:
            conn = idle.pop()  # the most recently used: warm, and least likely to expire
            if conn.closed:
                continue
            if conn.idle_since <= expired:
                # Past the expiry the server may be closing it right now: a request sent
                # then would be dropped. The sweep has not run yet; close it here.
                conn.abort()
                continue
            return conn
        return None

    def _evict_idle(self, origin: Origin) -> None:
        """At the limit with idle connections to other origins: close one to make room
        (its ``connection_lost`` frees the room and wakes a waiter)."""
        for other, conns in self._idle.items():
            while other != origin and conns:
                conn = conns.pop(0)
                if not conn.closed:
                    conn.abort()
                    return

    async def _wait_for_room(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with deadline(self._timeouts.connect):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Woken with room, then timed out or cancelled before taking it: the next
                # waiter looks instead, or the room would sit unused.
                self._pass_room_on()
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectTimeout(
                    f"no free upstream connection within {self._timeouts.connect:g}s "
                    f"(limit {self._limits.max_connections})"
                ) from None
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _pass_room_on(self) -> None:
        """Room freed or a connection back: wake the oldest waiter to look again."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _idle_again(self, conn: Connection) -> None:
        if self._closed:
            conn.abort()
            return
        self._idle.setdefault(conn.origin, []).append(conn)
        self._pass_room_on()
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(SWEEP_EVERY, self._sweep)

    def _lost(self, conn: Connection) -> None:
        """A counted connection is gone: its room in the pool is free (it may still be
        listed as idle; ``_pop_idle`` and the sweep skip closed ones)."""
        self._open -= 1
        self._conns.discard(conn)
        self._pass_room_on()

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        expired = loop.time() - self._limits.keepalive_expiry
        for conns in self._idle.values():
            keep = []
            for conn in conns:
                if conn.closed:
                    continue
                if conn.idle_since <= expired:
                    conn.abort()
                else:
                    keep.append(conn)
            conns[:] = keep
        if any(self._idle.values()):
            self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep)

    # --- connecting --------------------------------------------------------------------------

    async def _connect(self, origin: Origin) -> Connection:
        import httptools  # at the first connection: off the startup path

        _, host, port = origin
        loop = asyncio.get_running_loop()
        proxy = self._proxy(origin)

        def factory() -> Connection:
            return Connection(
                loop,
                origin,
                httptools.HttpResponseParser,
                read_buffer=self._read_buffer,
                read_timeout=self._timeouts.read,
                on_idle=self._idle_again,
                max_head_bytes=self._max_head,
            )

        conn: Connection | None = None
        try:
            async with deadline(self._timeouts.connect):
                conn = await self._open_connection(loop, factory, origin, proxy)
            return conn
        except BaseException as exc:
            if conn is not None:
                conn.abort()  # made, then timed out or cancelled: not handed to anyone
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectTimeout(
                    f"could not connect to {host}:{port} within {self._timeouts.connect:g}s"
                ) from None
            if isinstance(exc, (OSError, ssl.SSLError)):
                raise ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
            raise

    async def _open_connection(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], Connection],
        origin: Origin,
        proxy: Proxy | None,
    ) -> Connection:
        scheme, host, port = origin
        tls = self.ssl_context() if scheme == "https" else None
        if proxy is None or tls is None:
            # Direct, or http:// through the proxy (absolute-form requests, no tunnel).
            to_host, to_port = (host, port) if proxy is None else (proxy.host, proxy.port)

            async def connect(family: int, address: tuple[Any, ...]) -> Connection:
                _, conn = await loop.create_connection(
                    factory,
                    host=address[0],
                    port=address[1],
                    family=family,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
                return conn

            return await self._each_address(loop, to_host, to_port, connect)
        from blockrun_proxy.h1.tunnel import open_tunnel

        async def tunnel(family: int, address: tuple[Any, ...]) -> asyncio.Transport:
            return await open_tunnel(loop, family, address, authority(host, port), proxy)

        transport = await self._each_address(loop, proxy.host, proxy.port, tunnel)
        conn = factory()
        try:
            tls_transport = await loop.start_tls(transport, conn, tls, server_hostname=host)
        except BaseException:
            transport.close()
            raise
        assert tls_transport is not None
        conn.connection_made(tls_transport)
        return conn

    def _proxy(self, origin: Origin) -> Proxy | None:
        """The proxy ``proxy_for`` names for ``origin`` (None: direct), asked once."""
        if origin in self._proxies:
            return self._proxies[origin]
        url = self._proxy_for(origin_url(*origin)) if self._proxy_for is not None else None
        try:
            proxy = Proxy.parse(url) if url else None
        except ValueError as exc:  # a proxy this client cannot use: nothing can be sent
            raise ConnectError(f"the egress proxy cannot be used: {exc}") from None
        self._proxies[origin] = proxy
        return proxy

    async def _each_address(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        connect: Callable[[int, tuple[Any, ...]], Awaitable[_T]],
    ) -> _T:
        """``connect`` to each address of host:port in turn until one succeeds, as
        aiohttp's connector does: one unreachable address (a dead A record, an AAAA
        without an IPv6 route) must not fail every call while the others answer."""
        error: OSError | None = None
        for family, address in await self._resolve(loop, host, port):
            try:
                return await connect(family, address)
            except ssl.SSLError:
                raise  # the server answered: its other addresses would answer the same
            except OSError as exc:
                error = exc
        self._dns.pop((host, port), None)  # none answered: resolve afresh next time
        assert error is not None
        raise error

    async def _resolve(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> list[Address]:
        """The addresses of host:port, in the resolver's order, cached for DNS_TTL seconds."""
        now = loop.time()
        cached = self._dns.get((host, port))
        if cached is None or cached[0] < now:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"no address for {host}")
            cached = (now + DNS_TTL, [(info[0], info[4]) for info in infos])
            self._dns[(host, port)] = cached
        return cached[1]

    async def close(self) -> None:
        """Close every connection, in use or idle (as aiohttp's session does): an answer
        still being read fails with ``ConnectionDropped``."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._conns):
            conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let connection_lost run


def _header_line(name: str, value: str) -> bytes:
    # Substring scans (memchr, no copies): a payment header is a couple of KiB.
    for forbidden in _FORBIDDEN:
        if forbidden in value or forbidden in name:
            raise ValueError(f"header {name!r} has a line break or NUL in its name or value")
    return f"{name}: {value}\r\n".encode("latin-1")
