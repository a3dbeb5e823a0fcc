"""Load generation and measurement: wrk for raw throughput, aiohttp for the rest.

- `run_wrk`: POST JSON at full speed with wrk (C, one thread), for requests/s.
- `run_streams`: an in-process aiohttp client for what wrk cannot do: thousands
  of concurrent slow streams, time to first body byte, per-request checks.
- `slow_read`: one raw-socket client that reads a response at a fixed byte rate.
- `RssSampler`, `measure_startup`: memory and startup of a child process.

Every function is bounded in time and sends traffic only to the URL it is given
(the bench only ever gives it 127.0.0.1 URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bench.procs import REPO_DIR, WORK_DIR, rss_kb, spawn

SSE_DONE = b"data: [DONE]\n\n"
JSON_HEADERS = {"Content-Type": "application/json"}


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    # The smallest value with at least pct% of the values at or below it: ceil(p*n), 1-based.
    # (round(p*n + 0.5) is not ceil: Python rounds halves to even.)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100.0 * len(ordered)) - 1))
    return ordered[rank]


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------

_WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{extra_headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d,'
    .. ' "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def lua_string(text: str) -> str:
    """`text` as a Lua long-bracket literal that cannot be closed early."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def render_wrk_lua(
    body: Mapping[str, object] | str, headers: Mapping[str, str] | None = None
) -> str:
    """A wrk script that POSTs `body` (a dict is JSON-encoded) and prints a WRK_JSON line."""
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    extra = "\n".join(
        f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in (headers or {}).items()
    )
    return _WRK_LUA.format(body=lua_string(text), extra_headers=extra)


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    raw: str = field(repr=False)


_RPS_RE = re.compile(r"Requests/sec:\s*([\d.]+)")
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCKERR_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk_output(text: str) -> WrkResult:
    """Read wrk's stdout: the WRK_JSON line from our Lua `done`, else the plain text."""
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            seconds = data["duration_us"] / 1e6
            errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
            return WrkResult(
                # Only answers that were 2xx/3xx count toward the rate.
                rps=(data["requests"] - data["status"]) / seconds if seconds else 0.0,
                requests=data["requests"],
                errors=errors + data["status"],
                non_2xx=data["status"],
                p50_ms=data["p50_us"] / 1000.0,
                p99_ms=data["p99_us"] / 1000.0,
                raw=text,
            )
    rps_match = _RPS_RE.search(text)
    if rps_match is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{text}")
    non_2xx = int(m.group(1)) if (m := _NON2XX_RE.search(text)) else 0
    sock = sum(int(g) for g in m.groups()) if (m := _SOCKERR_RE.search(text)) else 0
    total = re.search(r"(\d+) requests in", text)
    return WrkResult(
        rps=float(rps_match.group(1)),
        requests=int(total.group(1)) if total else 0,
        errors=sock + non_2xx,
        non_2xx=non_2xx,
        p50_ms=float("nan"),
        p99_ms=float("nan"),
        raw=text,
    )


