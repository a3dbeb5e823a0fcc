"""The h1 client against a hostile or broken gateway (or whatever sits in front of it):
no answer's bytes or headers ever reach another call, a connection goes back to the pool
only in a state that can serve the next call, every wait ends within the idle limit, and
framing that two parsers could read two ways is refused."""

from __future__ import annotations

import asyncio
import socket

import httptools
import pytest
from support.connect_proxy import ConnectProxy
from support.scripted import Request, ScriptedServer, ok, url

from blockrun_proxy import h1
from blockrun_proxy.h1.connection import MAX_HEADERS, Connection, read_buffer


@pytest.fixture
async def client():
    c = h1.Client(h1.Limits(max_connections=4), h1.Timeouts(connect=5, read=1))
    yield c
    await c.close()


def first_then_ok(first: bytes):
    """An answer function: ``first`` for the first request, a plain 200 for the others."""

    def answer(request: Request) -> bytes:
        return first if len(answers) == 0 and not answers.append(1) else ok(b"next call")

    answers: list[int] = []
    return answer


async def get(client: h1.Client, server: ScriptedServer) -> tuple[int, bytes]:
    response = await client.request("GET", url(server))
    return response.status, await response.read()


# --- bytes past an answer's end never become another answer ----------------------------------


async def test_a_second_answer_after_the_body_is_not_read_into_the_body(serve, client):
    # A body longer than its Content-Length, the excess shaped as an answer: it must not
    # be appended to this body (llhttp parses on within the same read) nor stay on a
    # pooled connection for the next call.
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
    server = await serve(first_then_ok(ok(b"hello") + smuggled))
    assert await get(client, server) == (200, b"hello")
    assert await get(client, server) == (200, b"next call")
    assert server.connections == 2  # the out-of-step connection was not reused


async def test_half_an_answer_after_the_body_does_not_poison_the_next_call(serve, client):
    # llhttp keeps a partial head's state: the next call on that connection would be
    # parsed as its continuation (here its body: the next answer's first bytes).
    server = await serve(first_then_ok(ok(b"hello") + b"HTTP/1.1 200 OK\r\nContent-Le"))
    assert await get(client, server) == (200, b"hello")
    assert await get(client, server) == (200, b"next call")


async def test_trailers_never_become_the_next_answers_headers(serve, client):
    trailer = b"PAYMENT-RESPONSE: from-another-call\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n" + trailer
    server = await serve(first_then_ok(answer + b"\r\n"))
    first = await client.request("GET", url(server))
    assert await first.read() == b"abc"
    second = await client.request("GET", url(server))
    assert await second.read() == b"next call"
    assert "PAYMENT-RESPONSE" not in second.headers
    assert "PAYMENT-RESPONSE" not in first.headers  # trailers are dropped, as aiohttp does
    assert server.connections == 1  # a chunked answer with trailers is a complete one


async def test_a_status_below_100_is_refused_not_taken_for_an_informational_head(serve, client):
    # llhttp reads a body after "099" (only 1xx have none); taken for a 1xx, that body
    # would be prepended to the real answer's.
    early = b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nzz"
    server = await serve(lambda r: early + ok(b"y"))
    with pytest.raises(h1.RemoteProtocolError):
        await client.request("GET", url(server))


async def test_100_continue_and_103_early_hints_are_skipped(serve, client):
    heads = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    server = await serve(lambda r: heads + ok(b"final"))
    for _ in range(2):
        response = await client.request("POST", url(server), body=b"{}")
        assert (response.status, "link" in response.headers) == (200, False)
        assert await response.read() == b"final"
    assert server.connections == 1


