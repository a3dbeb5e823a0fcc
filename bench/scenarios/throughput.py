"""Requests per second through each relay, measured with wrk in the same run."""

from __future__ import annotations

import json
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


def _cpu_note(rate: Rate, events: int) -> str:
    if not rate.cpu_us_per_request:
        return ""
    return (
        f"{rate.cpu_us_per_request:.0f} µs CPU/req, {rate.cpu_us_per_request / events:.2f} µs/event"
    )


async def _relay_shape(budget: Budget, *, static: bool) -> list[Check]:
    """One upstream shape: events as chunks (SSE as gateways send it) or one static body."""
    name = "relay"
    shape = "static upstream" if static else "event-per-chunk upstream"
    events = budget.relay_events
    body = chat_body(FREE_MODEL, stream=True)
    async with Stack() as stack:
        upstream = await stack.upstream(events=events, raw=True, static=static)
        relays: dict[str, tuple[str, Service | None]] = {
            "direct": (chat_url(upstream, direct=True), None)
        }
        nginx = await stack.nginx(upstream)
        relays["nginx"] = (chat_url(nginx), nginx)
        if not static:
            reference = await stack.reference(upstream)
            relays["reference"] = (chat_url(reference), reference)
        floor = await stack.floor(upstream)
        relays["aiohttp floor"] = (chat_url(floor), floor)
        h1_floor = await stack.floor(upstream, client="h1")
        relays["h1 floor"] = (chat_url(h1_floor), h1_floor)
        proxy = await stack.proxy(upstream)
        relays["proxy"] = (chat_url(proxy), proxy)
        rps = await _measure(relays, body, budget)
    ours = rps["proxy"]
    nginx_rps = rps["nginx"].rps
    checks = [
        info(name, f"{shape}, direct", rps["direct"].rps, "req/s", note=_note(rps["direct"])),
        at_least(
            name,
            f"{shape}: req/s vs nginx",
            ours.rps,
            "req/s",
            baseline_label="nginx",
            baseline=nginx_rps,
            min_ratio=0.30,
            note=_note(ours) + f"; nginx {_cpu_note(rps['nginx'], events)}",
        ),
        info(
            name,
            f"{shape}: CPU per request",
            ours.cpu_us_per_request or float("nan"),
            "µs",
            note=f"{(ours.cpu_us_per_request or 0) / events:.2f} µs per relayed event "
            f"({events} events); nginx {_cpu_note(rps['nginx'], events)}",
        ),
        at_most(name, f"{shape}: proxy errors", float(ours.errors), "", limit=0),
    ]
    if not static:
        checks.append(
            at_least(
                name,
                "req/s vs reference",
                ours.rps,
                "req/s",
                baseline_label="reference",
                baseline=rps["reference"].rps,
                min_ratio=8.0,
                note=f"reference {_note(rps['reference'])}",
            )
        )
    for label in ("aiohttp floor", "h1 floor"):
        checks.append(
            info(
                name,
                f"{shape}: {label} (bench/floor.py)",
                rps[label].rps,
                "req/s",
                note=f"{rps[label].rps / nginx_rps:.2f}x nginx; " + _note(rps[label]),
            )
        )
    return checks


async def relay_throughput(budget: Budget) -> list[Check]:
    """Free model, ~100-event SSE, 32 connections: proxy vs nginx (>= 0.3) on an upstream
    that sends one HTTP chunk per event and on one that sends the body in one write; vs
    the reference (>= 8) on the first; CPU per request and per relayed event.

    Judged over the bench's raw upstream, which serves tens of thousands of
    these streams a second, so each relay's own cost sets its rate. The same
    relays over the Python fake gateway are shown too: there the gateway is
    the ceiling (a few hundred req/s on this machine) and every relay nears it.
    """
    name = "relay"
    body = chat_body(FREE_MODEL, stream=True)
    checks = await _relay_shape(budget, static=False)
    checks += await _relay_shape(budget, static=True)
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
    checks += [
        info(name, f"via fake gateway, {label}", result.rps, "req/s", note=_note(result))
        for label, result in via_fake.items()
    ]
    return checks


async def _warm(url: str, body: Mapping[str, object]) -> None:
    # Teach the proxy its quote for this body before timing anything.
    warm = await run_streams(url, body, concurrency=1, total=PAID_WARMUP_CALLS, expect_tail=None)
    if warm.errors:
        raise RuntimeError(f"paid warm-up failed at {url}: {warm.error_samples}")


async def paid_throughput(budget: Budget) -> list[Check]:
    """Paid non-streamed calls with warm quotes: proxy vs reference (>= 25x).

    Judged over the bench's raw paid upstream (`bench.upstream --raw --paid-body`): the
    fake gateway's 402 and paid 200 recorded once, then answered in microseconds, so the
    relays' own work (probe or not, sign, send, relay) sets the rates, as nginx's raw
    upstream does for `relay`. Through the Python fake gateway, which verifies every
    signature, the gateway is the ceiling; that rate is shown too.
    """
    name = "paid"
    body = chat_body(PAID_MODEL, stream=False)
    async with Stack() as stack:
        upstream = await stack.upstream(
            events=budget.relay_events, raw=True, paid_body=json.dumps(body, separators=(",", ":"))
        )
        reference = await stack.reference(upstream)
        proxy = await stack.proxy(upstream)
        relays = {
            "reference": (chat_url(reference), reference),
            "proxy": (chat_url(proxy), proxy),
        }
        for url, _ in relays.values():
            await _warm(url, body)
        rps = await _measure(relays, body, budget)
    async with Stack() as stack:
        gateway = await stack.gateway(events=budget.relay_events, interval=0.0, verify="fast")
        proxy = await stack.proxy(gateway)
        await _warm(chat_url(proxy), body)
        via_fake = await _measure({"proxy": (chat_url(proxy), proxy)}, body, budget)
    ours = rps["proxy"]
    return [
        at_least(
            name,
            "paid req/s vs reference",
            ours.rps,
            "req/s",
            baseline_label="reference",
            baseline=rps["reference"].rps,
            min_ratio=25.0,
            note=f"ours {_note(ours)}; reference {_note(rps['reference'])}",
        ),
        at_most(name, "proxy errors", float(ours.errors), "", limit=0),
        info(
            name,
            "via fake gateway (verifies each payment), proxy",
            via_fake["proxy"].rps,
            "req/s",
            note=_note(via_fake["proxy"]),
        ),
    ]
