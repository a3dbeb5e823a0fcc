"""Child processes of the benchmark: spawn, wait for health, measure, stop.

Every server the bench runs is a subprocess on a free loopback port with a
minimal environment (no inherited secrets) and its output in a log file under
the work dir. Nothing here ever talks to an address outside 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
LOOPBACK = "127.0.0.1"

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.005

# A well-known development key (the first Anvil/Hardhat account). It holds no
# funds anywhere, and the fake gateway only checks its signatures offline.
BENCH_WALLET_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
BENCH_PAY_TO = "0x1111111111111111111111111111111111111111"
BENCH_NETWORK = "eip155:84532"


class ServiceError(RuntimeError):
    """A child process died or never became healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for this process and its future children; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    new_hard = max(hard, target)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, new_hard))
    except (ValueError, OSError):
        # Not root (or capped by fs.nr_open): settle for the hard limit we have.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_env(
    extra: Mapping[str, str] | None = None, *, home: Path | None = None
) -> dict[str, str]:
    """A minimal environment for a child: PATH, a private HOME, locale, and `extra`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # pyenv shims need to know where they live.
    for name in ("PYENV_ROOT", "PYENV_VERSION"):
        if name in os.environ:
            env[name] = os.environ[name]
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    if extra:
        env.update(extra)
    return env


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ServiceError(f"no VmRSS for pid {pid}")


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU time of a process (and, with `tree`, its live descendants)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)", utime and stime are the 12th and 13th fields.
    own = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return own + (sum(cpu_seconds(kid) for kid in _children(pid)) if tree else 0.0)


async def http_status(session: aiohttp.ClientSession, url: str) -> int | None:
    """The status of a GET, or None when nothing answered."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None


@dataclass
class Service:
    """One running child process that serves HTTP on a loopback port."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    log_path: Path
    started_at: float
    ready_after_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the service and its workers."""
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, health_url: str, timeout: float = READY_TIMEOUT_S) -> float:
        """Poll `health_url` until it answers 200; returns seconds since spawn."""
        deadline = self.started_at + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    raise ServiceError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                if await http_status(session, health_url) == 200:
                    self.ready_after_s = time.perf_counter() - self.started_at
                    return self.ready_after_s
                if time.perf_counter() > deadline:
                    raise ServiceError(
                        f"{self.name} not ready at {health_url} after {timeout:.0f}s:\n"
                        f"{self.log_tail()}"
                    )
                await asyncio.sleep(POLL_INTERVAL_S)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after `timeout`; only this process, by its pid."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


async def spawn(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str],
    health_path: str | None = "/healthz",
    ready_timeout: float = READY_TIMEOUT_S,
    cwd: Path = REPO_DIR,
) -> Service:
    """Start `argv`, log to WORK_DIR/logs/<name>-<port>.log, and wait for `health_path`."""
    log_dir = WORK_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - opening a log file is instant
        started_at = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd),
            start_new_session=True,
        )
    service = Service(name=name, proc=proc, port=port, log_path=log_path, started_at=started_at)
    if health_path is not None:
        try:
            await service.wait_ready(f"{service.url}{health_path}", ready_timeout)
        except BaseException:
            await service.stop()
            raise
    return service