# --- framing two parsers could read two ways is refused ------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 5\r\nContent-Length: 6",  # conflicting lengths
        b"Content-Length: 5\r\nContent-Length: 5",  # duplicated, even when equal
        b"Content-Length: 5, 5",
        b"Content-Length: -1",
        b"Content-Length: 99999999999999999999999",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked",  # both: smuggling's classic
        b"Content-Length : 5",  # whitespace before the colon
        b"X-Folded: one\r\n two\r\nContent-Length: 5",  # obs-fold
        b"X-Nul: a\x00b\r\nContent-Length: 5",
    ],
)
async def test_ambiguous_framing_is_refused(serve, client, head):
    server = await serve(lambda r: b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\nhello!")
    with pytest.raises(h1.RemoteProtocolError):
        await client.request("GET", url(server))


@pytest.mark.parametrize(
    "chunks",
    [b"ffffffffffffffffff\r\nabc\r\n", b"-3\r\nabc\r\n", b"zz\r\nabc\r\n", b"3\r\nabcdef\r\n"],
)
async def test_bad_chunk_sizes_fail_the_body(serve, client, chunks):
    server = await serve(
        lambda r: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    response = await client.request("GET", url(server))
    with pytest.raises(h1.RemoteProtocolError):
        await response.read()


async def test_chunk_extensions_are_ignored(serve, client):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0;z\r\n\r\n"
    server = await serve(lambda r: answer)
    assert await get(client, server) == (200, b"abc")


async def test_a_flood_of_tiny_headers_is_refused(serve):
    # Bytes alone bound it loosely (an empty header is 4 bytes on the wire, and each one
    # costs a Python call and a multidict entry): the count is bounded too.
    flood = b"HTTP/1.1 200 OK\r\n" + b"a:\r\n" * (MAX_HEADERS + 1) + b"Content-Length: 0\r\n\r\n"
    server = await serve(lambda r: flood)
    async with h1.Client() as client:
        with pytest.raises(h1.HeadTooLarge, match="headers"):
            await client.request("GET", url(server))


async def test_a_huge_status_line_is_refused(serve):
    server = await serve(lambda r: b"HTTP/1.1 200 " + b"A" * 100_000 + b"\r\n\r\n")
    async with h1.Client(max_head_bytes=4096) as client:
        with pytest.raises(h1.HeadTooLarge):
            await client.request("GET", url(server))


# --- the pool only takes back connections that can serve the next call ---------------------


async def test_a_connection_paused_for_a_big_body_is_resumed_before_it_is_reused(serve):
    # An error answer larger than the high-water mark, complete but never read (released
    # at once, as a 5xx before a retry is): its socket was paused. Pooled paused, the next
    # call's answer would never be read, and the idle timer ignores our own pause.
    big = b"HTTP/1.1 503 Busy\r\nContent-Length: 153600\r\n\r\n" + b"e" * 153600
    server = await serve(first_then_ok(big))
    async with h1.Client(timeouts=h1.Timeouts(connect=5, read=1)) as client:
        response = await client.request("GET", url(server))
        for _ in range(100):
            if response.content._eof:
                break
            await asyncio.sleep(0.01)
        response.release()
        assert await asyncio.wait_for(get(client, server), 3) == (200, b"next call")
    assert server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve, client):
    server = await serve(lambda r: ok(b"fine"))
    assert await get(client, server) == (200, b"fine")
    for writer in server.writers:  # the server's own keep-alive timeout
        writer.close()
    await asyncio.sleep(0.05)
    assert await get(client, server) == (200, b"fine")  # not a ConnectionDropped
    assert server.connections == 2


async def test_an_answer_before_the_request_body_is_sent_does_not_pool_the_connection():
    # The server answers (413) after the head, never reading the body: our unsent body
    # bytes would reach it as the start of the next request on that connection.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with h1.Client(timeouts=h1.Timeouts(connect=5, read=1)) as client:
        response = await asyncio.wait_for(
            client.request("POST", f"http://127.0.0.1:{port}/", body=b"x" * (32 << 20)), 3
        )
        assert response.status == 413
        await response.read()
        assert not any(client._idle.values())
    server.close()


# --- every wait ends ---------------------------------------------------------------------------


async def test_a_server_that_never_reads_the_request_is_a_read_timeout():
    # The idle limit counts while the request is written too: a body the server never
    # takes (a full TCP window) must not hold the call (and its pool slot) forever.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with h1.Client(timeouts=h1.Timeouts(connect=5, read=0.3)) as client:
        with pytest.raises(h1.ReadTimeout):
            await asyncio.wait_for(
                client.request("POST", f"http://127.0.0.1:{port}/", body=b"x" * (32 << 20)), 3
            )
        await asyncio.sleep(0.05)
        assert client._open == 0  # the connection is gone, not left flushing
    server.close()


class _Transport:
    """Just enough of a transport to drive a Connection by hand."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_a_body_ended_by_eof_in_the_same_turn_as_its_head_is_complete():
    # TLS (or uvloop) can hand over the last bytes and the end of the stream in one loop
    # turn, before the caller has resumed with the head: still a complete body.
    loop = asyncio.get_running_loop()
    conn = Connection(
        loop,
        ("http", "gateway", 80),
        httptools.HttpResponseParser,
        read_buffer=read_buffer(),
        read_timeout=None,
        on_idle=lambda c: None,
    )
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    sending = asyncio.ensure_future(conn.send(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n", b""))
    await asyncio.sleep(0)
    conn.data_received(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    conn.eof_received()
    response = await sending
    assert await response.read() == b"until the end"


async def test_head_is_refused_up_front(serve, client):
    # llhttp cannot be told an answer is to a HEAD: it would wait for Content-Length bytes.
    server = await serve(lambda r: ok())
    with pytest.raises(ValueError, match="HEAD"):
        await client.request("HEAD", url(server))
    assert server.connections == 0


# --- the egress proxy ----------------------------------------------------------------------


async def test_bytes_after_the_proxys_200_are_refused():
    # Whatever follows "200" before our TLS hello is not the origin's: never parsed.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        await asyncio.sleep(1)
        writer.close()

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    async with h1.Client(proxy_for=lambda origin: f"http://127.0.0.1:{port}") as client:
        with pytest.raises(h1.ConnectError, match="bytes after"):
            await client.request("POST", "https://gateway.invalid/api", body=b"{}")
    proxy.close()


async def test_a_tunnel_to_an_ipv6_origin_names_it_in_brackets():
    proxy = ConnectProxy(refuse=True)
    await proxy.start()
    async with h1.Client(proxy_for=lambda origin: proxy.url) as client:
        with pytest.raises(h1.ConnectError):
            await client.request("GET", "https://[2001:db8::1]:8443/")
    assert proxy.lines == ["CONNECT [2001:db8::1]:8443 HTTP/1.1"]
    await proxy.close()


# --- connecting ----------------------------------------------------------------------------


async def test_every_address_of_the_gateway_is_tried_until_one_connects(serve, monkeypatch):
    # A dead first address (an A record of a drained node, an AAAA without an IPv6
    # route) failed every call; aiohttp's connector tries the next one.
    server = await serve(lambda r: ok(b"second address"))
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: refused
    loop = asyncio.get_running_loop()
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        asked.append(host)
        stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*stream, ("127.0.0.1", dead_port)), (*stream, ("127.0.0.1", server.port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    async with h1.Client() as client:
        response = await client.request("GET", "http://gateway.test/")
        assert await response.read() == b"second address"
    assert asked == ["gateway.test"]
