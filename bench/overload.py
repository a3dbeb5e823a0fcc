"""Overload and capacity measurements behind the ops notes (a script, not a test).

    python -m bench.overload burst [--limit 64] [--factor 2] [--queue 0] [--stream-seconds 4]
    python -m bench.overload hold [--streams 2000] [--interval 0.5] [--events 20]

``burst`` fires ``factor x limit`` slow streams at once at a proxy limited to
``--limit`` concurrent calls, while a prober sends one call every 50 ms. It reports
how fast the refused get their 429, whether every call was answered, and how long
after the first slot freed up a new caller was served again (recovery).

``hold`` opens ``--streams`` slow streams at once through one proxy process and
samples its RSS while they are all open.

The fake gateway and the proxy each run as their own process (python -m), so the
client's CPU is not theirs. Paid calls on Base Sepolia with the fake gateway's
``fast`` verifier, a throwaway wallet, no network beyond loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

NETWORK = "eip155:84532"
MODEL = "openai/gpt-4o-mini"
ROOT = Path(__file__).resolve().parents[1]
URL_IN_LINE = re.compile(rb"(http://127\.0\.0\.1:\d+(?:/api|/v1))")
PROBE_EVERY = 0.05
JSON_HEADERS = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    url: str
    drain: asyncio.Task[None]
    # The child's JSON log lines that are access lines (the proxy's own view of latency).
    access: list[dict[str, object]] = field(default_factory=list)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.drain.cancel()


async def start_child(args: Sequence[str], env: dict[str, str]) -> Child:
    """Start ``python <args>`` and wait for the first loopback URL it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    while True:
        line = await asyncio.wait_for(stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"{args} exited before listening")
        match = URL_IN_LINE.search(line)
        if match:
            break

    access: list[dict[str, object]] = []

    async def collect() -> None:  # keep the pipe flowing, keep the access lines
        async for raw in stdout:
            if raw.startswith(b"{") and b'"blockrun_proxy.access"' in raw:
                access.append(orjson.loads(raw))

    return Child(proc, match.group(1).decode(), asyncio.create_task(collect()), access)


