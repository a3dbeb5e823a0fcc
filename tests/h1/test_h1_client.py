"""The h1 client against scripted servers: bodies of every framing, keep-alive, the pool's
bound, idle expiry, flow control, timeouts, and failures classed by whether a byte was sent."""

from __future__ import annotations

import asyncio
import gzip

import pytest
from support.scripted import ScriptedServer, chunked, ok, url

from blockrun_proxy import h1
from blockrun_proxy.h1 import client as client_module
from blockrun_proxy.h1.connection import HIGH_WATER, READ_SIZE


@pytest.fixture
async def client():
    c = h1.Client(h1.Limits(max_connections=4), h1.Timeouts(connect=5, read=5))
    yield c
    await c.close()


async def test_content_length_body_and_the_request_as_sent(serve, client):
    server = await serve(lambda r: ok(b"answer", headers="X-Thing: 1\r\n"))
    response = await client.request(
        "POST", url(server, "/v1/x?q=1"), {"Content-Type": "application/json"}, b'{"a":1}'
    )
    assert (response.status, response.reason) == (200, "OK")
    assert response.headers["x-thing"] == "1"
    assert response.content_length == 6
    assert await response.read() == b"answer"
    (request,) = server.requests
    assert request.line == "POST /v1/x?q=1 HTTP/1.1"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == b'{"a":1}'
    assert "accept-encoding" not in request.headers  # none added: the caller forwards its own


async def test_chunked_body_is_handed_over_whole_and_unframed(serve, client):
    pieces = [b"data: %d\n\n" % i for i in range(100)]
    server = await serve(lambda r: chunked(*pieces))
    async with await client.request("POST", url(server), body=b"{}") as response:
        got = b""
        while piece := await response.content.readany():
            got += piece
        assert response.content.at_eof()
    assert got == b"".join(pieces)


