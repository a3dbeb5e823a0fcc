"""Client connections: how many may be open, and how long one may take to ask something.

aiohttp's server reads request headers with no deadline, reads bodies with no deadline,
and keeps any number of connections open. A few hundred clients that drip a header byte
now and then, or that connect and say nothing, then hold sockets, file descriptors and
memory for as long as they like. Here:

- **a cap** on open client connections per process (``ClientConnections``). Past it a
  new connection gets a canned ``503 too_many_connections`` and is closed at once,
  before aiohttp builds anything for it; the refusals are counted;
- **a headers deadline** (``BoundedRequestHandler``): a connection must deliver complete
  request headers within ``headers_timeout`` seconds of connecting, and a kept-alive
  connection within ``headers_timeout`` of the first byte of its next request.
  Otherwise it is closed (and counted). aiohttp has no such knob;
- **keep-alive idle**: aiohttp's own ``keepalive_timeout`` (a public knob) closes a
  connection that sends nothing after its previous response;
- the **body deadline** is the chat handler's (app.py): a body that stalls gets a 408
  and gives its admission slot back.

The handler is aiohttp's ``RequestHandler`` with three methods extended. It reads two
of aiohttp's private attributes, and only reads them: ``_waiter`` (set while
``start()`` waits for the next request: the same test aiohttp's own keep-alive timer
uses) and ``_messages`` (requests whose headers are parsed). ``ClientSite`` is a
``BaseSite`` (aiohttp's documented base for sites) that serves this handler; its
``Server`` is still the runner's, so shutdown and ``handler_cancellation`` work as with
``TCPSite``. Checked against aiohttp 3.14.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from blockrun_proxy.errors import error_body

_REFUSAL_BODY = error_body(
    "the proxy has too many open connections; retry shortly (nothing was sent or paid)",
    "server_error",
    "too_many_connections",
)
# Written straight to the socket: nothing about the connection is parsed or kept.
OVER_CAP_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class ClientConnections:
    """The cap, the headers deadline and the counters shared by a listener's connections.

    Plain ints, read by the metrics (``Metrics.watch``); only the event loop writes them.
    """

    def __init__(self, max_connections: int, headers_timeout: float) -> None:
        if max_connections < 1 or not headers_timeout > 0:
            raise ValueError("need max_connections >= 1 and headers_timeout > 0")
        self.max_connections = max_connections
        self.headers_timeout = headers_timeout
        self.open = 0
        self.refused = 0  # over the cap
        self.timed_out = 0  # headers not complete in time

    def admit(self) -> bool:
        if self.open >= self.max_connections:
            self.refused += 1
            return False
        self.open += 1
        return True


class BoundedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, plus the connection cap and a headers deadline."""

    __slots__ = ("_admitted", "_connections", "_headers_timer")

    def __init__(
        self,
        manager: web.Server,
        *,
        connections: ClientConnections,
        loop: asyncio.AbstractEventLoop,
        keepalive_timeout: float,
    ) -> None:
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=keepalive_timeout,
            access_log=None,  # type: ignore[arg-type]  # the proxy writes its own (app.py)
        )
        self._connections = connections
        self._admitted = False
        self._headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._connections.admit():
            # Refused before aiohttp sees it: no parser task, no entry in the server.
            assert isinstance(transport, asyncio.Transport)
            transport.write(OVER_CAP_RESPONSE)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_headers_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._connections.open -= 1
        self._stop_headers_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The first byte of a kept-alive connection's next request starts its clock. Asked
        # before parsing: a parsed request ends the wait.
        first_bytes = self._headers_timer is None and data and self._waiting_for_a_request()
        super().data_received(data)
        if self._messages:  # a request's headers are complete (or failed to parse)
            self._stop_headers_clock()
        elif first_bytes:
            # Started only when the headers did not come whole with their first bytes (the
            # common case does, and then a timer armed and cancelled at once is a wasted
            # TimerHandle, heap push and cancel per request): the deadline still runs from
            # the first byte, which arrived just now.
            self._start_headers_clock()

    # ------------------------------------------------------------------ the deadline

    def _waiting_for_a_request(self) -> bool:
        waiter = self._waiter  # start() awaits it between requests
        return waiter is not None and not waiter.done()

    def _start_headers_clock(self) -> None:
        self._headers_timer = self._loop.call_later(
            self._connections.headers_timeout, self._headers_late
        )

    def _stop_headers_clock(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_late(self) -> None:
        self._headers_timer = None
        if self._waiting_for_a_request() and not self._messages:
            self._connections.timed_out += 1
            self.force_close()


class ClientSite(web.BaseSite):
    """A TCP listener whose connections are ``BoundedRequestHandler``s."""

    __slots__ = ("_host", "_port", "_protocol", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        protocol: Callable[[], RequestHandler],
        backlog: int,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._protocol = protocol

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=self._port))

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            self._host or None,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )


def protocol_factory(
    runner: web.BaseRunner, connections: ClientConnections, *, keepalive_timeout: float
) -> Callable[[], RequestHandler]:
    """What ``ClientSite`` builds per connection, for ``runner``'s server (after setup)."""
    server = runner.server
    if server is None:
        raise RuntimeError("call runner.setup() first")
    loop = asyncio.get_running_loop()

    def protocol() -> RequestHandler:
        return BoundedRequestHandler(
            server,
            connections=connections,
            loop=loop,
            keepalive_timeout=keepalive_timeout,
        )

    return protocol
