"""What the numbers were measured on, and which code: printed with every table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    """The CPU model as lscpu names it ("Model name"), else /proc/cpuinfo's."""
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C"}
        ).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> str:
    """One line: cores, CPU model, kernel, Python, aiohttp."""
    return (
        f"{os.cpu_count()} cores (nproc), {cpu_model()}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; aiohttp {_version('aiohttp')}"
    )


def code_under_test(repo: Path, env: Mapping[str, str]) -> Path:
    """Where `python -m blockrun_proxy` imports the package from, run as the bench runs it.

    An editable install elsewhere (another checkout) must not be what gets measured:
    the bench starts the proxy with cwd and PYTHONPATH at this repo, and checks it here.
    """
    out = subprocess.run(
        [sys.executable, "-c", "import blockrun_proxy; print(blockrun_proxy.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
        env=dict(env),
        check=True,
    ).stdout.strip()
    where = Path(out).resolve().parent
    if repo.resolve() not in where.parents:
        raise SystemExit(f"the bench would measure {where}, not this checkout ({repo})")
    return where
