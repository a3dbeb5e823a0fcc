"""Memory held by the proxy: against a slow reader, at idle, and how fast it starts."""

from __future__ import annotations

import asyncio

from bench.budget import Budget
from bench.load import RssSampler, measure_startup, median, slow_read
from bench.procs import free_port
from bench.reference import reference_argv, reference_env
from bench.report import Check, at_most, info
from bench.stack import FREE_MODEL, Stack, api_url, chat_body, chat_url, proxy_argv, proxy_env

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
    """Seconds from spawn to /healthz 200 (<= 0.5 s) and idle RSS (<= 60 MiB)."""
    name = "startup"
    seconds: list[float] = []
    rss_kb: list[int] = []
    checks: list[Check] = []
    async with Stack() as stack:
        gateway = await stack.gateway(events=budget.relay_events, interval=0.0, verify="fast")
        for _ in range(budget.startup_runs):
            port = free_port()
            result = await measure_startup(
                "proxy-startup", proxy_argv(port, api_url(gateway)), port=port, env=proxy_env()
            )
            seconds.append(result.seconds)
            rss_kb.append(result.rss_kb)
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
            limit=0.5,
            note=f"median of {len(seconds)}, max {max(seconds):.3f} s",
        ),
        at_most(name, "idle RSS", max(rss_kb) / 1024, "MiB", limit=60.0),
    ]
    return checks
