"""CPU per relayed request, A/B, interleaved: the noise-robust side of the relay numbers.

    python -m bench.cpu [--rounds 5] [--seconds 4] [--shapes chunked,static]
        [--variant NAME=ENV=VALUE[,ENV=VALUE...]] [--python NAME=/path/to/python]

On a shared 2-core machine requests/s moves with whatever else runs; the CPU time a
relay spends per request moves much less (it is charged only for its own work). So
each round runs wrk (32 connections) against every relay in turn, the rounds
interleave the relays so drift hits all alike, and the table gives per relay the
median over rounds of: requests/s, its ratio to nginx *in the same round*, and the
relay process's CPU (user + system) per request and per relayed event.

Relays: direct (no relay), nginx, the aiohttp floor (bench/floor.py), the proxy, and
any proxy variants: `--variant NAME=KEY=VALUE,...` starts another proxy where each
KEY is an environment variable, except `python` (another interpreter, e.g. a venv in
bench/.work/py312, see bench/README.md), `uvloop=1` and `eager=1` (bench.loopvariant).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.install import ensure_tools
from bench.load import run_wrk
from bench.procs import Service, raise_nofile_limit
from bench.stack import FREE_MODEL, Stack, chat_body, chat_url

EVENTS = 100
CONNECTIONS = 32


@dataclass
class Samples:
    rps: list[float] = field(default_factory=list)
    vs_nginx: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0


@dataclass(frozen=True)
class Relay:
    name: str
    url: str
    service: Service | None  # None: direct, nothing to charge


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def _one(relay: Relay, seconds: float) -> tuple[float, float | None, int]:
    body = chat_body(FREE_MODEL, stream=True)
    before = relay.service.cpu_s() if relay.service else 0.0
    result = await run_wrk(relay.url, body, connections=CONNECTIONS, duration_s=seconds)
    cpu = relay.service.cpu_s() - before if relay.service else None
    per_req = cpu / result.requests * 1e6 if cpu is not None and result.requests else None
    return result.rps, per_req, result.errors


async def measure_shape(
    shape: str,
    rounds: int,
    seconds: float,
    variants: dict[str, dict[str, str]],
    *,
    floor: bool = True,
) -> dict[str, Samples]:
    async with Stack() as stack:
        upstream = await stack.upstream(events=EVENTS, raw=True, static=shape == "static")
        relays = [Relay("direct", chat_url(upstream, direct=True), None)]
        nginx = await stack.nginx(upstream)
        relays.append(Relay("nginx", chat_url(nginx), nginx))
        if floor:
            floor_service = await stack.floor(upstream)
            relays.append(Relay("aiohttp floor", chat_url(floor_service), floor_service))
            h1_floor = await stack.floor(upstream, client="h1")
            relays.append(Relay("h1 floor", chat_url(h1_floor), h1_floor))
        proxy = await stack.proxy(upstream)
        relays.append(Relay("proxy", chat_url(proxy), proxy))
        for name, spec in variants.items():
            env = dict(spec)
            python = env.pop("python", None)
            loop = [f"--{flag}" for flag in ("uvloop", "eager") if env.pop(flag, None)]
            service = await stack.proxy(upstream, env=env, python=python, loop=loop)
            relays.append(Relay(name, chat_url(service), service))
        for relay in relays:  # warm up: connections, caches, quote-free paths
            await run_wrk(relay.url, chat_body(FREE_MODEL), connections=CONNECTIONS, duration_s=1)
        samples = {relay.name: Samples() for relay in relays}
        for index in range(rounds):
            # Rotate the order too, so no relay always runs right after the same one.
            turn = relays[index % len(relays) :] + relays[: index % len(relays)]
            rates: dict[str, float] = {}
            for relay in turn:
                rps, cpu_us, errors = await _one(relay, seconds)
                rates[relay.name] = rps
                s = samples[relay.name]
                s.rps.append(rps)
                s.errors += errors
                if cpu_us is not None:
                    s.cpu_us.append(cpu_us)
            for name, rps in rates.items():
                samples[name].vs_nginx.append(rps / rates["nginx"])
            print(f"   {shape} round {index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


def table(shape: str, samples: dict[str, Samples]) -> str:
    lines = [
        f"### {shape} upstream ({EVENTS} events, {CONNECTIONS} connections)",
        "",
        "| relay | req/s | vs nginx | CPU µs/req | CPU µs/event | vs nginx CPU | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    nginx_cpu = _median(samples["nginx"].cpu_us)
    for name, s in samples.items():
        cpu = _median(s.cpu_us)
        cpu_text = f"{cpu:.0f}" if s.cpu_us else ""
        event_text = f"{cpu / EVENTS:.2f}" if s.cpu_us else ""
        ratio_cpu = f"{cpu / nginx_cpu:.1f}x" if s.cpu_us else ""
        lines.append(
            f"| {name} | {_median(s.rps):,.0f} | {_median(s.vs_nginx):.3f} | {cpu_text} "
            f"| {event_text} | {ratio_cpu} | {s.errors} |"
        )
    return "\n".join(lines)


def _pairs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value:
            raise SystemExit(f"expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--shapes", default="chunked,static")
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE,...")
    parser.add_argument("--no-floor", action="store_true", help="skip the aiohttp floor")
    args = parser.parse_args(argv)
    variants = {
        name: dict(kv.split("=", 1) for kv in spec.split(","))
        for name, spec in _pairs(args.variant).items()
    }
    ensure_tools(nginx=True, wrk=True)
    raise_nofile_limit()
    for shape in args.shapes.split(","):
        samples = asyncio.run(
            measure_shape(shape, args.rounds, args.seconds, variants, floor=not args.no_floor)
        )
        print(table(shape, samples) + "\n", flush=True)


if __name__ == "__main__":
    main()
