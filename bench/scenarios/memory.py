"""Memory held by the proxy: against a slow reader, at idle, and how fast it starts."""

from __future__ import annotations

import asyncio

from bench.budget import Budget
from bench.deploy import compile_checkout, deploy_python
from bench.load import RssSampler, measure_startup, median, slow_read
from bench.procs import free_port
from bench.reference import reference_argv, reference_env
from bench.report import Check, at_most, info
from bench.stack import (
    FREE_MODEL,
    Stack,
    api_url,
    chat_body,
    chat_url,
    proxy_argv,
    proxy_env,
    repo_env,
)

SETTLE_S = 0.5
EVENT_BYTES = 1024


async def slow_reader(budget: Budget) -> list[Check]:
    """A 1 KB/s reader of a 50 MiB upstream body: proxy RSS growth <= 2 MiB."""
    name = "slow_reader"
    events = budget.slow_reader_body_mib * 1024 * 1024 // EVENT_BYTES
    async with Stack() as stack:
        upstream = await stack.upstream(events=events, interval=0.0, event_bytes=EVENT_BYTES)
        proxy = await stack.proxy(upstream)
        await asyncio.sleep(SETTLE_S)
        baseline_kb = proxy.rss_kb()
        async with RssSampler(proxy.pid, interval_s=0.1) as rss:
            read = await slow_read(
                chat_url(proxy),
                chat_body(FREE_MODEL, stream=True),
                rate_bytes_per_s=budget.slow_reader_rate,
                duration_s=budget.slow_reader_seconds,
            )
    growth_kb = rss.peak_kb - baseline_kb
    return [
        at_most(
            name,
            "RSS growth",
            growth_kb / 1024,
            "MiB",
            limit=2.0,
            note=f"read {read / 1024:.0f} KiB in {budget.slow_reader_seconds:.0f} s; "
            f"baseline {baseline_kb / 1024:.1f} MiB",
        )
    ]


async def startup(budget: Budget) -> list[Check]:
    """Seconds from spawn to /healthz 200 (<= 0.3 s) and idle RSS (<= 40 MiB), in a venv
    with the runtime dependencies only (as deployed); the dev environment and the
    aiohttp floor beside it."""
    name = "startup"
    seconds: list[float] = []
    rss_kb: list[int] = []
    dev_seconds: list[float] = []
    dev_rss_kb: list[int] = []
    floor_seconds: list[float] = []
    floor_rss_kb: list[int] = []
    checks: list[Check] = []
    deployed = str(deploy_python())
    compile_checkout()
    async with Stack() as stack:
        gateway = await stack.gateway(events=budget.relay_events, interval=0.0, verify="fast")
        upstream = api_url(gateway)
        for _ in range(budget.startup_runs):
            # Interleaved, so the machine's load moves all three alike.
            port = free_port()
            argv = proxy_argv(port, upstream, python=deployed)
            result = await measure_startup("proxy-startup", argv, port=port, env=proxy_env())
            seconds.append(result.seconds)
            rss_kb.append(result.rss_kb)
            port = free_port()
            argv = proxy_argv(port, upstream)
            result = await measure_startup("proxy-startup-dev", argv, port=port, env=proxy_env())
            dev_seconds.append(result.seconds)
            dev_rss_kb.append(result.rss_kb)
            port = free_port()
            argv = [deployed, "-m", "bench.floor", "--port", str(port), "--api-url", upstream]
            result = await measure_startup("floor-startup", argv, port=port, env=repo_env())
            floor_seconds.append(result.seconds)
            floor_rss_kb.append(result.rss_kb)
        checks.append(
            info(
                name,
                "dev environment (editable install, tools' .pth hooks)",
                median(dev_seconds),
                "s",
                note=f"idle RSS {median(dev_rss_kb) / 1024:.1f} MiB",
            )
        )
        checks.append(
            info(
                name,
                "aiohttp floor (bench/floor.py, same venv)",
                median(floor_seconds),
                "s",
                note=f"idle RSS {median(floor_rss_kb) / 1024:.1f} MiB: aiohttp's server and "
                "client imports alone",
            )
        )
        if budget.reference_startup:
            port = free_port()
            ref = await measure_startup(
                "reference-startup",
                reference_argv(port, api_url(gateway)),
                port=port,
                env=reference_env(),
                timeout_s=120.0,
            )
            checks.append(
                info(
                    name,
                    "reference startup",
                    ref.seconds,
                    "s",
                    note=f"idle RSS {ref.rss_kb / 1024:.0f} MiB",
                )
            )
    checks[:0] = [
        at_most(
            name,
            "to /healthz",
            median(seconds),
            "s",
            limit=0.3,
            note=f"median of {len(seconds)}, min {min(seconds):.3f} s, max {max(seconds):.3f} s; "
            "runtime-deps venv, bytecode compiled",
        ),
        at_most(
            name,
            "idle RSS",
            median(rss_kb) / 1024,
            "MiB",
            limit=40.0,
            note=f"median; max {max(rss_kb) / 1024:.1f} MiB",
        ),
    ]
    return checks
