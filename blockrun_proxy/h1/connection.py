"""One HTTP/1.1 client connection: an ``asyncio.Protocol`` around httptools' llhttp parser.

Why not aiohttp's client for the relay: per HTTP chunk it runs several Python methods
(parser callback, ``feed_data``, ``end_http_chunk_receiving``, a reader resume that
re-enters ``data_received``), about 1.4 µs a chunk on the bench machine, so a 100-event
SSE answer costs ~140 µs in chunk bookkeeping alone. Here llhttp's per-chunk callback is
a list's own ``append`` (C, no Python frame); the pieces are joined once per socket read
and a read hands over everything buffered at once.

The body is bounded the same way as aiohttp's: past ``HIGH_WATER`` buffered bytes the
socket stops being read until the consumer takes them, so a slow client slows the
upstream instead of growing memory. The idle limit (``read_timeout``) counts only
while we wait on the server, not while we hold the socket paused ourselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, cast

from multidict import CIMultiDict, CIMultiDictProxy

from blockrun_proxy.h1.errors import (
    ConnectionDropped,
    HeadTooLarge,
    HTTPError,
    ReadTimeout,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    import httptools

# Buffered body bytes past which the socket is paused (aiohttp: 2 x read_bufsize 64 KiB).
HIGH_WATER = 128 * 1024
# A response head (status line and headers) longer than this is refused by default: a
# hostile or broken server must not grow it without bound (aiohttp's client limits it too).
MAX_HEAD_BYTES = 64 * 1024
# Header lines per exchange (1xx heads and trailers included). The byte bound alone lets
# a head of empty headers ("a:\r\n", 4 bytes each) cost a Python call and a multidict
# entry per 4 bytes (~30 ms of loop per 64 KiB); the gateway sends a few dozen.
MAX_HEADERS = 256
# What a header line costs on the wire beyond its name and value (": " and CRLF).
HEADER_FRAMING = 4
# At most this much is read from a socket at once (asyncio's own reads take up to 256 KiB):
# with HIGH_WATER it bounds what one stream buffers before its reader catches up.
READ_SIZE = 64 * 1024


def read_buffer() -> memoryview:
    """The buffer sockets are read into, one per client, shared by its connections: the
    loop reads into it and hands the bytes to the parser before the next read, and the
    parser copies what it keeps (body pieces, header strings)."""
    return memoryview(bytearray(READ_SIZE))


class Body:
    """A response body as it arrives. ``readany`` hands over all that is buffered."""

    __slots__ = ("_chunks", "_conn", "_eof", "_error", "_size", "_waiter", "total_bytes")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.total_bytes = 0  # received so far, consumed or not

    # --- the producer side (the connection) ----------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.total_bytes += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause_for_body()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_error(self, exc: BaseException) -> None:
        if not self._eof:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the consumer side -----------------------------------------------------------------

    def at_eof(self) -> bool:
        """True once the whole body has arrived and been handed over."""
        return self._eof and not self._chunks

    async def readany(self) -> bytes:
        """Every byte buffered now (waiting for some if none); ``b""`` at the end.

        Bytes that arrived before a failure are handed over first; the failure after.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = self._conn.loop.create_future()
            await self._waiter
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn.body_drained()
        return data

    async def read(self, limit: int = -1) -> bytes:
        """The body until its end, or its first ``limit`` bytes when ``limit`` >= 0."""
        parts: list[bytes] = []
        size = 0
        while limit < 0 or size < limit:
            piece = await self.readany()
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
        data = b"".join(parts)
        return data if limit < 0 else data[:limit]


class Response:
    """Status and headers of an answer, its ``content`` to read, and the connection to free.

    ``release()`` (or leaving ``async with``) must follow: the connection goes back to
    the pool if the body was read to its end on a keep-alive connection, else it closes.
    """

    __slots__ = ("_conn", "content", "headers", "reason", "status", "version")

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: str,
        version: str,
        headers: CIMultiDictProxy[str],
    ) -> None:
        self._conn: Connection | None = conn
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.content = conn.body

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        """The whole body (then the connection is released)."""
        try:
            return await self.content.read()
        finally:
            self.release()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.response_released()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


OnIdle = Callable[["Connection"], None]
Origin = tuple[str, str, int]  # scheme, host, port


