"""Requests per second through each relay, measured with wrk in the same run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench.budget import Budget
from bench.load import WrkResult, run_streams, run_wrk
from bench.procs import Service
from bench.report import Check, at_least, at_most, info
from bench.stack import FREE_MODEL, PAID_MODEL, Stack, chat_body, chat_url

WARMUP_SECONDS = 1.0
PAID_WARMUP_CALLS = 20


@dataclass(frozen=True)
class Rate:
    """The best wrk run at one URL, and the relay's CPU per request during it."""

    wrk: WrkResult
    cpu_us_per_request: float | None

    @property
    def rps(self) -> float:
        return self.wrk.rps

    @property
    def errors(self) -> int:
        return self.wrk.errors


async def _best_of(
    url: str, body: Mapping[str, object], budget: Budget, relay: Service | None
) -> Rate:
    """Warm up, then keep the best of `wrk_rounds` runs (noise on 2 cores is one-sided)."""
    await run_wrk(url, body, connections=budget.wrk_connections, duration_s=WARMUP_SECONDS)
    best: Rate | None = None
    for _ in range(budget.wrk_rounds):
        cpu_before = relay.cpu_s() if relay else 0.0
        result = await run_wrk(
            url, body, connections=budget.wrk_connections, duration_s=budget.wrk_seconds
        )
        cpu = (relay.cpu_s() - cpu_before) if relay else None
        per_request = cpu / result.requests * 1e6 if cpu is not None and result.requests else None
        if best is None or result.rps > best.rps:
            best = Rate(result, per_request)
    assert best is not None
    return best


def _note(rate: Rate) -> str:
    cpu = f", {rate.cpu_us_per_request:.0f} µs CPU/req" if rate.cpu_us_per_request else ""
    return f"p50 {rate.wrk.p50_ms:.1f} ms, p99 {rate.wrk.p99_ms:.1f} ms, errors {rate.errors}{cpu}"


async def _measure(
    relays: Mapping[str, tuple[str, Service | None]], body: Mapping[str, object], budget: Budget
) -> dict[str, Rate]:
    """`relays`: label -> (URL, the relay process to charge CPU to, or None for direct)."""
    return {
        label: await _best_of(url, body, budget, relay) for label, (url, relay) in relays.items()
    }


async def relay_throughput(budget: Budget) -> list[Check]:
    """Free model, ~100-event SSE, 32 connections: proxy vs nginx (>= 0.3) and reference (>= 8).

    Judged over the bench's raw upstream, which serves tens of thousands of
    these streams a second, so each relay's own cost sets its rate. The same
    relays over the Python fake gateway are shown too: there the gateway is
    the ceiling (a few hundred req/s on this machine) and every relay nears it.
    """
    name = "relay"
    body = chat_body(FREE_MODEL, stream=True)
    async with Stack() as stack:
        upstream = await stack.upstream(events=budget.relay_events, raw=True)
        nginx = await stack.nginx(upstream)
        reference = await stack.reference(upstream)
        floor = await stack.floor(upstream)
        proxy = await stack.proxy(upstream)
        rps = await _measure(
            {
                "direct": (chat_url(upstream, direct=True), None),
                "nginx": (chat_url(nginx), nginx),
                "reference": (chat_url(reference), reference),
                "aiohttp floor": (chat_url(floor), floor),
                "proxy": (chat_url(proxy), proxy),
            },
            body,
            budget,
        )
    async with Stack() as stack:
        gateway = await stack.gateway(events=budget.relay_events, interval=0.0, verify="fast")
        nginx = await stack.nginx(gateway)
        proxy = await stack.proxy(gateway)
        via_fake = await _measure(
            {
                "direct": (chat_url(gateway, direct=True), None),
                "nginx": (chat_url(nginx), nginx),
                "proxy": (chat_url(proxy), proxy),
            },
            body,
            budget,
        )
    ours = rps["proxy"]
    checks = [
        info(name, "raw upstream, direct", rps["direct"].rps, "req/s", note=_note(rps["direct"])),
        at_least(
            name,
            "req/s vs nginx",
            ours.rps,
            "req/s",
            baseline_label="nginx",
            baseline=rps["nginx"].rps,
            min_ratio=0.30,
            note=_note(ours),
        ),
        at_least(
            name,
            "req/s vs reference",
            ours.rps,
            "req/s",
            baseline_label="reference",
            baseline=rps["reference"].rps,
            min_ratio=8.0,
            note=f"reference {_note(rps['reference'])}",
        ),
        at_most(name, "proxy errors", float(ours.errors), "", limit=0),
        info(
            name,
            "aiohttp floor (bench/floor.py)",
            rps["aiohttp floor"].rps,
            "req/s",
            note=f"{rps['aiohttp floor'].rps / rps['nginx'].rps:.2f}x nginx; "
            + _note(rps["aiohttp floor"]),
        ),
    ]
    checks += [
        info(name, f"via fake gateway, {label}", result.rps, "req/s", note=_note(result))
        for label, result in via_fake.items()
    ]
    return checks


async def paid_throughput(budget: Budget) -> list[Check]:
    """Paid non-streamed calls with warm quotes: proxy vs reference (>= 10x)."""
    name = "paid"
    body = chat_body(PAID_MODEL, stream=False)
    async with Stack() as stack:
        gateway = await stack.gateway(events=budget.relay_events, interval=0.0, verify="fast")
        reference = await stack.reference(gateway)
        proxy = await stack.proxy(gateway)
        relays = {
            "reference": (chat_url(reference), reference),
            "proxy": (chat_url(proxy), proxy),
        }
        for url, _ in relays.values():
            # Teach the proxy its quote for this body before timing anything.
            warm = await run_streams(
                url, body, concurrency=1, total=PAID_WARMUP_CALLS, expect_tail=None
            )
            if warm.errors:
                raise RuntimeError(f"paid warm-up failed at {url}: {warm.error_samples}")
        rps = await _measure(relays, body, budget)
    ours = rps["proxy"]
    return [
        at_least(
            name,
            "paid req/s vs reference",
            ours.rps,
            "req/s",
            baseline_label="reference",
            baseline=rps["reference"].rps,
            min_ratio=10.0,
            note=f"ours {_note(ours)}; reference {_note(rps['reference'])}",
        ),
        at_most(name, "proxy errors", float(ours.errors), "", limit=0),
    ]
