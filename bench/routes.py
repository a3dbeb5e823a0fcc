"""Per route: what the proxy adds to time to first byte and to a relayed call, vs chat.

    python -m bench.routes [--calls 300] [--concurrency 16] [--seconds 5] [--rounds 3]

Starts the fake gateway and the proxy as their own processes on loopback (the proxy
with a throwaway wallet), then for each route family sends the same request

- directly to the gateway and through the proxy, one at a time: p50 time to first
  byte and p50 latency (free models only: a direct call cannot pay);
- through the proxy from ``--concurrency`` clients for ``--seconds``: calls per second
  and the proxy's CPU per call (paid routes included; the quote book is warmed first),
  and for paid routes the share of calls signed up front (one gateway round trip), read
  from the proxy's own metrics.

The calls and seconds are split over ``--rounds`` passes over every route, so a machine
whose load changes during the run (other work on shared cores) skews no route more than
another; the p50s are over all of a route's calls.

Every route goes through the same signed pipe, so the per-route differences are the
gateway's answer sizes and the body guard's parse; chat is the reference row: free rows
are compared with ``chat``, paid rows with ``chat (paid)`` (a paid call cannot be made
directly, so a paid row's time to first byte is the proxy's, compared with chat's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.procs import LOOPBACK, REPO_DIR, free_port

JSON = {"Content-Type": "application/json"}
MESSAGES = [{"role": "user", "content": "hello there, how are you"}]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any]
    free: bool


CASES = (
    Case("chat", "/v1/chat/completions",
         {"model": "nvidia/deepseek-v4-flash", "messages": MESSAGES, "max_tokens": 64}, True),
    Case("chat stream", "/v1/chat/completions",
         {"model": "nvidia/deepseek-v4-flash", "messages": MESSAGES, "stream": True}, True),
    Case("messages", "/v1/messages",
         {"model": "nvidia/deepseek-v4-flash", "max_tokens": 64, "messages": MESSAGES}, True),
    Case("messages stream", "/v1/messages",
         {"model": "nvidia/deepseek-v4-flash", "max_tokens": 64, "messages": MESSAGES,
          "stream": True}, True),
    Case("gemini", "/v1beta/models/nvidia/deepseek-v4-flash:generateContent",
         {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}, True),
    Case("gemini stream", "/v1beta/models/nvidia/deepseek-v4-flash:streamGenerateContent?alt=sse",
         {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}, True),
    Case("chat (paid)", "/v1/chat/completions",
         {"model": "openai/gpt-5.5", "messages": MESSAGES, "max_tokens": 64}, False),
    Case("messages (paid)", "/v1/messages",
         {"model": "anthropic/claude-sonnet-4.6", "max_tokens": 64, "messages": MESSAGES}, False),
    Case("messages stream (paid)", "/v1/messages",
         {"model": "anthropic/claude-sonnet-4.6", "max_tokens": 64, "messages": MESSAGES,
          "stream": True}, False),
    Case("gemini (paid)", "/v1beta/models/gemini-2.5-flash:generateContent",
         {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
          "generationConfig": {"maxOutputTokens": 64}}, False),
    Case("gemini stream (paid)",
         "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
         {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
          "generationConfig": {"maxOutputTokens": 64}}, False),
    Case("images (paid)", "/v1/images/generations", {"prompt": "a cat"}, False),
    Case("speech (paid)", "/v1/audio/speech", {"input": "hello there"}, False),
    Case("sound effects (paid)", "/v1/audio/sound-effects", {"text": "rain"}, False),
    Case("search (paid)", "/v1/search", {"query": "x402", "max_results": 2}, False),
    Case("exa (paid)", "/v1/exa/search", {"query": "x402"}, False),
    Case("exa contents (paid)", "/v1/exa/contents", {"urls": ["https://example.com"]}, False),
)  # fmt: skip
# The proxy's counters that say how paid calls went (metrics.py).
HITS = "blockrun_proxy_quote_hits_total"
PAID = "blockrun_proxy_payments_sent_total"


async def start(*args: str, env: dict[str, str], marker: bytes) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=REPO_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    while marker not in (line := await asyncio.wait_for(proc.stdout.readline(), 30)):
        if not line:
            raise RuntimeError(f"{args[1]} exited before it was ready")
    asyncio.get_running_loop().create_task(_drain(proc.stdout))
    return proc


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def call(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float]:
    """(time to first body byte, total) in seconds."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers=JSON) as resp:
        first = None
        async for _ in resp.content.iter_any():
            first = first or time.perf_counter()
        if resp.status >= 400:
            raise RuntimeError(f"{url}: {resp.status}")
    end = time.perf_counter()
    return (first or end) - started, end - started


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Samples:
    """One route's measurements, gathered over the rounds."""

    direct: list[tuple[float, float]] = field(default_factory=list)  # (ttfb, total) s
    proxied: list[tuple[float, float]] = field(default_factory=list)
    done: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0  # proxy CPU seconds during the concurrent phases
    hits: float = 0.0
    paid: float = 0.0

    @staticmethod
    def p50_ms(calls: list[tuple[float, float]]) -> tuple[float, float]:
        if not calls:
            return 0.0, 0.0
        return (
            statistics.median(c[0] for c in calls) * 1000,
            statistics.median(c[1] for c in calls) * 1000,
        )

    def row(self, case: Case) -> Row:
        up_front = self.hits / self.paid if self.paid else None
        return (
            case,
            self.p50_ms(self.direct),
            self.p50_ms(self.proxied),
            self.done / self.elapsed if self.elapsed else 0.0,
            self.cpu / max(self.done, 1) * 1e6,
            up_front,
        )


