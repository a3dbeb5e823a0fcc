"""``serve --workers 2``: two processes on one port, metrics summed over both, clean exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import secrets
import signal
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.calls import FRACTIONAL_MODEL, JSON, TEST_NETWORK
from support.process import ProxyProcess
from support.servers import free_port, proxy_environ, until

from blockrun_proxy.config import Settings
from blockrun_proxy.limits import Limits
from blockrun_proxy.testing import FakeGateway
from blockrun_proxy.workers import PACKAGE_ROOT, worker_command, worker_environ

CALLS = 24


def auto_limit() -> int:
    """What a worker's unset --max-concurrent becomes: its soft limit is raised to the hard."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = -1 if hard == resource.RLIM_INFINITY else hard
    return Limits.from_settings(Settings(), open_files=files).max_concurrent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_two_workers_share_the_port_sum_their_metrics_and_exit_0(tmp_path, wallet_key):
    gateway = FakeGateway(network=TEST_NETWORK)
    await gateway.start()
    port = free_port()
    proxy = await ProxyProcess.start(
        "--workers", "2", "--port", str(port), "--api-url", str(gateway.base_url),
        "--networks", TEST_NETWORK,
        env=proxy_environ(tmp_path, BLOCKRUN_WALLET_KEY=wallet_key),
        listeners=2,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    body = orjson.dumps(
        {"model": FRACTIONAL_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    )
    try:
        # A fresh connection per call, so the kernel picks a worker for each.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(CALLS):
                async with session.post(
                    base + "/v1/chat/completions", data=body, headers=JSON
                ) as resp:
                    assert resp.status == 200
            key = ("blockrun_proxy_requests_total",
                   (("route", "/v1/chat/completions"), ("status", "200")))  # fmt: skip

            async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                async with session.get(base + "/metrics") as resp:
                    assert resp.status == 200
                    return samples(await resp.text())

            # A worker counts a call just after its last byte went out: wait for that.
            for _ in range(200):
                if (await scrape()).get(key) == CALLS:
                    break
                await asyncio.sleep(0.05)
            # Every scrape, whichever worker answers it, reports the sum over both.
            for _ in range(6):
                values = await scrape()
                assert values[key] == CALLS
                assert values[("blockrun_proxy_payments_sent_total", ())] == CALLS
                settled = sum(s.amount for s in gateway.settled)
                assert values[("blockrun_proxy_settled_micro_usdc_total", ())] == settled
                # Each worker sizes its limit from its own (raised) open-files limit.
                assert values[("blockrun_proxy_max_concurrent", ())] == 2 * auto_limit()
        await until(lambda: len(proxy.access("/v1/chat/completions")) >= CALLS)
        pids = {line["pid"] for line in proxy.access("/v1/chat/completions")}
        assert len(pids) == 2, "both workers should have served"
        proxy.signal()
        assert await proxy.wait(timeout=30) == 0
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"worker {pid} outlived the supervisor")
    finally:
        await proxy.kill()
        await gateway.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"workers": 2, "port": 0}, "fixed --port"),
        ({"workers": 0}, "--workers"),
        ({"max_queue": -1}, "--max-queue"),
        ({"queue_timeout_seconds": 0}, "--queue-timeout"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_start(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings(**fields).check()


def test_children_get_the_parents_options_and_code_but_no_secret_on_the_command_line():
    from click.testing import CliRunner

    from blockrun_proxy import cli

    seen: dict[str, object] = {}

    def fake_supervise(options, workers, secrets, extra_env=None):
        seen.update(options=options, workers=workers, secrets=secrets, extra_env=extra_env)
        return 0

    redis_url = "redis://:hunter2@redis:6379/0"  # a password in the URL
    env = {"BLOCKRUN_WALLET_KEY": "0x" + "11" * 32, "BLOCKRUN_PROXY_TOKEN": "tok",
           "BLOCKRUN_PROXY_MAX_QUEUE": "7", "BLOCKRUN_PROXY_REDIS_URL": redis_url}  # fmt: skip
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # serve sets up the process's logging
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("blockrun_proxy.workers.supervise", fake_supervise)
        mp.setattr(root, "handlers", handlers)
        mp.setattr(root, "level", level)
        result = CliRunner().invoke(
            cli.main,
            ["serve", "--workers", "3", "--port", "4100", "--pay-to", "0xA", "--pay-to", "0xB",
             "--log-level", "warning"],
            env=env,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    options = seen["options"]
    assert seen["workers"] == 3
    assert options[options.index("--port") + 1] == "4100"
    assert options[options.index("--max-queue") + 1] == "7"
    assert [options[i + 1] for i, o in enumerate(options) if o == "--pay-to"] == ["0xA", "0xB"]
    assert "--workers" not in options and "--demo" not in options
    assert not any("11" * 32 in o or o == "tok" or "hunter2" in o for o in options)
    # The secrets travel apart, through the pipe the supervisor gives each child.
    assert (seen["secrets"].wallet_key, seen["secrets"].token) == ("0x" + "11" * 32, "tok")
    assert "11" * 32 not in repr(seen["secrets"])
    assert seen["extra_env"] == {"BLOCKRUN_PROXY_REDIS_URL": redis_url}  # by environment
    command = worker_command(options)
    assert command[-3:] == ["--workers", "1", "--reuse-port"]
    env_for_child = worker_environ({"PYTHONPATH": "/x"}, "/tmp/m")
    assert env_for_child["PYTHONPATH"].split(os.pathsep) == [PACKAGE_ROOT, "/x"]
    assert env_for_child["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/m"


async def test_rpc_urls_reach_the_children_but_not_their_command_lines(tmp_path, wallet_key):
    """An RPC URL may carry a provider's API key in its path (Alchemy, Infura, Helius):
    ``ps`` shows every user a command line, so children get these URLs through their
    environment, as the Redis URL."""
    rpc_url = f"http://127.0.0.1:{free_port()}/v2/evm-provider-key-6c1f"  # nothing listens
    solana_url = "https://solana.example/?api-key=solana-provider-key-9d2e"
    gateway = FakeGateway(network=TEST_NETWORK)
    await gateway.start()
    proxy = await ProxyProcess.start(
        "--workers", "2", "--port", str(free_port()), "--api-url", str(gateway.base_url),
        "--networks", TEST_NETWORK, "--rpc-url", rpc_url, "--solana-rpc-url", solana_url,
        env=proxy_environ(tmp_path, BLOCKRUN_WALLET_KEY=wallet_key),
        listeners=2,
    )  # fmt: skip
    started = next(line for line in proxy.lines if "workers:" in line["msg"])
    children = [int(pid) for pid in started["msg"].split(":", 1)[1].split()]
    try:
        assert len(children) == 2
        for pid in children:
            cmdline = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
            assert b"--workers" in cmdline  # it is a child's
            assert b"provider-key" not in cmdline and b"--rpc-url" not in cmdline
        # Yet each child reads the balance from that URL (nothing listens there: the
        # failure is logged, with the endpoint's scheme and host only).
        await until(
            lambda: (
                {line["pid"] for line in proxy.lines if "balance read failed" in line["msg"]}
                == set(children)
            )
        )
        assert not any(b"provider-key" in raw for raw in proxy.raw)
        proxy.signal()
        assert await proxy.wait(timeout=30) == 0
    finally:
        for pid in children:  # a failed assertion must not leave them running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await proxy.kill()
        await gateway.close()


@pytest.mark.parametrize(
    ("redis_url", "per_worker"),
    [(None, "0.333333"), ("redis://redis:6379/0", "1")],
    ids=["split", "shared"],
)
def test_a_budget_held_per_process_is_split_so_the_workers_never_sign_more(redis_url, per_worker):
    # --budget-usd is a hard limit: three workers counting apart must not sign 3x it.
    from blockrun_proxy import cli

    seen: dict[str, list[str]] = {}

    def fake_supervise(options, workers, secrets, extra_env=None):
        seen["options"] = options
        return 0

    env = {"BLOCKRUN_WALLET_KEY": "0x" + secrets.token_hex(32)}
    if redis_url:
        env["BLOCKRUN_PROXY_REDIS_URL"] = redis_url
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("blockrun_proxy.workers.supervise", fake_supervise)
        mp.setattr(root, "handlers", handlers)
        mp.setattr(root, "level", level)
        from click.testing import CliRunner

        result = CliRunner().invoke(
            cli.main,
            ["serve", "--workers", "3", "--port", "4100", "--budget-usd", "1",
             "--log-level", "warning"],
            env=env,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    options = seen["options"]
    assert Decimal(options[options.index("--budget-usd") + 1]) == Decimal(per_worker)