@contextlib.asynccontextmanager
async def gateway_and_proxy(
    *, interval: float, events: int, proxy_args: Sequence[str]
) -> AsyncIterator[tuple[Child, Child]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKRUN_")}
    env["PYTHONPATH"] = str(ROOT)
    gateway = await start_child(
        ["-m", "blockrun_proxy.testing", "--port", "0", "--network", NETWORK,
         "--verify", "fast", "--event-interval", str(interval), "--stream-events", str(events)],
        env,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as home:
        proxy_env = {**env, "HOME": home, "BLOCKRUN_WALLET_KEY": "0x" + secrets.token_hex(32)}
        proxy = await start_child(
            ["-m", "blockrun_proxy", "serve", "--port", "0", "--api-url", gateway.url,
             "--networks", NETWORK, "--grace-seconds", "5", "--log-format", "json",
             *proxy_args],
            proxy_env,
        )  # fmt: skip
        try:
            yield gateway, proxy
        finally:
            await proxy.stop()
            await gateway.stop()


def rss_kib(pid: int) -> dict[str, int]:
    """Current and peak resident set size of ``pid`` in KiB (Linux /proc)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_own_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- calls


@dataclass
class Call:
    sent: float
    status: int = 0
    headers_at: float = 0.0
    ended: float = 0.0
    complete: bool = False
    code: str | None = None
    error: str | None = None


BODY = orjson.dumps(
    {"model": MODEL, "stream": True, "max_tokens": 64,
     "messages": [{"role": "user", "content": "hello"}]}
)  # fmt: skip


async def call(session: aiohttp.ClientSession, url: str, opened: list[int] | None = None) -> Call:
    record = Call(time.monotonic())
    try:
        async with session.post(url, data=BODY, headers=JSON_HEADERS) as resp:
            record.status, record.headers_at = resp.status, time.monotonic()
            if opened is not None and resp.status == 200:
                opened[0] += 1
            body = await resp.read()
            record.complete = resp.status != 200 or body.endswith(b"data: [DONE]\n\n")
            if resp.status >= 400:
                record.code = orjson.loads(body).get("error", {}).get("code")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        record.error = type(exc).__name__
    record.ended = time.monotonic()
    return record


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# --------------------------------------------------------------------------- scenarios


@dataclass
class Prober:
    url: str
    calls: list[Call] = field(default_factory=list)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        pending: set[asyncio.Task[Call]] = set()
        while not stop.is_set():
            task = asyncio.create_task(call(session, self.url))
            pending.add(task)
            task.add_done_callback(lambda t: (pending.discard(t), self.calls.append(t.result())))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_EVERY)
        await asyncio.gather(*pending)


async def burst(args: argparse.Namespace) -> None:
    total = args.limit * args.factor
    events = 20
    interval = args.stream_seconds / events
    proxy_args = ["--max-concurrent", str(args.limit), "--max-queue", str(args.queue),
                  "--queue-timeout", str(args.queue_timeout)]  # fmt: skip
    async with gateway_and_proxy(interval=interval, events=events, proxy_args=proxy_args) as (
        _,
        proxy,
    ):
        url = proxy.url + "/chat/completions"
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await call(session, url)  # warm up: imports, first signature, pools
            prober, stop = Prober(url), asyncio.Event()
            probing = asyncio.create_task(prober.run(session, stop))
            started = time.monotonic()
            calls = await asyncio.gather(*[call(session, url) for _ in range(total)])
            stop.set()
            await probing
            after = await call(session, url)
            metrics = await (await session.get(proxy.url.removesuffix("/v1") + "/metrics")).text()

    refused = [c for c in calls if c.status == 429]
    served = [c for c in calls if c.status == 200]
    other = [c for c in calls if c.status not in (200, 429)]
    latencies = [c.headers_at - c.sent for c in refused]
    first_free = min((c.ended for c in served), default=float("nan"))
    served_probes = [c for c in prober.calls if c.status == 200 and c.headers_at >= first_free]
    recovered_at = min((c.headers_at for c in served_probes), default=float("nan"))
    codes: dict[str, int] = {}
    for c in refused:
        codes[c.code or "?"] = codes.get(c.code or "?", 0) + 1
    print(f"burst: {total} streams of ~{args.stream_seconds:g}s at --max-concurrent {args.limit} "
          f"--max-queue {args.queue} --queue-timeout {args.queue_timeout:g}")  # fmt: skip
    print(f"  served 200: {len(served)} (complete: {sum(c.complete for c in served)}), "
          f"refused 429: {len(refused)} {codes}, other: {len(other)} "
          f"{[c.error or c.status for c in other][:5]}")  # fmt: skip
    if latencies:
        print(f"  429 latency: p50 {ms(pct(latencies, 0.5))}, p99 {ms(pct(latencies, 0.99))}, "
              f"max {ms(max(latencies))}")  # fmt: skip
    if served:
        served_lat = [c.headers_at - c.sent for c in served]
        print(f"  200 time to headers: p50 {ms(statistics.median(served_lat))}, "
              f"max {ms(max(served_lat))}")  # fmt: skip
    probe_statuses = [c.status for c in prober.calls]
    print(f"  prober: {len(prober.calls)} calls, {probe_statuses.count(429)} refused, "
          f"{probe_statuses.count(200)} served")  # fmt: skip
    print(f"  recovery: first new caller served {ms(recovered_at - first_free)} after the "
          f"first slot freed; {ms(first_free - started)} into the burst")  # fmt: skip
    print(f"  after the burst: status {after.status}, {ms(after.headers_at - after.sent)}")
    server = [float(str(a["latency_ms"])) / 1000 for a in proxy.access if a["status"] == 429]
    if server:
        print(f"  429 latency inside the proxy (access log): p50 {ms(pct(server, 0.5))}, "
              f"p99 {ms(pct(server, 0.99))}, max {ms(max(server))}")  # fmt: skip
    gauges = tuple(f"blockrun_proxy_{g}" for g in ("upstream_inflight", "admission_queue"))
    print("  " + ", ".join(line for line in metrics.splitlines() if line.startswith(gauges)))


async def hold(args: argparse.Namespace) -> None:
    raise_own_fd_limit()
    proxy_args = ["--max-concurrent", str(args.streams), "--max-queue", "0"]
    async with gateway_and_proxy(
        interval=args.interval, events=args.events, proxy_args=proxy_args
    ) as (_, proxy):
        pid = proxy.proc.pid
        url = proxy.url + "/chat/completions"
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as session:
            await call(session, url)
            idle = rss_kib(pid)
            cpu0 = cpu_seconds(pid)
            opened = [0]
            started = time.monotonic()
            tasks = [asyncio.create_task(call(session, url, opened)) for _ in range(args.streams)]
            peak, all_open_at = 0, None
            while not all(t.done() for t in tasks):
                peak = max(peak, rss_kib(pid)["VmRSS"])
                if all_open_at is None and opened[0] >= args.streams:
                    all_open_at = time.monotonic() - started
                await asyncio.sleep(0.25)
            calls = [t.result() for t in tasks]
            elapsed = time.monotonic() - started
            final = rss_kib(pid)
            cpu = cpu_seconds(pid) - cpu0

    ok = [c for c in calls if c.status == 200 and c.complete]
    print(f"hold: {args.streams} streams of {args.events} events every {args.interval:g}s "
          f"through one proxy process")  # fmt: skip
    print(f"  complete 200: {len(ok)}/{args.streams}; others: "
          f"{sorted({c.error or str(c.status) for c in calls if c not in ok})[:5]}")  # fmt: skip
    print(f"  all {args.streams} open after {all_open_at if all_open_at is None else round(all_open_at, 2)}s; "  # noqa: E501
          f"run {elapsed:.1f}s; proxy CPU {cpu:.1f}s")  # fmt: skip
    print(f"  proxy RSS: idle {idle['VmRSS'] / 1024:.1f} MiB, peak sampled {peak / 1024:.1f} MiB, "
          f"high-water {final['VmHWM'] / 1024:.1f} MiB; "
          f"~{(final['VmHWM'] - idle['VmRSS']) / args.streams:.0f} KiB per stream")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="scenario", required=True)
    b = sub.add_parser("burst", help="factor x limit concurrent slow streams at once")
    b.add_argument("--limit", type=int, default=64)
    b.add_argument("--factor", type=int, default=2)
    b.add_argument("--queue", type=int, default=0, help="--max-queue of the proxy")
    b.add_argument("--queue-timeout", type=float, default=2.0)
    b.add_argument("--stream-seconds", type=float, default=4.0)
    h = sub.add_parser("hold", help="many slow streams open at once through one process")
    h.add_argument("--streams", type=int, default=2000)
    h.add_argument("--interval", type=float, default=0.5)
    h.add_argument("--events", type=int, default=20)
    args = parser.parse_args(argv)
    asyncio.run(burst(args) if args.scenario == "burst" else hold(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