async def sequential(url: str, body: bytes, calls: int) -> list[tuple[float, float]]:
    async with aiohttp.ClientSession() as session:
        return [await call(session, url, body) for _ in range(calls)]


async def counters(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The proxy's quote hits and paid calls so far, from its /metrics."""
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    found = {}
    for name in (HITS, PAID):
        match = re.search(rf"^{name} ([0-9.e+]+)$", text, flags=re.MULTILINE)
        found[name] = float(match.group(1)) if match else 0.0
    return found


async def concurrent(
    url: str, body: bytes, clients: int, seconds: float, pid: int
) -> tuple[int, float, float]:
    """(calls done, seconds elapsed, proxy CPU seconds) from ``clients`` at once."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call(session, url, body)
            done += 1

    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return done, elapsed, cpu_seconds(pid) - cpu


async def main(args: argparse.Namespace) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_DIR), "HOME": "/tmp"}
    gateway_port, proxy_port = free_port(), free_port()
    gateway = await start(
        "-m", "blockrun_proxy.testing", "--port", str(gateway_port), "--verify", "fast",
        env=env, marker=b"listening on",
    )  # fmt: skip
    api = f"http://{LOOPBACK}:{gateway_port}/api"
    proxy = await start(
        "-m", "blockrun_proxy", "serve", "--port", str(proxy_port), "--api-url", api,
        "--networks", "eip155:84532", "--state-dir", "", "--max-concurrent", "64",
        env={**env, "BLOCKRUN_WALLET_KEY": "0x" + secrets.token_hex(32)},
        marker=b"listening on",
    )  # fmt: skip
    base = f"http://{LOOPBACK}:{proxy_port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(base + "/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    samples = {case.name: Samples() for case in CASES}
    try:
        for round_ in range(args.rounds):
            for case in CASES:
                await measure(case, samples[case.name], base, api, proxy.pid, args, round_)
    finally:
        for proc in (proxy, gateway):
            proc.terminate()
            await proc.wait()
    rows = [samples[case.name].row(case) for case in CASES]
    print(table(rows, args.concurrency))


async def measure(
    case: Case, into: Samples, base: str, api: str, pid: int, args: argparse.Namespace, round_: int
) -> None:
    """One round of one route: sequential calls (direct too for free models), then
    ``--concurrency`` clients; the first round warms connections and the quote book."""
    body = orjson.dumps(case.body)
    via = base + case.path
    calls = max(1, args.calls // args.rounds)
    if round_ == 0:
        await sequential(via, body, 40)
    if case.free:
        into.direct += await sequential(api + case.path, body, calls)
    into.proxied += await sequential(via, body, calls)
    async with aiohttp.ClientSession() as session:
        before = await counters(session, base)
        done, elapsed, cpu = await concurrent(
            via, body, args.concurrency, args.seconds / args.rounds, pid
        )
        after = await counters(session, base)
    into.done += done
    into.elapsed += elapsed
    into.cpu += cpu
    into.hits += after[HITS] - before[HITS]
    into.paid += after[PAID] - before[PAID]


Row = tuple[Case, tuple[float, float], tuple[float, float], float, float, float | None]


def table(rows: list[Row], clients: int) -> str:
    """Free rows: what the proxy adds over a direct call, and vs chat's; paid rows: the
    proxy's own p50 (a paid call cannot be made directly), vs paid chat's."""
    reference = {free: next(r for r in rows if r[0].free is free) for free in (True, False)}
    lines = [
        f"| route | p50 TTFB | TTFB vs chat | p50 latency | calls/s (x{clients}) "
        "| vs chat | proxy CPU/call | signed up front |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, direct, proxied, rps, cpu_us, up_front in rows:
        chat = reference[case.free]
        if case.free:
            ttfb, latency = proxied[0] - direct[0], proxied[1] - direct[1]
            chat_ttfb = chat[2][0] - chat[1][0]
            cells = [f"{ttfb:+.2f} ms added", f"{ttfb - chat_ttfb:+.2f} ms"]
            cells.append(f"{latency:+.2f} ms added")
        else:
            ttfb, latency = proxied
            cells = [f"{ttfb:.2f} ms", f"{ttfb - chat[2][0]:+.2f} ms", f"{latency:.2f} ms"]
        cells += [f"{rps:,.0f}", f"{rps / chat[3]:.2f}x", f"{cpu_us:,.0f} µs"]
        cells.append("-" if up_front is None else f"{up_front:.0%}")
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.routes", description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
