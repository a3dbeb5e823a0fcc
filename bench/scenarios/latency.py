"""Latency the proxy adds: first byte on an idle path, and thousands of slow streams."""

from __future__ import annotations

import re
import resource

import aiohttp

from bench.budget import Budget
from bench.load import RssSampler, percentile, run_streams, ttfb_samples
from bench.report import Check, added_at_most, at_most, info, ratio_at_most
from bench.stack import FREE_MODEL, Stack, chat_body, chat_url

TTFB_BATCH = 50
TTFB_WARMUP = 50


async def ttfb_added(budget: Budget) -> list[Check]:
    """p50 time to first byte through the proxy minus direct to the gateway (<= 1 ms, free)."""
    name = "ttfb"
    body = chat_body(FREE_MODEL, stream=True)
    direct: list[float] = []
    proxied: list[float] = []
    floored: list[float] = []
    relayed: list[float] = []
    async with Stack() as stack:
        gateway = await stack.gateway(events=budget.relay_events, interval=0.0, verify="fast")
        proxy = await stack.proxy(gateway)
        floor = await stack.floor(gateway)
        nginx = await stack.nginx(gateway)
        urls = {
            "direct": (chat_url(gateway, direct=True), direct),
            "proxy": (chat_url(proxy), proxied),
            "floor": (chat_url(floor), floored),
            "nginx": (chat_url(nginx), relayed),
        }
        for url, _ in urls.values():
            await ttfb_samples(url, body, count=TTFB_WARMUP)
        # Alternate small batches so drift (CPU frequency, other load) hits all alike.
        while len(proxied) < budget.ttfb_samples:
            for url, samples in urls.values():
                samples += await ttfb_samples(url, body, count=TTFB_BATCH)
    ours_ms = percentile(proxied, 50) * 1000
    direct_ms = percentile(direct, 50) * 1000

    def added(samples: list[float]) -> float:
        return percentile(samples, 50) * 1000 - direct_ms

    return [
        added_at_most(
            name,
            "p50 TTFB added",
            ours_ms,
            "ms",
            baseline_label="direct",
            baseline=direct_ms,
            max_added=1.0,
            note=f"p99 ours {percentile(proxied, 99) * 1000:.2f} ms, "
            f"direct {percentile(direct, 99) * 1000:.2f} ms; n={len(proxied)}",
        ),
        info(
            name,
            "p50 TTFB, aiohttp floor",
            percentile(floored, 50) * 1000,
            "ms",
            note=f"+{added(floored):.2f} ms over direct (bench/floor.py)",
        ),
        info(
            name,
            "p50 TTFB, nginx",
            percentile(relayed, 50) * 1000,
            "ms",
            note=f"+{added(relayed):.2f} ms over direct",
        ),
    ]


async def slow_streams(budget: Budget) -> list[Check]:
    """N concurrent streams of 20 events 500 ms apart, through a proxy with default limits
    (no --max-concurrent: sized from the open-files limit): p50 within 15% of direct,
    <= 20 KiB RSS per stream."""
    name = "slow_streams"
    n = budget.slow_streams
    body = chat_body(FREE_MODEL, stream=True)
    stream_s = budget.slow_stream_events * budget.slow_stream_interval_s
    run_timeout = stream_s + budget.slow_stream_ramp_s + 60.0
    async with Stack() as stack:
        # The bench's own upstream, not the fake gateway: both are Python on the same two
        # cores, and the fake gateway's per-event work (x402 bookkeeping, a JSON frame
        # built per event) saturates a core at these rates before any relay is involved,
        # which then measures how much CPU the relay leaves to the gateway, not latency.
        gateway = await stack.upstream(
            events=budget.slow_stream_events, interval=budget.slow_stream_interval_s
        )
        proxy = await stack.proxy(gateway)  # default limits: they must carry the load
        direct = await run_streams(
            chat_url(gateway, direct=True),
            body,
            concurrency=n,
            total=n,
            ramp_s=budget.slow_stream_ramp_s,
            timeout_s=run_timeout,
        )
        baseline_kb = proxy.rss_kb()
        cpu_before = proxy.cpu_s()
        async with RssSampler(proxy.pid, interval_s=0.25) as rss:
            ours = await run_streams(
                chat_url(proxy),
                body,
                concurrency=n,
                total=n,
                ramp_s=budget.slow_stream_ramp_s,
                timeout_s=run_timeout,
            )
        proxy_cpu = proxy.cpu_s() - cpu_before
        admitted = await admission_limit(proxy.url)
        # The same streams through the h1 floor (aiohttp's server, the proxy's client, no
        # proxy layer): what holding a stream costs before the proxy adds anything.
        floor = await stack.floor(gateway, client="h1")
        floor_baseline_kb = floor.rss_kb()
        async with RssSampler(floor.pid, interval_s=0.25) as floor_rss:
            floor_run = await run_streams(
                chat_url(floor),
                body,
                concurrency=n,
                total=n,
                ramp_s=budget.slow_stream_ramp_s,
                timeout_s=run_timeout,
            )
    per_stream_kb = (rss.peak_kb - baseline_kb) / n
    floor_per_stream_kb = (floor_rss.peak_kb - floor_baseline_kb) / n
    return [
        ratio_at_most(
            name,
            f"p50 latency, {n} streams",
            ours.latency_p50_ms,
            "ms",
            baseline_label="direct",
            baseline=direct.latency_p50_ms,
            max_ratio=1.15,
            note=f"p99 ours {ours.latency_p99_ms:.0f} ms, direct {direct.latency_p99_ms:.0f} ms; "
            f"client CPU {ours.client_busy:.0%} (direct {direct.client_busy:.0%}), "
            f"proxy CPU {proxy_cpu / ours.elapsed_s:.0%}",
        ),
        at_most(
            name,
            "RSS growth per stream",
            per_stream_kb,
            "KiB",
            limit=20.0,
            note=f"baseline {baseline_kb / 1024:.1f} MiB, peak {rss.peak_kb / 1024:.1f} MiB; "
            f"h1 floor (bench/floor.py --client h1) {floor_per_stream_kb:.2f} KiB per stream"
            # A floor that failed streams held fewer than it is divided by: say so.
            + (f" ({floor_run.errors} of its streams failed)" if floor_run.errors else ""),
        ),
        info(
            name,
            "default admission limit",
            float(admitted or 0),
            "streams",
            note=f"no --max-concurrent: sized from RLIMIT_NOFILE {open_files_limit()}; "
            f"streams held at that limit: about {(admitted or 0) * per_stream_kb / 1024:.0f} "
            f"MiB over idle (per-stream RSS above)",
        ),
        at_most(
            name,
            "proxy errors",
            float(ours.errors),
            "",
            limit=0,
            note="; ".join(ours.error_samples),
        ),
        info(
            name,
            "direct errors",
            float(direct.errors),
            "",
            note="; ".join(direct.error_samples),
        ),
    ]


def open_files_limit() -> int:
    """The limit the proxy sees: it raises its soft limit to the hard one it inherits."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


async def admission_limit(base_url: str) -> int | None:
    """The proxy's admission limit, from its own /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^blockrun_proxy_max_concurrent (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else None