class Connection(asyncio.BufferedProtocol):
    """One connection, one exchange at a time.

    ``on_idle`` takes it back when it can serve another request; ``on_lost`` is told
    once when it is gone (closed by either side), so the pool can free its room.
    """

    # Thousands are held at once (one per relayed stream): no per-instance __dict__.
    __slots__ = (
        "_busy",
        "_complete",
        "_final_head",
        "_has_length",
        "_head",
        "_head_bytes",
        "_head_received",
        "_header_count",
        "_header_pairs",
        "_informational",
        "_keep_alive",
        "_last_read",
        "_max_head",
        "_on_idle",
        "_parser",
        "_paused_for_body",
        "_pieces",
        "_read_buffer",
        "_read_timeout",
        "_reason",
        "_released",
        "_timer",
        "body",
        "closed",
        "idle_since",
        "loop",
        "on_body",
        "on_lost",
        "origin",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        parser_factory: Callable[[Connection], httptools.HttpResponseParser],
        *,
        read_buffer: memoryview,
        read_timeout: float | None,
        on_idle: OnIdle,
        max_head_bytes: int = MAX_HEAD_BYTES,
    ) -> None:
        self.loop = loop
        self.origin = origin
        # llhttp calls on_body once per body piece (per HTTP chunk): make that a C call.
        # The pieces of one socket read are handed to the body together (_flush_body).
        self._pieces: list[bytes] = []
        self.on_body = self._pieces.append
        self._parser = parser_factory(self)
        self._read_buffer = read_buffer
        self._read_timeout = read_timeout
        self._max_head = max_head_bytes
        self._on_idle = on_idle
        # Set by the pool once it counts the connection (so one that fails while being
        # opened is never counted twice).
        self.on_lost: OnIdle | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        # The exchange in progress.
        self.body: Body = Body(self)
        self._head: asyncio.Future[Response] | None = None
        self._header_pairs: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._head_received = 0
        self._header_count = 0
        self._reason = ""
        self._has_length = False  # Content-Length or Transfer-Encoding seen
        self._keep_alive = False
        self._informational = False  # a 1xx head (103 Early Hints): the real one follows
        # The final (non-1xx) head was parsed: header lines after it are trailers.
        self._final_head = False
        self._busy = False
        self._complete = False
        self._released = False
        self._paused_for_body = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if not self._busy or self._complete:
            # Bytes nobody asked for (after a complete answer): the stream is out of step.
            self._close()
            return
        self._last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # httptools' HttpParserError and its subclasses
            self._pieces.clear()
            # A callback's own refusal (the head's bound) arrives wrapped by httptools.
            ours = exc.__cause__ or exc.__context__
            if isinstance(ours, HTTPError):
                self._fail(ours)
            else:
                self._fail(RemoteProtocolError(f"invalid HTTP from the server: {exc}"))
            return
        head = self._head
        if head is not None and not head.done():
            # Still no complete head. llhttp keeps a header line's pieces until it ends, so
            # the headers counted as they complete (on_header) miss one endless line: the
            # bytes received while waiting are bounded too (one read past the bound).
            self._head_received += len(data)
            if self._head_received > self._max_head:
                self._fail(self._head_too_large())
                return
        if self._pieces:
            self._flush_body()

    def _flush_body(self) -> None:
        pieces = self._pieces
        self.body.feed(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        pieces.clear()

    def eof_received(self) -> bool | None:
        self._ended(None)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None  # gone: closing or aborting it again is a no-op
        self._ended(exc)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(self)
        self._cancel_timer()

    # The request body is in memory already (bytes): writing is never awaited, so an
    # answer that comes before the server takes the whole body is read all the same.
    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        # The server is taking our bytes: not idle (a slow upload is not a dead server).
        self._last_read = self.loop.time()

    # --- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # More after this exchange's answer, in the same read (a body longer than its
            # Content-Length): never parsed as another answer, for this call or the next
            # on this connection. Raised inside the parser: the connection is dropped.
            raise RemoteProtocolError("the server sent bytes after the end of its answer")

    def on_status(self, reason: bytes) -> None:
        self._count_head(len(reason))
        self._reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + HEADER_FRAMING)
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise HeadTooLarge(f"response head with more than {MAX_HEADERS} headers")
        if self._final_head:
            return  # a trailer (after a chunked body): dropped, as aiohttp drops them
        key = name.decode("latin-1")
        self._header_pairs.append((key, value.decode("latin-1")))
        lowered = key.lower()
        if lowered == "content-length" or lowered == "transfer-encoding":
            self._has_length = True

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head:
            # Raised inside the parser: data_received fails the exchange with it.
            raise self._head_too_large()

    def _head_too_large(self) -> HeadTooLarge:
        return HeadTooLarge(f"response head longer than {self._max_head} bytes")

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 100:
            # llhttp reads a body after such a head (only 1xx have none): taken for a 1xx,
            # that body would be prepended to the real answer's.
            raise RemoteProtocolError(f"invalid status code {status}")
        if status < 200:
            self._informational = True
            self._header_pairs = []
            self._reason = ""
            self._has_length = False
            return
        self._final_head = True
        headers = CIMultiDictProxy(CIMultiDict(self._header_pairs))
        self._header_pairs = []
        response = Response(self, status, self._reason, parser.get_http_version(), headers)
        self._keep_alive = parser.should_keep_alive()
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._pieces:
            self._flush_body()  # the last pieces of this read, before the end
        self._complete = True
        self._cancel_timer()
        self.body.feed_eof()
        if self._released:
            self._finish()

    # --- the exchange --------------------------------------------------------------------------

    async def send(self, request: bytes, body: bytes) -> Response:
        """Write one request and wait for the answer's head; the body streams after."""
        assert self.transport is not None and not self._busy
        self._busy = True
        self._complete = False
        self._released = False
        self._reason = ""
        self._header_pairs = []
        self._head_bytes = 0
        self._head_received = 0
        self._header_count = 0
        self._has_length = False
        self._keep_alive = False
        self._final_head = False
        self.body = Body(self)
        head: asyncio.Future[Response] = self.loop.create_future()
        self._head = head
        if self._read_timeout is not None:
            # Armed before writing: a server that never takes the request is idle too.
            self._last_read = self.loop.time()
            self._timer = self.loop.call_at(self._last_read + self._read_timeout, self._check_idle)
        transport = self.transport
        if len(body) <= 16 * 1024:
            transport.write(request + body)  # one send for the common small body
        else:
            transport.write(request)
            transport.write(body)
        try:
            return await head
        finally:
            self._head = None

    def response_released(self) -> None:
        self._released = True
        if self._complete:
            self._finish()
        else:
            # The body was not read to its end: the connection cannot serve another request.
            self._close()

    def _finish(self) -> None:
        """The answer is complete and its reader is done with it: reuse or close."""
        self._busy = False
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            # Answered before the server took our whole request: the rest of its body
            # would arrive as the start of the next request on this connection.
            self.abort()
            return
        if self._paused_for_body:
            # Paused for an answer released unread: resumed, or the next answer on this
            # connection would never be read (and the idle timer spares our own pause).
            self._paused_for_body = False
            if transport is not None:
                transport.resume_reading()
        if self._keep_alive and not self.closed:
            self.idle_since = self.loop.time()
            self._on_idle(self)
        else:
            self._close()

    # --- flow control and timeouts -------------------------------------------------------------

    def pause_for_body(self) -> None:
        if not self._paused_for_body and self.transport is not None:
            self._paused_for_body = True
            self.transport.pause_reading()

    def body_drained(self) -> None:
        if self._paused_for_body and self.transport is not None and not self.closed:
            self._paused_for_body = False
            self._last_read = self.loop.time()  # the idle clock restarts with reading
            self.transport.resume_reading()

    def _check_idle(self) -> None:
        self._timer = None
        if self._complete or self.closed or self._read_timeout is None:
            return
        now = self.loop.time()
        if self._paused_for_body:
            self._last_read = now  # our own pause is not the server's silence
        due = self._last_read + self._read_timeout
        if now >= due:
            self._fail(ReadTimeout(f"no data from the server for {self._read_timeout:g}s"))
            return
        # One timer per exchange, moved only when it fires: cheaper than re-arming per read.
        self._timer = self.loop.call_at(due, self._check_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- endings -------------------------------------------------------------------------------

    def _ended(self, exc: Exception | None) -> None:
        """The server closed (or reset) the connection."""
        if not self._busy or self._complete:
            self.closed = True
            return
        if self._final_head and not self._has_length and exc is None:
            # Headers are in (the caller may not have resumed with them yet: TLS can hand
            # over the last bytes and the end at once) and the body had no length: its end
            # is the connection's end.
            self._complete = True
            self._keep_alive = False
            self.body.feed_eof()
            return
        reason = f": {exc}" if exc is not None else ""
        self._fail(ConnectionDropped(f"the server closed the connection mid-answer{reason}"))

    def _fail(self, error: HTTPError) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        self.body.set_error(error)
        # Aborted, not closed: a close would first flush a request the server may never
        # read, holding the socket (and its room in the pool) as long.
        self.abort()

    def _close(self) -> None:
        self._cancel_timer()
        self._keep_alive = False
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a cancelled exchange)."""
        self._cancel_timer()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