async def run_wrk(
    url: str,
    lua_body: Mapping[str, object] | str,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> WrkResult:
    """Run wrk against `url` for `duration_s` seconds; returns its requests/s and errors."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    script_dir = WORK_DIR / "wrk"
    script_dir.mkdir(parents=True, exist_ok=True)
    script = script_dir / f"post-{abs(hash((url, str(lua_body)))):x}.lua"
    script.write_text(render_wrk_lua(lua_body, headers))
    argv = [
        binary,
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={int(timeout_s)}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), duration_s + timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    return parse_wrk_output(text)


# ---------------------------------------------------------------------------
# In-process streaming client
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStats:
    requests: int
    ok: int
    errors: int
    elapsed_s: float
    rps: float
    latency_p50_ms: float
    latency_p99_ms: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    bytes_read: int
    client_cpu_s: float = 0.0
    error_samples: tuple[str, ...] = ()

    @property
    def client_busy(self) -> float:
        """The load client's CPU use over the run (1.0 = one core saturated)."""
        return self.client_cpu_s / self.elapsed_s if self.elapsed_s else 0.0


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes_read: int = 0
    started: int = 0


async def _one_stream(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: Mapping[str, str],
    expect_tail: bytes | None,
    tally: _Tally,
) -> None:
    t0 = time.perf_counter()
    ttfb: float | None = None
    tail = b""
    try:
        async with session.post(url, data=payload, headers=headers) as resp:
            while True:
                piece = await resp.content.readany()
                if not piece:
                    break
                if ttfb is None:
                    ttfb = time.perf_counter() - t0
                tally.bytes_read += len(piece)
                tail = (tail + piece)[-32:]
            status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if status != 200:
        tally.errors.append(f"HTTP {status}")
        return
    if expect_tail is not None and not tail.endswith(expect_tail):
        tally.errors.append(f"truncated body (tail {tail[-16:]!r})")
        return
    tally.latencies.append(time.perf_counter() - t0)
    if ttfb is not None:
        tally.ttfbs.append(ttfb)


async def run_streams(
    url: str,
    body: Mapping[str, object] | bytes,
    *,
    concurrency: int,
    total: int | None = None,
    duration_s: float | None = None,
    ramp_s: float = 0.0,
    timeout_s: float = 120.0,
    read_timeout_s: float = 60.0,
    headers: Mapping[str, str] | None = None,
    expect_tail: bytes | None = SSE_DONE,
) -> StreamStats:
    """POST `body` to `url` from `concurrency` workers until `total` requests or `duration_s`.

    Each response is read to its end; TTFB is the time to the first body byte.
    Workers start spread over `ramp_s` (avoids a SYN burst past the listen
    backlog with thousands of connections). The whole run is cut at `timeout_s`;
    requests still open then count as errors.
    """
    if (total is None) == (duration_s is None):
        raise ValueError("give exactly one of total or duration_s")
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {**JSON_HEADERS, **(headers or {})}
    tally = _Tally()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=read_timeout_s)
    start = time.perf_counter()
    cpu_start = time.process_time()
    stop_at = start + duration_s if duration_s is not None else None

    def more() -> bool:
        if stop_at is not None:
            return time.perf_counter() < stop_at
        assert total is not None
        if tally.started >= total:
            return False
        tally.started += 1
        return True

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(index: int) -> None:
            if ramp_s > 0:
                await asyncio.sleep(ramp_s * index / concurrency)
            while more():
                await _one_stream(session, url, payload, all_headers, expect_tail, tally)

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    elapsed = time.perf_counter() - start
    finished = len(tally.latencies) + len(tally.errors)
    unfinished = (total - finished) if total is not None else len(pending)
    errors = len(tally.errors) + max(0, unfinished)
    return StreamStats(
        requests=len(tally.latencies) + errors,
        ok=len(tally.latencies),
        errors=errors,
        elapsed_s=elapsed,
        rps=len(tally.latencies) / elapsed if elapsed else 0.0,
        latency_p50_ms=percentile(tally.latencies, 50) * 1000,
        latency_p99_ms=percentile(tally.latencies, 99) * 1000,
        ttfb_p50_ms=percentile(tally.ttfbs, 50) * 1000,
        ttfb_p99_ms=percentile(tally.ttfbs, 99) * 1000,
        bytes_read=tally.bytes_read,
        client_cpu_s=time.process_time() - cpu_start,
        error_samples=tuple(dict.fromkeys(tally.errors))[:5],
    )


async def ttfb_samples(
    url: str, body: Mapping[str, object], *, count: int, timeout_s: float = 60.0
) -> list[float]:
    """`count` sequential requests on one keep-alive connection; each time to first byte (s)."""
    stats: list[float] = []
    payload = json.dumps(body).encode()
    connector = aiohttp.TCPConnector(limit=1)
    deadline = time.perf_counter() + timeout_s
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            async with session.post(url, data=payload, headers=JSON_HEADERS) as resp:
                first = await resp.content.readany()
                took = time.perf_counter() - t0
                await resp.read()
            if resp.status == 200 and first:
                stats.append(took)
    return stats


# ---------------------------------------------------------------------------
# A slow reader, on a raw socket
# ---------------------------------------------------------------------------


async def slow_read(
    url: str,
    body: Mapping[str, object],
    *,
    rate_bytes_per_s: int = 1024,
    duration_s: float = 20.0,
    recv_buffer: int = 4096,
) -> int:
    """POST `body` over a raw socket and read the response at `rate_bytes_per_s` for `duration_s`.

    A small SO_RCVBUF and a StreamReader limit keep the client from soaking up
    the stream, so backpressure reaches the server under test. Returns bytes read.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port, limit=recv_buffer)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    writer.write(request)
    await writer.drain()
    read = 0
    step = max(1, rate_bytes_per_s // 10)
    deadline = time.perf_counter() + duration_s
    try:
        while time.perf_counter() < deadline:
            piece = await asyncio.wait_for(reader.read(step), timeout=max(0.1, duration_s))
            if not piece:
                break
            read += len(piece)
            await asyncio.sleep(0.1)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()
    return read


# ---------------------------------------------------------------------------
# Memory and startup
# ---------------------------------------------------------------------------


class RssSampler:
    """Samples a process's VmRSS (KiB) every `interval_s` in the background."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                self.samples.append(rss_kb(self.pid))
            except (OSError, RuntimeError):
                return
            await asyncio.sleep(self.interval_s)

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def peak_kb(self) -> int:
        return max(self.samples, default=0)

    @property
    def last_kb(self) -> int:
        return self.samples[-1] if self.samples else 0

    async def __aenter__(self) -> RssSampler:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True)
class StartupResult:
    seconds: float
    rss_kb: int


async def measure_startup(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str],
    health_path: str = "/healthz",
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
    cwd: Path | None = None,
) -> StartupResult:
    """Spawn `argv`, poll its health URL until 200; seconds from spawn, then idle RSS."""
    service = await spawn(
        name,
        argv,
        port=port,
        env=env,
        health_path=health_path,
        ready_timeout=timeout_s,
        cwd=cwd or REPO_DIR,
    )
    try:
        assert service.ready_after_s is not None
        await asyncio.sleep(settle_s)
        return StartupResult(seconds=service.ready_after_s, rss_kb=service.rss_kb())
    finally:
        await service.stop()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
