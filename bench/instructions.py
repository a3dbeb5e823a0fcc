"""Instructions per relayed request, counted by valgrind (callgrind): the repeatable A/B.

    python -m bench.instructions [--requests 400] [--shapes chunked,static,paid]
        [--variant NAME=KEY=VALUE,...]   (as in bench.cpu: python=, uvloop=1, eager=1, env;
                                      floor=h1|aiohttp runs bench/floor.py instead)

CPU time on a shared machine still moves with cache and frequency contention; an
instruction count does not. Each relay runs under callgrind with collection off; after a
warm-up, instrumentation is switched on for exactly `--requests` requests (4 at a time), off
again, and the count is divided by the requests. The `paid` shape is the paid scenario's
warm call (a paid non-streamed chat over the raw paid upstream, signed up front).
Instructions are not time (a cache miss costs more than an add), so use it to compare
builds of the same relay, and CPU time (bench.cpu) for the ratio to nginx.
Needs valgrind (apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.load import SSE_DONE, run_streams
from bench.procs import WORK_DIR, free_port, raise_nofile_limit, spawn
from bench.stack import (
    FREE_MODEL,
    PAID_MODEL,
    Stack,
    api_url,
    chat_body,
    chat_url,
    proxy_argv,
    proxy_env,
)

EVENTS = 100
WARMUP = 100
CONCURRENCY = 4
READY_TIMEOUT_S = 180.0  # a Python interpreter under valgrind starts slowly


def _callgrind_control(*args: str) -> str:
    out = subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=False
    )
    return out.stdout + out.stderr


def _total_instructions(out_file: Path) -> int:
    text = out_file.read_text(errors="replace")
    match = re.search(r"^totals:\s+(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals in {out_file}")
    return int(match.group(1))


def body_of(shape: str) -> dict[str, object]:
    """The request of `shape`: a free stream, or (`paid`) a paid non-streamed call."""
    if shape == "paid":
        return chat_body(PAID_MODEL, stream=False)
    return chat_body(FREE_MODEL, stream=True)


async def count(name: str, shape: str, requests: int, spec: dict[str, str]) -> float:
    """Instructions per request of one proxy variant over one upstream shape."""
    body = body_of(shape)
    expect_tail = None if shape == "paid" else SSE_DONE
    env = dict(spec)
    python = env.pop("python", None)
    floor = env.pop("floor", None)  # "aiohttp" or "h1": bench/floor.py instead of the proxy
    loop = [f"--{flag}" for flag in ("uvloop", "eager") if env.pop(flag, None)]
    out_dir = WORK_DIR / "callgrind"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{name}-{shape}.*"):
        old.unlink()
    async with Stack() as stack:
        paid_body = json.dumps(body, separators=(",", ":")) if shape == "paid" else None
        upstream = await stack.upstream(
            events=EVENTS, raw=True, static=shape == "static", paid_body=paid_body
        )
        port = free_port()
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out_dir}/{name}-{shape}.%p",
        ]
        if floor:
            argv += [python or sys.executable, "-m", "bench.floor", "--port", str(port)]
            argv += ["--api-url", api_url(upstream), "--client", floor]
        else:
            argv += proxy_argv(port, api_url(upstream), python=python, loop=loop)
        proxy = await spawn(
            f"callgrind-{name}", argv, port=port, env=proxy_env(extra=env),
            ready_timeout=READY_TIMEOUT_S,
        )  # fmt: skip
        stack.services.append(proxy)
        url = chat_url(proxy)
        await run_streams(
            url, body, concurrency=CONCURRENCY, total=WARMUP, timeout_s=600, expect_tail=expect_tail
        )
        said = _callgrind_control("-i", "on", str(proxy.pid))
        if "error" in said.lower():
            raise RuntimeError(f"callgrind_control: {said}")
        result = await run_streams(
            url,
            body,
            concurrency=CONCURRENCY,
            total=requests,
            timeout_s=900,
            expect_tail=expect_tail,
        )
        _callgrind_control("-i", "off", str(proxy.pid))
        _callgrind_control("-d", str(proxy.pid))
        if result.errors:
            raise RuntimeError(f"{name}: {result.errors} errors: {result.error_samples}")
    # The explicit dump holds the window; the one written at exit counts nothing after it.
    total = sum(_total_instructions(dump) for dump in out_dir.glob(f"{name}-{shape}.*"))
    return total / requests


def _variants(items: Sequence[str]) -> dict[str, dict[str, str]]:
    variants: dict[str, dict[str, str]] = {"proxy": {}}
    for item in items:
        name, _, spec = item.partition("=")
        variants[name] = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
    return variants


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--shapes", default="chunked,static")
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE,...")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    raise_nofile_limit()
    print("| relay | upstream | instructions/request | per event |\n|---|---|---:|---:|")
    for shape in args.shapes.split(","):
        for name, spec in _variants(args.variant).items():
            per_request = asyncio.run(count(name, shape, args.requests, spec))
            print(
                f"| {name} | {shape} | {per_request:,.0f} | {per_request / EVENTS:,.0f} |",
                flush=True,
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