async def test_body_delimited_by_the_connection_end(serve, client):
    server = await serve(lambda r: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    response = await client.request("GET", url(server))
    assert await response.read() == b"until the end"
    # Not reusable: the next request opens a new connection.
    response = await client.request("GET", url(server))
    await response.read()
    assert server.connections == 2


async def test_compressed_bodies_pass_through_untouched(serve, client):
    packed = gzip.compress(b"data: hello\n\n" * 50)
    server = await serve(lambda r: ok(packed, headers="Content-Encoding: gzip\r\n"))
    response = await client.request("POST", url(server), {"Accept-Encoding": "gzip"}, b"{}")
    assert response.headers["Content-Encoding"] == "gzip"
    assert await response.read() == packed
    assert server.requests[0].headers["accept-encoding"] == "gzip"


async def test_keep_alive_reuses_one_connection(serve, client):
    server = await serve(lambda r: chunked(b"x" * 10))
    for _ in range(5):
        async with await client.request("POST", url(server), body=b"{}") as response:
            await response.content.read()
    assert server.connections == 1
    assert [r.connection for r in server.requests] == [1] * 5


async def test_an_unread_body_closes_its_connection(serve, client):
    server = await serve(lambda r: ok(b"x" * (8 * 1024 * 1024)))
    response = await client.request("GET", url(server))
    await response.content.readany()  # some of it, not all: it cannot all be here yet
    response.release()
    await (await client.request("GET", url(server))).read()
    assert server.connections == 2


async def test_the_pool_never_opens_more_than_its_limit(serve):
    release = asyncio.Event()
    server = await serve(lambda r: ok(b"done"))
    client = h1.Client(h1.Limits(max_connections=2), h1.Timeouts(connect=5, read=5))

    async def call() -> bytes:
        response = await client.request("GET", url(server))
        await release.wait()  # hold the connection
        return await response.read()

    tasks = [asyncio.create_task(call()) for _ in range(6)]
    await asyncio.sleep(0.2)
    assert server.peak_connections == 2
    release.set()
    assert await asyncio.gather(*tasks) == [b"done"] * 6
    assert server.connections == 2  # the waiting four reused them
    await client.close()


async def test_a_caller_beyond_the_limit_gets_connect_error_after_the_connect_timeout(serve):
    server = await serve(lambda r: ok())
    client = h1.Client(h1.Limits(max_connections=1), h1.Timeouts(connect=0.2, read=5))
    held = await client.request("GET", url(server))
    with pytest.raises(h1.ConnectError, match="no free upstream connection"):
        await client.request("GET", url(server))
    held.release()
    await client.close()


async def test_idle_connections_close_after_the_keepalive_expiry(serve, monkeypatch):
    monkeypatch.setattr(client_module, "SWEEP_EVERY", 0.05)
    server = await serve(lambda r: ok())
    client = h1.Client(h1.Limits(max_connections=4, keepalive_expiry=0.1))
    await (await client.request("GET", url(server))).read()
    assert server.open_connections == 1
    for _ in range(100):
        if server.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert server.open_connections == 0
    await (await client.request("GET", url(server))).read()  # a fresh one is opened
    assert server.connections == 2
    await client.close()


async def test_a_connection_past_its_expiry_is_not_reused_even_before_the_sweep(serve):
    server = await serve(lambda r: ok())
    client = h1.Client(h1.Limits(max_connections=4, keepalive_expiry=0.05))
    await (await client.request("GET", url(server))).read()
    await asyncio.sleep(0.1)  # expired; the sweep (every 5 s) has not run
    await (await client.request("GET", url(server))).read()
    assert server.connections == 2
    await client.close()


async def test_a_slow_reader_pauses_the_socket_instead_of_buffering(serve, client):
    server = await serve(lambda r: ok(b"z" * (8 * 1024 * 1024)))
    response = await client.request("GET", url(server))
    await asyncio.sleep(0.3)  # the server writes as fast as it can; nobody reads
    buffered = response.content._size
    # One socket read past the mark at most, and reads are READ_SIZE, not asyncio's 256 KiB.
    assert HIGH_WATER < buffered <= HIGH_WATER + READ_SIZE
    total = len(await response.read())
    assert total == 8 * 1024 * 1024


async def test_connection_refused_is_a_connect_error(client):
    with pytest.raises(h1.ConnectError):
        await client.request("GET", "http://127.0.0.1:9/")


async def test_no_answer_within_the_idle_limit_is_a_read_timeout(serve):
    server = await serve(lambda r: b"")  # reads the request, never answers
    client = h1.Client(timeouts=h1.Timeouts(connect=5, read=0.2))
    with pytest.raises(h1.ReadTimeout):
        await client.request("GET", url(server))
    assert isinstance(h1.ReadTimeout(), TimeoutError)  # callers' timeout handling applies
    await client.close()


async def test_a_stalled_body_is_a_read_timeout_after_the_bytes_so_far(serve):
    server = await serve(lambda r: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    client = h1.Client(timeouts=h1.Timeouts(connect=5, read=0.2))
    response = await client.request("GET", url(server))
    assert await response.content.readany() == b"partial"
    with pytest.raises(h1.ReadTimeout):
        await response.content.readany()
    response.release()
    await client.close()


async def test_a_connection_dropped_mid_body_raises_after_the_bytes_so_far(serve, client):
    server = await serve(lambda r: None)  # closes without answering
    with pytest.raises(h1.ConnectionDropped):
        await client.request("GET", url(server))

    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"

    def answer_then_close(request):
        return truncated

    server2 = await serve(answer_then_close)
    response = await client.request("GET", url(server2))
    # The scripted server keeps the connection open; close it from the server side.
    await asyncio.sleep(0.05)
    for writer in server2.writers:
        writer.close()
    assert await response.content.readany() == b"only this"
    with pytest.raises(h1.ConnectionDropped):
        await response.content.readany()


async def test_invalid_http_is_a_remote_protocol_error(serve, client):
    server = await serve(lambda r: b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(h1.RemoteProtocolError):
        await client.request("GET", url(server))
    bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n"
    server2 = await serve(lambda r: bad_chunk)
    response = await client.request("GET", url(server2))
    with pytest.raises(h1.RemoteProtocolError):
        await response.read()


async def test_informational_heads_are_skipped(serve, client):
    server = await serve(lambda r: b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"y"))
    response = await client.request("GET", url(server))
    assert response.status == 200
    assert "link" not in response.headers
    assert await response.read() == b"y"


async def test_a_cancelled_request_drops_its_connection(serve, client):
    server = await serve(lambda r: b"")  # never answers
    task = asyncio.create_task(client.request("GET", url(server)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if server.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert server.open_connections == 0
    assert client._open == 0  # its room in the pool is free again


async def test_header_injection_is_refused_before_connecting(serve, client):
    server = await serve(lambda r: ok())
    with pytest.raises(ValueError, match="line break"):
        await client.request("GET", url(server), {"X-Id": "a\r\nEvil: 1"})
    assert server.connections == 0


def test_runs_on_uvloop_too():
    # uvloop's transports are not asyncio.Transport instances (a check once refused them).
    uvloop = pytest.importorskip("uvloop")

    async def main() -> bytes:
        server = await ScriptedServer(lambda r: chunked(b"a", b"b")).start()
        client = h1.Client()
        try:
            return await (await client.request("GET", url(server))).read()
        finally:
            await client.close()
            await server.close()

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == b"ab"
    finally:
        loop.close()


async def test_an_endless_response_head_is_refused(serve, client):
    # A hostile gateway cannot grow the head without bound (64 KiB at most).
    flood = b"HTTP/1.1 200 OK\r\n" + b"X-Junk: " + b"a" * 1000 + b"\r\n"
    server = await serve(lambda r: flood + b"X-More: b\r\n" * 10_000)
    with pytest.raises(h1.HeadTooLarge):  # too long, or too many headers: whichever first
        await client.request("GET", url(server))


async def test_one_endless_header_line_is_refused_too(serve):
    # llhttp keeps a header's pieces until the line ends: the bound counts bytes received.
    server = await serve(lambda r: b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 1_000_000)
    async with h1.Client(max_head_bytes=4096) as client:
        with pytest.raises(h1.HeadTooLarge, match="head longer than 4096"):
            await client.request("GET", url(server))


async def test_content_length_only_where_a_body_is_expected(serve, client):
    server = await serve(lambda r: ok())
    await (await client.request("GET", url(server))).read()
    await (await client.request("POST", url(server))).read()
    await (await client.request("DELETE", url(server))).read()
    lengths = [r.headers.get("content-length") for r in server.requests]
    assert lengths == [None, "0", "0"]  # as aiohttp's client sends them


async def test_a_head_over_the_bound_is_refused_even_when_it_arrives_in_one_read(serve):
    # Whole header lines, all in the first read: counted as llhttp completes them.
    big = b"HTTP/1.1 402 Payment Required\r\nPAYMENT-REQUIRED: " + b"A" * 6000 + b"\r\n"
    server = await serve(lambda r: big + b"Content-Length: 0\r\n\r\n")
    async with h1.Client(max_head_bytes=4096) as client:
        with pytest.raises(h1.HeadTooLarge):
            await client.request("GET", url(server))


async def test_close_ends_an_answer_still_awaited_and_frees_the_pool(serve):
    server = await serve(lambda r: b"")  # never answers
    client = h1.Client(h1.Limits(max_connections=1))
    task = asyncio.create_task(client.request("GET", url(server)))
    await asyncio.sleep(0.1)
    await client.close()  # as aiohttp's session closes its connections in use
    with pytest.raises(h1.ConnectionDropped):
        await asyncio.wait_for(task, 2)
    assert client._open == 0 and not client._conns


async def test_a_cancellation_as_the_connection_completes_is_not_lost(serve, client):
    # asyncio.wait_for on 3.11 returned the new connection instead of the cancellation
    # that arrived with it; the caller then waited on an answer nobody would send (the
    # in-process provider's shutdown hung on a catalogue fetch that way).
    server = await serve(lambda r: b"")  # never answers
    open_connection = client._open_connection
    task: asyncio.Task[h1.Response] | None = None

    async def then_cancelled(*args):
        conn = await open_connection(*args)
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)
        return conn

    client._open_connection = then_cancelled
    task = asyncio.create_task(client.request("GET", url(server)))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    for _ in range(50):
        if client._open == 0:
            break
        await asyncio.sleep(0.02)
    assert client._open == 0
