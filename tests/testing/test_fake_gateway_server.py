"""The fake as a real server: start()/close(), the standalone process, cheap import."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import aiohttp
import pytest
from support.calls import FREE_MODEL
from support.gateway_client import Payer, b64json, chat_body, requirement_of

from blockrun_proxy.testing import FakeGateway


async def test_start_serves_under_api_and_close_stops(payer: Payer) -> None:
    async with FakeGateway(verify="fast") as gw:
        assert gw.base_url is not None
        base = gw.base_url
        assert base.startswith("http://127.0.0.1:") and base.endswith("/api")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v1/models") as resp:
                assert resp.status == 200
            body = chat_body()
            async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                assert resp.status == 402
                required = b64json(resp.headers["PAYMENT-REQUIRED"])
                assert required["resource"]["url"] == f"{base}/v1/chat/completions"
                header = payer.pay(requirement_of(resp.headers["PAYMENT-REQUIRED"]))
            async with session.post(
                f"{base}/v1/chat/completions", json=body, headers={"PAYMENT-SIGNATURE": header}
            ) as resp:
                assert resp.status == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"{base}/v1/models")


async def test_client_hanging_up_mid_stream_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    gw = FakeGateway(stream_events=1000, event_interval=0.001)
    base = await gw.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp"):
            async with aiohttp.ClientSession() as session:
                body = chat_body(model=FREE_MODEL, stream=True)
                async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                    await resp.content.readline()
            gw.misbehave.reset_after_events = 2
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{base}/v1/chat/completions", json=body) as resp,
            ):
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
            await asyncio.sleep(0.05)
    finally:
        await gw.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_import_does_not_load_eth_account() -> None:
    code = (
        "import sys, blockrun_proxy.testing; "
        "bad = {'eth_account', 'coincurve', 'Crypto.Hash.keccak'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_standalone_process(payer: Payer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "blockrun_proxy.testing",
        "--port",
        "0",
        "--verify",
        "fast",
        "--stream-events",
        "3",
        "--job-polls",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        base = line.split()[-1]
        async with aiohttp.ClientSession() as session:
            body = chat_body(model=FREE_MODEL, stream=True)
            async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                raw = await resp.read()
        assert raw.count(b"data: ") == 1 + 3 + 1 + 1
        async with aiohttp.ClientSession() as session:
            video = {"prompt": "an apple"}
            async with session.post(f"{base}/v1/videos/generations", json=video) as resp:
                header = payer.pay(requirement_of(resp.headers["PAYMENT-REQUIRED"]))
            paid = {"PAYMENT-SIGNATURE": header}
            async with session.post(
                f"{base}/v1/videos/generations", json=video, headers=paid
            ) as resp:
                poll_url = (await resp.json())["poll_url"]
            origin = base.removesuffix("/api")
            async with session.get(origin + poll_url, headers=paid) as resp:
                assert resp.status == 200  # --job-polls 0: done on the first poll
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_standalone_refuses_bad_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "blockrun_proxy.testing", "--pay-to", "nobody"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "pay_to" in done.stderr
