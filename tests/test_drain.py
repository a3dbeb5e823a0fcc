"""Graceful shutdown: readiness, refusing new work, and a real SIGTERM to a real process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from support.calls import FREE_MODEL, JSON
from support.process import ProxyProcess
from support.servers import FIRST_FRAME, LAST_FRAME, HoldingUpstream, free_port, proxy_environ

from blockrun_proxy.app import ADMISSION_KEY

CHAT = orjson.dumps(
    {"model": FREE_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
)


@pytest.fixture
async def holding() -> AsyncIterator[HoldingUpstream]:
    upstream = HoldingUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


async def open_stream(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """POST a streamed chat and read its first frame: the stream is then surely in flight."""
    response = await session.post(url, data=CHAT, headers=JSON)
    assert response.status == 200
    assert await response.content.readuntil(b"\n\n") == FIRST_FRAME
    return response


async def refuses_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


# --------------------------------------------------------------------------- in process


async def test_draining_turns_readiness_off_and_refuses_new_work(start_proxy, holding):
    proxy = await start_proxy(api_url=holding.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["ready"] is True
        proxy.app[ADMISSION_KEY].start_draining()
        async with session.get(proxy.url + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["draining"] is True
        async with session.post(
            proxy.base_url + "/chat/completions", data=CHAT, headers=JSON
        ) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "proxy_draining"
            assert resp.headers["Connection"] == "close"  # go find a process that stays
        async with session.get(proxy.url + "/healthz") as resp:
            assert resp.status == 200  # liveness: draining is not dead
        async with session.get(proxy.url + "/metrics") as resp:
            assert resp.status == 200
    assert holding.started == 0


async def test_readyz_states_free_only_mode_without_a_wallet(start_proxy):
    proxy = await start_proxy(wallet_key=None)
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["ready"] is True
    assert body["wallet"] == "none: free models only"


# --------------------------------------------------------------------------- real SIGTERM


async def test_sigterm_finishes_open_streams_refuses_new_ones_and_exits_0(holding, tmp_path):
    proxy = await ProxyProcess.start(
        "--port", "0", "--api-url", holding.url, "--grace-seconds", "30",
        env=proxy_environ(tmp_path),
    )  # fmt: skip
    url = proxy.base_url + "/chat/completions"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            streams = [await open_stream(session, url) for _ in range(3)]
            proxy.signal()
            # New connections are refused while the three streams are still open.
            deadline = time.monotonic() + 10
            while not await refuses_connections(url):
                assert time.monotonic() < deadline, "still accepting after SIGTERM"
                await asyncio.sleep(0.02)
            assert proxy.proc.returncode is None  # still draining, not dead
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as fresh:
                    await fresh.post(url, data=CHAT, headers=JSON)
            holding.release.set()
            for response in streams:
                assert (await response.read()).endswith(LAST_FRAME)
                response.release()
        assert await proxy.wait(timeout=20) == 0
    finally:
        await proxy.kill()
    assert [line["status"] for line in proxy.access("/v1/chat/completions")] == [200, 200, 200]
    assert holding.finished == 3


async def test_streams_still_open_when_the_grace_ends_are_cut_and_exit_is_0(holding, tmp_path):
    proxy = await ProxyProcess.start(
        "--port", "0", "--api-url", holding.url, "--grace-seconds", "1",
        env=proxy_environ(tmp_path),
    )  # fmt: skip
    url = proxy.base_url + "/chat/completions"
    try:
        async with aiohttp.ClientSession() as session:
            response = await open_stream(session, url)
            started = time.monotonic()
            proxy.signal()
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()  # cut short: never a clean end to a half answer
            assert await proxy.wait(timeout=20) == 0
            elapsed = time.monotonic() - started
    finally:
        await proxy.kill()
    assert 0.9 <= elapsed < 10
    assert [line["status"] for line in proxy.access("/v1/chat/completions")] == [499]


async def test_the_grace_bounds_the_whole_exit(holding, tmp_path):
    """--grace-seconds 2 exited after 4.1 s: aiohttp waits the grace for handlers, then
    up to the grace again for the cancelled ones."""
    proxy = await ProxyProcess.start(
        "--port", "0", "--api-url", holding.url, "--grace-seconds", "2",
        env=proxy_environ(tmp_path),
    )  # fmt: skip
    url = proxy.base_url + "/chat/completions"
    try:
        async with aiohttp.ClientSession() as session:
            streams = [await open_stream(session, url) for _ in range(3)]  # never end
            started = time.monotonic()
            proxy.signal()
            assert await proxy.wait(timeout=20) == 0
            elapsed = time.monotonic() - started
            for response in streams:
                response.close()
    finally:
        await proxy.kill()
    # The drain keeps the grace's last 0.2 s for closing and the exit itself.
    assert 1.5 <= elapsed < 3.0, elapsed  # it was 4.1 s
    assert [line["status"] for line in proxy.access("/v1/chat/completions")] == [499] * 3


async def test_a_stalled_log_sink_does_not_hold_the_exit(tmp_path):
    """stderr is a pipe nobody reads: the log writer blocks in a write, and the exit must
    not wait on it (nor on the interpreter's own flush of stderr)."""
    port = free_port()
    # Popen, not asyncio: asyncio waits for the pipes to close, and this one stays full.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "blockrun_proxy", "serve", "--port", str(port),
         "--log-format", "json", "--grace-seconds", "1"],
        env=proxy_environ(tmp_path), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # each answer is an access line: far past a 64 KiB pipe
                for attempt in range(200):
                    try:
                        async with session.get(url) as resp:
                            assert resp.status == 200
                        break
                    except aiohttp.ClientConnectionError:
                        assert attempt < 199 and proc.poll() is None, "the proxy never answered"
                        await asyncio.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert time.monotonic() - started < 1 + 1.5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
